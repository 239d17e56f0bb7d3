"""The remote `install`, `status`, `history`, `rollback`, `uninstall` and `lock` commands
against a real private runsvdir (runit, as root): atomic switch, no-change detection,
rollback on a failed health check, pruning, and an uninstall that leaves no file behind.
Each install goes as the client drives it: take the lock and learn what is missing, stage
it, install."""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from flinger.protocol.plans import (
    ConfirmPlan,
    HealthSpec,
    InstallPlan,
    InventoryPlan,
    Owner,
    PackageRef,
    RollbackPlan,
    ServiceRoots,
    ServiceSpec,
    UninstallPlan,
)
from flinger.remote import tarball
from flinger.remote.files import sha256_file
from tests.remote_helpers import REPO, Answer, envelope, eventually, run_remote

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text(errors="replace")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


class Fixture:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.host = tmp / "host"  # what the "server" looks like; staging lives apart
        self.service_dir = self.host / "etc" / "service"
        self.service_dir.mkdir(parents=True)
        self.install_dir = self.host / "opt" / "app"
        self.staging = tmp / "staging"
        self.packs = tmp / "packs"  # what the builder would push
        self.packs.mkdir()
        self.port = free_port()
        self.name = f"web{self.port}"
        self.sv_dir = self.host / "etc" / "sv"

    def package(self, content: str) -> PackageRef:
        tree = self.tmp / ("tree-" + content)
        tree.mkdir(exist_ok=True)
        (tree / "index.html").write_text(content)
        target = self.packs / f"web-{content}.tar.gz"
        tarball.pack_tree(str(tree), str(target))
        return PackageRef("web", sha256_file(str(target)), "packages/" + target.name)

    def run_dir(self, release: str) -> Path:
        return self.staging / "runs" / "opt_app" / release

    def plan(self, release: str, content: str, health: HealthSpec | None = None, directory: str = "web") -> InstallPlan:
        run = (
            f"#!/bin/sh\nexec 2>&1\nexec {sys.executable} -m http.server --bind 127.0.0.1 "
            f"{self.port} --directory {self.install_dir}/current/{directory}\n"
        )
        check = health or HealthSpec(url=self.url(), timeout=30, interval=0.2)
        return InstallPlan(
            install_dir=str(self.install_dir),
            staging_dir=str(self.run_dir(release)),
            release=release,
            lock_holder=f"test run {release}",
            packages=[self.package(content)],
            services=[ServiceSpec(self.name, "runit", {"run": run}, package="web", health=check)],
            overlay_files={"secrets/token": base64.b64encode(b"s3cret").decode()},
            staging_runs=str(self.staging / "runs" / "opt_app"),
            acquire=True,
            release_lock=True,
            roots=ServiceRoots(sv_dir=str(self.sv_dir), service_dir=str(self.service_dir)),
        )

    def install(self, plan: InstallPlan) -> Answer:
        """As the client does: lock and ask; deliver what is missing; install."""
        first = run_remote("install", plan)
        if first.status != 0 or not first.result.need:
            return first
        packages = Path(plan.staging_dir) / "packages"
        packages.mkdir(parents=True)
        for ref in plan.packages:
            if ref.name in first.result.need:
                shutil.copy(self.packs / Path(ref.tarball).name, packages)
        return run_remote("install", replace(plan, acquire=False))

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.html"

    def current(self) -> str:
        return os.readlink(self.install_dir / "current")

    def at(self) -> InventoryPlan:
        return InventoryPlan(str(self.install_dir))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    runsvdir = subprocess.Popen(
        ["runsvdir", "-P", str(fixture.service_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield fixture
    finally:
        for directory in sorted(fixture.sv_dir.glob("*")) if fixture.sv_dir.exists() else []:
            subprocess.run(["sv", "force-stop", str(directory)], capture_output=True)
            subprocess.run(["sv", "exit", str(directory)], capture_output=True)
        os.killpg(runsvdir.pid, signal.SIGTERM)
        runsvdir.wait()


def sv_pid(env: Fixture) -> int:
    out = subprocess.run(["sv", "status", str(env.sv_dir / env.name)], capture_output=True, text=True).stdout
    assert out.startswith("run:"), out
    return int(out.split("(pid ")[1].split(")")[0])


def with_run(plan: InstallPlan, extra: str) -> InstallPlan:
    """The plan with its service's run script changed (a new definition)."""
    service = plan.services[0]
    return replace(plan, services=[replace(service, files={"run": service.files["run"] + extra})])


def test_install_upgrade_rollback_prune_uninstall(env: Fixture) -> None:
    before = snapshot(env.host)

    # first install
    plan = env.plan("r1", "v1")
    answer = env.install(plan)
    assert answer.status == 0, answer.stdout
    assert answer.result.changed is True and answer.result.release == "r1" and answer.result.lock_released
    assert env.current() == "releases/r1" and get(env.url()) == "v1"
    assert not env.run_dir("r1").exists()  # the run's staged packages and overlay are removed
    token = env.install_dir / "current" / "overlay" / "secrets" / "token"
    assert token.read_text() == "s3cret" and token.stat().st_mode & 0o777 == 0o600
    assert (env.install_dir / "current" / "overlay").stat().st_mode & 0o777 == 0o700
    state = json.loads((env.install_dir / ".flinger" / "state.json").read_text())
    assert state["release"] == "r1" and state["packages"]["web"]["digest"] == plan.packages[0].digest
    recorded = {e["path"] for e in state["services"][0]["paths"]}
    assert str(env.sv_dir / env.name) in recorded and str(env.sv_dir) in recorded
    first_pid = sv_pid(env)

    # the same again: nothing changes, nothing restarts, one command does it all
    answer = run_remote("install", env.plan("r2", "v1"))
    assert answer.status == 0 and answer.result.changed is False and answer.result.need == []
    assert env.current() == "releases/r1" and sv_pid(env) == first_pid
    assert not [s for s in answer.steps() if s.startswith("service")]

    # an upgrade whose health check fails: the previous release keeps running
    failing = with_run(
        env.plan("r3", "v3", health=HealthSpec(command="exit 1", timeout=1, interval=0.2)), "# changed\n"
    )
    answer = env.install(failing)
    assert answer.status == 1
    assert answer.result.step == "health:" + env.name and answer.result.rolled_back_to == "r1"
    assert env.current() == "releases/r1"
    assert not (env.install_dir / "releases" / "r3").exists()
    assert "# changed" not in (env.sv_dir / env.name / "run").read_text()
    answer = env.install(env.plan("r4", "v1"))  # health passes again
    assert answer.result.changed is False  # the receipt still describes r1
    assert get(env.url()) == "v1"
    assert not env.run_dir("r3").exists()

    # real upgrades; only the last two releases stay
    assert env.install(env.plan("r5", "v5")).status == 0
    assert env.current() == "releases/r5" and get(env.url()) == "v5"
    assert env.install(replace(env.plan("r6", "v6"), keep_releases=2)).status == 0
    assert get(env.url()) == "v6"
    receipts = env.install_dir / ".flinger" / "releases"
    assert sorted(os.listdir(receipts)) == ["r5.json", "r6.json"]  # a receipt per kept release
    assert sorted(os.listdir(env.install_dir / "releases")) == ["r5", "r6"]
    assert len(os.listdir(env.install_dir / "packages")) == 2

    answer = run_remote("status", env.at())
    assert answer.result.release == "r6" and answer.result.previous_release == "r5"
    assert answer.result.services[0].state == "run" and answer.result.services[0].healthy is True

    # uninstall: the host is exactly as before the first install
    pid = sv_pid(env)
    answer = run_remote("uninstall", UninstallPlan(str(env.install_dir), "test uninstall"))
    assert answer.status == 0, answer.stdout
    assert snapshot(env.host) == before
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            subprocess.run(["sleep", "0.1"])


def test_clean_removes_the_staging_dir(env: Fixture) -> None:
    before = snapshot(env.host)
    plan = replace(env.plan("r1", "v1"), overlay_owner=Owner("daemon", "daemon"))
    assert env.install(plan).status == 0
    token = env.install_dir / "current" / "overlay" / "secrets" / "token"
    assert token.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    assert token.parent.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    clean = UninstallPlan(str(env.install_dir), "test clean", staging_dir=str(env.staging), clean=True)
    assert run_remote("uninstall", clean).status == 0
    assert not env.staging.exists() and snapshot(env.host) == before


def test_first_install_failing_leaves_no_service(env: Fixture) -> None:
    answer = env.install(env.plan("r1", "v1", health=HealthSpec(command="false", timeout=0.5)))
    assert answer.status == 1 and answer.result.rolled_back and answer.result.rolled_back_to is None
    assert not os.path.lexists(env.install_dir / "current")
    assert not (env.sv_dir / env.name).exists()
    assert not os.path.lexists(env.service_dir / env.name)
    assert not (env.install_dir / ".flinger" / "lock").exists()  # given up, failure or not


def test_a_crash_looping_service_answered_by_a_neighbours_port_fails_the_install(env: Fixture, tmp_path: Path) -> None:
    # Another process already serves the health URL: the new service cannot bind its port
    # (EADDRINUSE) and keeps exiting, while every probe of the URL passes.
    served = tmp_path / "neighbour"
    served.mkdir()
    (served / "index.html").write_text("v1")
    neighbour = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(env.port), "--directory", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: _answers(env.url()))
        answer = env.install(env.plan("r1", "v1", health=HealthSpec(url=env.url(), timeout=30, interval=0.2)))
        assert answer.status == 1, answer.stdout
        result = answer.result
        assert result.step == f"health:{env.name}" and result.rolled_back, answer.stdout
        assert "not running" in result.error or "restarted" in result.error, result.error
        assert not os.path.lexists(env.install_dir / "current")
        assert get(env.url()) == "v1" and neighbour.poll() is None  # the neighbour was never touched
    finally:
        neighbour.terminate()
        neighbour.wait()


def _answers(url: str) -> bool:
    try:
        return get(url) == "v1"
    except OSError:
        return False


def test_bad_digest_touches_nothing(env: Fixture) -> None:
    plan = env.plan("r1", "v1")
    real = plan.packages[0]
    bad = replace(plan, packages=[replace(real, digest="0" * 64)])
    answer = run_remote("install", bad)
    assert answer.result.need == ["web"]
    (env.run_dir("r1") / "packages").mkdir(parents=True)
    shutil.copy(env.packs / Path(real.tarball).name, env.run_dir("r1") / "packages")
    answer = run_remote("install", replace(bad, acquire=False))
    assert answer.status == 1 and answer.result.step == "unpack"
    assert not os.path.lexists(env.install_dir / "current")
    assert not env.run_dir("r1").exists()
    assert not (env.sv_dir / env.name).exists()


def test_history_and_rollback_switch_back_to_a_kept_release_and_check_its_health(env: Fixture) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    assert env.install(env.plan("r2", "v2")).status == 0
    assert get(env.url()) == "v2"
    answer = run_remote("history", env.at())
    assert answer.status == 0
    releases = {r.release: r for r in answer.result.releases}
    assert answer.result.current == "r2" and releases["r1"].can_roll_back_to is True
    assert releases["r2"].current is True and releases["r2"].packages["web"]
    assert releases["r2"].installed_by == "test run r2"

    # back to the one before: its files, its service definition, its content, health-checked
    answer = run_remote("rollback", RollbackPlan(str(env.install_dir), "test rollback"))
    assert answer.status == 0, answer.stdout
    assert answer.result.release == "r1" and answer.result.previous_release == "r2" and answer.result.lock_released
    assert any(line.startswith(f"health of {env.name}: ok") for line in answer.lines())
    assert env.current() == "releases/r1" and get(env.url()) == "v1"
    state = json.loads((env.install_dir / ".flinger" / "state.json").read_text())
    assert state["release"] == "r1" and state["previous_release"] == "r2"
    assert state["switched_by"] == "test rollback"

    # the manifest of r1 installed again: nothing to do (the receipt is r1's)
    answer = env.install(env.plan("r3", "v1"))
    assert answer.status == 0 and answer.result.changed is False

    # and forward again, by name
    forward = RollbackPlan(str(env.install_dir), "test rollback", to="r2")
    answer = run_remote("rollback", forward)
    assert answer.status == 0 and env.current() == "releases/r2" and get(env.url()) == "v2"
    answer = run_remote("rollback", forward)
    assert answer.status == 0 and answer.result.changed is False

    answer = run_remote("rollback", replace(forward, to="r9"))
    assert answer.status == 1 and "release r9 is not kept here (kept: r1)" in answer.result.error
    answer = run_remote("rollback", replace(forward, to="../r1"))
    assert answer.status == 1 and env.current() == "releases/r2"
    assert not (env.install_dir / ".flinger" / "lock").exists()  # every rollback gave the lock up


def test_a_rollback_whose_release_is_unhealthy_puts_the_running_one_back(env: Fixture) -> None:
    # r1's service serves a directory that the rollback will not find: unhealthy once rolled back to
    assert env.install(env.plan("r1", "v1", health=HealthSpec(url=env.url(), timeout=2, interval=0.2))).status == 0
    assert env.install(env.plan("r2", "v2")).status == 0
    (env.install_dir / "releases" / "r1" / "web").unlink()  # r1 broken on disk since
    answer = run_remote("rollback", RollbackPlan(str(env.install_dir), "test rollback"))
    assert answer.status == 1, answer.stdout
    assert answer.result.step.startswith("health:") and answer.result.rolled_back_to == "r2"
    assert env.current() == "releases/r2" and get(env.url()) == "v2"
    assert (env.install_dir / "releases" / "r1").is_dir()  # a kept release is never discarded


def test_a_service_whose_restart_fails_gets_its_old_definition_back(
    env: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    old_run = (env.sv_dir / env.name / "run").read_text()
    # `sv restart` fails once, as it does when the new run crashes into its finish script
    # (seen on the sandbox: "timeout: finish: /etc/sv/quorum: (pid N) 1s"); then the real sv.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sv").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = restart ] && [ ! -e {tmp_path}/failed-once ]; then\n'
        f'  touch {tmp_path}/failed-once; echo "timeout: finish: $2: (pid 1) 1s"; exit 1\n'
        "fi\n"
        f'exec {shutil.which("sv")} "$@"\n'
    )
    (shim / "sv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    answer = env.install(with_run(env.plan("r2", "v2"), "# the r2 definition\n"))
    assert answer.status == 1, answer.stdout
    result = answer.result
    assert result.step == f"service:{env.name}" and "timeout: finish" in result.error, result
    assert result.rolled_back_to == "r1" and result.rollback_problems == [], result
    assert (env.sv_dir / env.name / "run").read_text() == old_run  # the old definition is back
    assert result.restored_health[env.name].healthy is True, result
    assert env.current() == "releases/r1" and get(env.url()) == "v1"


def test_a_failing_validate_changes_nothing_and_shows_its_output(env: Fixture) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    pid = sv_pid(env)
    bad = env.plan("r2", "v2")
    check = "grep -q v2 web/index.html && echo 'line 3: Bad directive' >&2 && exit 3"
    bad = replace(bad, services=[replace(bad.services[0], validate=check)])
    answer = env.install(bad)
    assert answer.status == 1, answer.stdout
    result = answer.result
    assert result.step == f"validate:{env.name}" and "exit 3" in result.error, result
    assert result.validate_output == ["line 3: Bad directive"], result
    assert env.current() == "releases/r1" and sv_pid(env) == pid and get(env.url()) == "v1"
    assert not (env.install_dir / "releases" / "r2").exists()
    assert not env.run_dir("r2").exists()  # staged secrets go all the same

    good = env.plan("r3", "v3")
    check = 'test "$FLINGER_RELEASE_DIR" = "$PWD" && grep -q v3 web/index.html'
    answer = env.install(replace(good, services=[replace(good.services[0], validate=check)]))
    assert answer.status == 0, answer.stdout
    assert env.current() == "releases/r3" and get(env.url()) == "v3"
    assert f"validate: {env.name}" in answer.steps()


def test_validate_sees_the_new_release_at_current_and_nothing_else_does(env: Fixture) -> None:
    current = env.install_dir / "current"
    first = env.plan("r1", "v1")  # a first install: `current` is the new release while validate runs
    check = f"cat {current}/web/index.html && exit 3"
    answer = env.install(replace(first, services=[replace(first.services[0], validate=check)]))
    assert answer.status == 1 and answer.result.validate_output == ["v1"], answer.stdout
    assert not os.path.lexists(current)  # and gone again: nothing was switched
    assert env.install(first).status == 0 and get(env.url()) == "v1"

    # Later installs: validate's own mount namespace shows the new release at `current`;
    # the running service, and the tool that runs validate ($PPID), still see the old one.
    pid = sv_pid(env)
    second = env.plan("r2", "v2")
    check = f"cat {current}/web/index.html /proc/$PPID/root{current}/web/index.html && exit 3"
    answer = env.install(replace(second, services=[replace(second.services[0], validate=check)]))
    assert answer.status == 1 and answer.result.validate_output == ["v2v1"]  # (no newline in either), answer.stdout
    assert env.current() == "releases/r1" and sv_pid(env) == pid and get(env.url()) == "v1"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(env.install_dir) not in mounts  # the bind mount lived and died in validate's namespace
    check = f"grep -qx v3 {current}/web/index.html"
    third = env.plan("r3", "v3")
    assert env.install(replace(third, services=[replace(third.services[0], validate=check)])).status == 0
    assert get(env.url()) == "v3"


def test_a_confirmed_switch_stands_and_gives_the_lock_up(env: Fixture) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    answer = env.install(replace(env.plan("r2", "v2"), confirm_within=2))
    token = answer.result.awaiting_confirmation
    assert answer.status == 0 and token and not answer.result.lock_released, answer.stdout
    assert (env.install_dir / ".flinger" / "lock").exists()  # kept for the confirmation
    done = run_remote("confirm", ConfirmPlan(str(env.install_dir), "test run r2", token))
    assert done.status == 0 and done.result.confirmed and done.result.lock_released, done.stdout
    time.sleep(4)  # twice the time it had
    assert env.current() == "releases/r2" and get(env.url()) == "v2"
    assert not (env.install_dir / ".flinger" / "self-rollback.json").exists()
    again = run_remote("confirm", ConfirmPlan(str(env.install_dir), "test run r2", token))
    assert again.status == 1 and "no switch here waits for this confirmation" in again.result.error


def test_an_unconfirmed_switch_is_undone_by_a_watcher_that_outlives_the_install(env: Fixture) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    answer = env.install(replace(env.plan("r2", "v2"), confirm_within=1))
    assert answer.status == 0 and answer.result.awaiting_confirmation, answer.stdout
    assert get(env.url()) == "v2"
    # Nobody confirms (the client is gone): the server goes back to what it ran, by itself.
    assert eventually(lambda: env.current() == "releases/r1" and not (env.install_dir / ".flinger/lock").exists())
    assert get(env.url()) == "v1"
    status = run_remote("status", env.at()).result
    assert status.release == "r1" and status.self_rollback is not None, status
    assert (status.self_rollback.release, status.self_rollback.to, status.self_rollback.ok) == ("r2", "r1", True)
    assert status.self_rollback.reason == "no confirmation within 1 s of the switch"
    later = env.install(env.plan("r3", "v3"))  # the next install says so, once
    assert later.status == 0 and later.result.self_rollback.release == "r2", later.stdout
    assert run_remote("status", env.at()).result.self_rollback is None


def test_an_install_killed_mid_switch_is_undone_by_its_watcher(env: Fixture) -> None:
    assert env.install(env.plan("r1", "v1")).status == 0
    slow = replace(env.plan("r2", "v2"), confirm_within=1)
    service = slow.services[0]  # the new release's service takes 3 s before it serves
    run = service.files["run"].replace("exec 2>&1\n", "exec 2>&1\nsleep 3\n")
    slow = replace(slow, services=[replace(service, files={"run": run})])
    prepared = run_remote("install", slow)  # lock + need
    (Path(slow.staging_dir) / "packages").mkdir(parents=True)
    shutil.copy(env.packs / Path(slow.packages[0].tarball).name, Path(slow.staging_dir) / "packages")
    assert prepared.result.need == ["web"], prepared.stdout
    tool = subprocess.Popen([sys.executable, "-m", "flinger.remote", "install"], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert tool.stdin is not None and tool.stdout is not None
    tool.stdin.write(envelope("install", replace(slow, acquire=False)))
    tool.stdin.close()
    for line in tool.stdout:  # until it restarts the service with the new definition
        if '"service: ' in line:
            break
    time.sleep(0.5)
    tool.kill()  # SIGKILL: no rollback of its own
    tool.wait()
    assert env.current() == "releases/r2"
    assert eventually(lambda: env.current() == "releases/r1" and not (env.install_dir / ".flinger/lock").exists())
    assert eventually(lambda: _serves(env, "v1"))
    record = run_remote("status", env.at()).result.self_rollback
    assert record is not None and (record.release, record.to, record.ok) == ("r2", "r1", True), record


def _serves(env: Fixture, content: str) -> bool:
    try:
        return get(env.url()) == content
    except OSError:
        return False


def test_install_refuses_without_the_lock(env: Fixture) -> None:
    plan = replace(env.plan("r1", "v1"), acquire=False)  # as if another run held it
    answer = run_remote("install", plan)
    assert answer.status == 1 and answer.result.step == "lock"
    assert not os.path.lexists(env.install_dir / "current")


def test_a_lost_client_never_leaves_a_half_switched_server(env: Fixture) -> None:
    """The client goes away (its end of the pipe closed, a SIGHUP) while a release that fails
    its health check is installing: the tool still rolls back, and says so in its log."""
    assert env.install(env.plan("r1", "v1")).status == 0 and get(env.url()) == "v1"
    bad = env.plan("r2", "v2", health=HealthSpec(url=f"http://127.0.0.1:{free_port()}/", timeout=3, interval=0.2))
    first = run_remote("install", bad)
    assert first.result.need == ["web"]
    (env.run_dir("r2") / "packages").mkdir(parents=True)
    shutil.copy(env.packs / Path(bad.packages[0].tarball).name, env.run_dir("r2") / "packages")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flinger.remote", "install"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(envelope("install", replace(bad, acquire=False)).encode())
    proc.stdin.close()
    while b'"text": "service: ' not in proc.stdout.readline():  # it is switching now
        pass
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 1  # the install failed, and the tool ran to its end
    assert env.current() == "releases/r1"
    assert json.loads((env.install_dir / ".flinger" / "state.json").read_text())["release"] == "r1"
    assert get(env.url()) == "v1"
    log = (env.install_dir / ".flinger" / "events.log").read_text()
    assert '"text": "rollback"' in log and '"event": "result", "version": 2, "ok": false' in log


def test_one_install_command_locks_says_what_it_lacks_then_installs_and_unlocks(env: Fixture) -> None:
    plan = env.plan("r1", "v1")
    lock_file = env.install_dir / ".flinger" / "lock"
    first = run_remote("install", plan)
    assert first.status == 0 and first.result.need == ["web"] and first.result.changed is False
    assert json.loads(lock_file.read_text())["holder"] == plan.lock_holder  # held for the delivery
    assert not os.path.lexists(env.install_dir / "current")

    answer = env.install(plan)
    assert answer.status == 0 and answer.result.changed is True and answer.result.lock_released is True
    assert not lock_file.exists()
    assert not env.run_dir("r1").exists()  # staged packages and the overlay are gone


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a//b", "secrets/./x"])
def test_an_overlay_path_outside_the_overlay_is_refused_and_the_lock_given_up(env: Fixture, bad: str) -> None:
    plan = env.plan("r1", "v1")
    plan = replace(plan, overlay_files={bad: base64.b64encode(b"x").decode()})
    first = run_remote("install", plan)
    assert first.result.need == ["web"]
    (env.run_dir("r1") / "packages").mkdir(parents=True)
    shutil.copy(env.packs / Path(plan.packages[0].tarball).name, env.run_dir("r1") / "packages")
    answer = run_remote("install", replace(plan, acquire=False))
    assert answer.status == 1 and "not a relative path inside the overlay" in answer.result.error
    assert answer.result.lock_released is True and not (env.install_dir / ".flinger" / "lock").exists()
    assert not os.path.lexists(env.install_dir / "current") and not env.run_dir("r1").exists()
