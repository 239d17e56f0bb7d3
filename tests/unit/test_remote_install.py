"""The remote `install` / `uninstall` / `clean` / `status` / `lock` commands against a real
private runsvdir: atomic switch, no-change detection, rollback on a failed health check,
pruning, and an uninstall that leaves no file behind."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flinger.remote import services, tarball
from flinger.remote.files import sha256_file

REPO = Path(__file__).resolve().parents[2]

needs_runit = pytest.mark.skipif(shutil.which("runsvdir") is None or os.geteuid() != 0, reason="needs runit and root")


def run_remote(command: str, plan: dict[str, Any] | None = None, *args: str) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "flinger.remote", command, *args],
        input=json.dumps(plan or {}),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines and lines[-1]["event"] == "result", proc.stderr
    return proc.returncode, lines


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
        (self.staging / "packages").mkdir(parents=True)
        self.port = free_port()
        self.name = f"web{self.port}"
        self.sv_dir = self.host / "etc" / "sv"

    def package(self, content: str) -> dict[str, str]:
        tree = self.tmp / ("tree-" + content)
        tree.mkdir(exist_ok=True)
        (tree / "index.html").write_text(content)
        target = self.staging / "packages" / f"web-{content}.tar.gz"
        tarball.pack_tree(str(tree), str(target))
        return {"name": "web", "digest": sha256_file(str(target)), "tarball": "packages/" + target.name}

    def overlay(self, run: str, secret: str = "s3cret") -> str:
        directory = self.staging / ("overlay-" + run)
        (directory / "secrets").mkdir(parents=True)
        (directory / "secrets" / "token").write_text(secret)
        (directory / "secrets" / "token").chmod(0o600)
        return str(directory)

    def plan(
        self, release: str, content: str, health: dict[str, Any] | None = None, directory: str = "web"
    ) -> dict[str, Any]:
        run = (
            f"#!/bin/sh\nexec 2>&1\nexec {sys.executable} -m http.server --bind 127.0.0.1 "
            f"{self.port} --directory {self.install_dir}/current/{directory}\n"
        )
        check = health or {"url": self.url(), "timeout": 30, "interval": 0.2}
        return {
            "install_dir": str(self.install_dir),
            "staging_dir": str(self.staging),
            "release": release,
            "packages": [self.package(content)],
            "overlay_dir": self.overlay(release),
            "sv_dir": str(self.sv_dir),
            "service_dir": str(self.service_dir),
            "services": [
                {
                    "name": self.name,
                    "package": "web",
                    "manager": "runit",
                    "files": {"run": run},
                    "health": check,
                    "after": [],
                }
            ],
        }

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/index.html"

    def current(self) -> str:
        return os.readlink(self.install_dir / "current")


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


@needs_runit
def test_install_upgrade_rollback_prune_uninstall(env: Fixture) -> None:
    before = snapshot(env.host)

    # first install
    plan = env.plan("r1", "v1")
    status, lines = run_remote("install", plan)
    assert status == 0, lines
    assert lines[-1]["changed"] is True and lines[-1]["release"] == "r1"
    assert env.current() == "releases/r1" and get(env.url()) == "v1"
    assert not os.path.exists(plan["overlay_dir"])  # the staged overlay is removed
    token = env.install_dir / "current" / "overlay" / "secrets" / "token"
    assert token.read_text() == "s3cret" and token.stat().st_mode & 0o777 == 0o600
    assert (env.install_dir / "current" / "overlay").stat().st_mode & 0o777 == 0o700
    state = json.loads((env.install_dir / ".flinger" / "state.json").read_text())
    assert state["release"] == "r1" and state["packages"]["web"]["digest"] == plan["packages"][0]["digest"]
    recorded = {e["path"] for e in state["services"][0]["paths"]}
    assert str(env.sv_dir / env.name) in recorded and str(env.sv_dir) in recorded
    first_pid = sv_pid(env)

    # the same again: nothing changes, nothing restarts
    status, lines = run_remote("install", env.plan("r2", "v1"))
    assert status == 0 and lines[-1]["changed"] is False
    assert env.current() == "releases/r1" and sv_pid(env) == first_pid
    assert not [e for e in lines if e.get("step") == "service"]

    # an upgrade whose health check fails: the previous release keeps running
    failing = env.plan("r3", "v3", health={"command": "exit 1", "timeout": 1, "interval": 0.2})
    failing["services"][0]["files"]["run"] += "# changed\n"
    status, lines = run_remote("install", failing)
    assert status == 1
    assert lines[-1]["step"] == "health:" + env.name and lines[-1]["rolled_back_to"] == "r1"
    assert env.current() == "releases/r1"
    assert not (env.install_dir / "releases" / "r3").exists()
    assert "# changed" not in (env.sv_dir / env.name / "run").read_text()
    status, lines = run_remote("install", env.plan("r4", "v1"))  # health passes again
    assert lines[-1]["changed"] is False  # the receipt still describes r1
    assert get(env.url()) == "v1"
    assert not os.path.exists(failing["overlay_dir"])

    # real upgrades; only the last two releases stay
    status, lines = run_remote("install", env.plan("r5", "v5"))
    assert status == 0 and env.current() == "releases/r5" and get(env.url()) == "v5"
    status, lines = run_remote("install", {**env.plan("r6", "v6"), "keep_releases": 2})
    assert status == 0 and get(env.url()) == "v6"
    receipts = env.install_dir / ".flinger" / "releases"
    assert sorted(os.listdir(receipts)) == ["r5.json", "r6.json"]  # a receipt per kept release
    assert sorted(os.listdir(env.install_dir / "releases")) == ["r5", "r6"]
    assert len(os.listdir(env.install_dir / "packages")) == 2

    status, lines = run_remote("status", {"install_dir": str(env.install_dir)})
    result = lines[-1]
    assert result["release"] == "r6" and result["previous_release"] == "r5"
    assert result["services"][0]["state"] == "run" and result["services"][0]["healthy"] is True

    # uninstall: the host is exactly as before the first install
    pid = sv_pid(env)
    status, lines = run_remote("uninstall", {"install_dir": str(env.install_dir)})
    assert status == 0, lines
    assert snapshot(env.host) == before
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            subprocess.run(["sleep", "0.1"])


@needs_runit
def test_clean_removes_the_staging_dir(env: Fixture) -> None:
    before = snapshot(env.host)
    plan = {**env.plan("r1", "v1"), "overlay_owner": {"user": "daemon", "group": "daemon"}}
    status, _ = run_remote("install", plan)
    assert status == 0
    token = env.install_dir / "current" / "overlay" / "secrets" / "token"
    assert token.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    assert token.parent.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    status, _ = run_remote("clean", {"install_dir": str(env.install_dir), "staging_dir": str(env.staging)})
    assert status == 0
    assert not env.staging.exists() and snapshot(env.host) == before


@needs_runit
def test_first_install_failing_leaves_no_service(env: Fixture) -> None:
    plan = env.plan("r1", "v1", health={"command": "false", "timeout": 0.5})
    status, lines = run_remote("install", plan)
    assert status == 1 and lines[-1]["rolled_back_to"] is None
    assert not os.path.lexists(env.install_dir / "current")
    assert not (env.sv_dir / env.name).exists()
    assert not os.path.lexists(env.service_dir / env.name)


@needs_runit
def test_bad_digest_touches_nothing(env: Fixture) -> None:
    plan = env.plan("r1", "v1")
    plan["packages"][0]["digest"] = "0" * 64
    status, lines = run_remote("install", plan)
    assert status == 1 and lines[-1]["step"] == "unpack"
    assert not os.path.lexists(env.install_dir / "current")
    assert not os.path.exists(plan["overlay_dir"])
    assert not (env.sv_dir / env.name).exists()


@needs_runit
def test_history_and_rollback_switch_back_to_a_kept_release_and_check_its_health(env: Fixture) -> None:
    assert run_remote("install", {**env.plan("r1", "v1"), "lock_holder": None})[0] == 0
    assert run_remote("install", env.plan("r2", "v2"))[0] == 0
    assert get(env.url()) == "v2"
    status, lines = run_remote("history", {"install_dir": str(env.install_dir)})
    assert status == 0
    releases = {r["release"]: r for r in lines[-1]["releases"]}
    assert lines[-1]["current"] == "r2" and releases["r1"]["can_roll_back_to"] is True
    assert releases["r2"]["current"] is True and releases["r2"]["packages"]["web"]

    # back to the one before: its files, its service definition, its content, health-checked
    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir)})
    assert status == 0, lines
    assert lines[-1]["release"] == "r1" and lines[-1]["previous_release"] == "r2"
    assert any(e.get("event") == "health" and e["ok"] for e in lines)
    assert env.current() == "releases/r1" and get(env.url()) == "v1"
    state = json.loads((env.install_dir / ".flinger" / "state.json").read_text())
    assert state["release"] == "r1" and state["previous_release"] == "r2"

    # the manifest of r1 installed again: nothing to do (the receipt is r1's)
    status, lines = run_remote("install", env.plan("r3", "v1"))
    assert status == 0 and lines[-1]["changed"] is False

    # and forward again, by name
    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir), "to": "r2"})
    assert status == 0 and env.current() == "releases/r2" and get(env.url()) == "v2"
    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir), "to": "r2"})
    assert status == 0 and lines[-1]["changed"] is False

    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir), "to": "r9"})
    assert status == 1 and "release r9 is not kept here (kept: r1)" in lines[-1]["error"], lines
    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir), "to": "../r1"})
    assert status == 1 and env.current() == "releases/r2"


@needs_runit
def test_a_rollback_whose_release_is_unhealthy_puts_the_running_one_back(env: Fixture) -> None:
    # r1's service serves a directory that the rollback will not find: unhealthy once rolled back to
    assert (
        run_remote(
            "install", env.plan("r1", "v1", health={"url": env.url(), "timeout": 2, "interval": 0.2}, directory="web")
        )[0]
        == 0
    )
    assert run_remote("install", env.plan("r2", "v2"))[0] == 0
    (env.install_dir / "releases" / "r1" / "web").unlink()  # r1 broken on disk since
    status, lines = run_remote("rollback", {"install_dir": str(env.install_dir)})
    assert status == 1, lines
    assert lines[-1]["step"].startswith("health:") and lines[-1]["rolled_back_to"] == "r2", lines[-1]
    assert env.current() == "releases/r2" and get(env.url()) == "v2"
    assert (env.install_dir / "releases" / "r1").is_dir()  # a kept release is never discarded


@needs_runit
def test_a_service_whose_restart_fails_gets_its_old_definition_back(
    env: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_remote("install", env.plan("r1", "v1"))[0] == 0
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
    new = env.plan("r2", "v2")
    new["services"][0]["files"]["run"] += "# the r2 definition\n"
    status, lines = run_remote("install", new)
    assert status == 1, lines
    result = lines[-1]
    assert result["step"] == f"service:{env.name}" and "timeout: finish" in result["error"], result
    assert result["rolled_back_to"] == "r1" and result["rollback_problems"] == [], result
    assert (env.sv_dir / env.name / "run").read_text() == old_run  # the old definition is back
    assert result["restored_health"][env.name]["healthy"] is True, result
    assert env.current() == "releases/r1" and get(env.url()) == "v1"


@needs_runit
def test_a_failing_validate_changes_nothing_and_shows_its_output(env: Fixture) -> None:
    assert run_remote("install", env.plan("r1", "v1"))[0] == 0
    pid = sv_pid(env)
    bad = env.plan("r2", "v2")
    bad["services"][0]["validate"] = "grep -q v2 web/index.html && echo 'line 3: Bad directive' >&2 && exit 3"
    status, lines = run_remote("install", bad)
    assert status == 1, lines
    result = lines[-1]
    assert result["step"] == f"validate:{env.name}" and "exit 3" in result["error"], result
    assert result["validate_output"] == ["line 3: Bad directive"], result
    assert env.current() == "releases/r1" and sv_pid(env) == pid and get(env.url()) == "v1"
    assert not (env.install_dir / "releases" / "r2").exists()
    assert not os.path.exists(bad["overlay_dir"])  # staged secrets go all the same

    good = env.plan("r3", "v3")
    good["services"][0]["validate"] = 'test "$FLINGER_RELEASE_DIR" = "$PWD" && grep -q v3 web/index.html'
    status, lines = run_remote("install", good)
    assert status == 0, lines
    assert env.current() == "releases/r3" and get(env.url()) == "v3"
    assert [e["service"] for e in lines if e.get("event") == "validated"] == [env.name]


def test_a_plan_of_an_unknown_schema_is_refused_and_every_result_says_its_schema(tmp_path: Path) -> None:
    status, lines = run_remote("status", {"install_dir": str(tmp_path / "app"), "schema": 2})
    assert status == 1 and "reads plans of schema 1 to 1, not 2" in lines[-1]["error"], lines
    assert lines[-1]["schema"] == 1
    status, lines = run_remote("status", {"install_dir": str(tmp_path / "app"), "schema": 1})
    assert status == 0 and lines[-1] == {"event": "result", "ok": True, "schema": 1, "installed": False}


def test_lock_acquire_wait_release_break(tmp_path: Path) -> None:
    install_dir = str(tmp_path / "opt" / "app")
    args = ["--install-dir", install_dir]
    status, lines = run_remote("lock", None, "acquire", *args, "--holder", "alice")
    assert status == 0
    record = json.loads(Path(install_dir, ".flinger", "lock").read_text())
    assert record["holder"] == "alice" and "since" in record and record["session"]["pid"] == os.getpid()
    status, lines = run_remote("lock", None, "acquire", *args, "--holder", "bob", "--wait", "0.6")
    assert status == 1 and lines[0]["event"] == "held" and lines[0]["holder"] == "alice"
    assert "alice" in lines[-1]["error"]
    status, lines = run_remote("lock", None, "release", *args, "--holder", "bob")
    assert status == 1
    status, lines = run_remote("lock", None, "break", *args)
    assert status == 0 and lines[-1]["holder"] == "alice"
    status, _ = run_remote("lock", None, "acquire", *args, "--holder", "bob")
    assert status == 0
    status, lines = run_remote("lock", None, "release", *args, "--holder", "bob")
    assert status == 0 and lines[-1]["released"] is True
    assert not Path(install_dir, ".flinger", "lock").exists()


@needs_runit
def test_install_refuses_without_the_lock(env: Fixture) -> None:
    plan = {**env.plan("r1", "v1"), "lock_holder": "alice"}
    status, lines = run_remote("install", plan)
    assert status == 1 and lines[-1]["step"] == "lock"
    assert not os.path.lexists(env.install_dir / "current")


class FakeCommands:
    """Records the service-manager commands instead of running them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], check: bool = True) -> str:
        self.calls.append(argv)
        return "active"


def test_systemd_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCommands()
    monkeypatch.setattr(services, "run", fake)
    roots = services.roots_from({"systemd_dir": str(tmp_path / "systemd")})
    manager = services.manager_for("systemd", roots)
    service = {"name": "quorum", "files": {"unit": "[Service]\nExecStart=/bin/true\n"}}
    receipt = manager.activate(service)
    unit = tmp_path / "systemd" / "quorum.service"
    assert unit.read_text() == service["files"]["unit"]
    assert {"path": str(unit), "kind": "file"} in receipt
    assert fake.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "quorum.service"]]
    fake.calls.clear()
    manager.activate(service)  # already there: restart
    assert fake.calls[-1] == ["systemctl", "restart", "quorum.service"]
    assert manager.state(service) == "active"
    fake.calls.clear()
    manager.deactivate(service)
    assert fake.calls == [["systemctl", "disable", "--now", "quorum.service"], ["systemctl", "daemon-reload"]]
    assert not unit.exists()


def test_smf_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCommands()
    monkeypatch.setattr(services, "run", fake)
    manager = services.manager_for("smf", services.roots_from({"smf_dir": str(tmp_path)}))
    service = {"name": "quorum", "files": {"manifest": "<service_bundle/>"}}
    manager.activate(service)
    path = str(tmp_path / "quorum.xml")
    assert fake.calls == [["svccfg", "import", path], ["svcadm", "enable", "svc:/site/quorum:default"]]
    fake.calls.clear()
    manager.activate(service)
    assert fake.calls[-1] == ["svcadm", "restart", "svc:/site/quorum:default"]
    fake.calls.clear()
    manager.deactivate(service)
    assert fake.calls == [
        ["svcadm", "disable", "-s", "svc:/site/quorum:default"],
        ["svccfg", "delete", "-f", "svc:/site/quorum"],
    ]
    assert not os.path.exists(path)


@needs_runit
def test_a_lost_client_never_leaves_a_half_switched_server(env: Fixture) -> None:
    """The client goes away (its end of the pipe closed, a SIGHUP) while a release that fails
    its health check is installing: the tool still rolls back, and says so in its log."""
    code, _ = run_remote("install", env.plan("r1", "v1"))
    assert code == 0 and get(env.url()) == "v1"
    bad = env.plan("r2", "v2", health={"url": f"http://127.0.0.1:{free_port()}/", "timeout": 3, "interval": 0.2})
    proc = subprocess.Popen(
        [sys.executable, "-m", "flinger.remote", "install"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(json.dumps(bad).encode())
    proc.stdin.close()
    while b'"step": "service"' not in proc.stdout.readline():  # it is switching now
        pass
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 1  # the install failed, and the tool ran to its end
    assert env.current() == "releases/r1"
    assert json.loads((env.install_dir / ".flinger" / "state.json").read_text())["release"] == "r1"
    assert get(env.url()) == "v1"
    log = (env.install_dir / ".flinger" / "events.log").read_text()
    assert '"step": "rollback"' in log and '"event": "result", "ok": false' in log


@needs_runit
def test_one_install_command_locks_says_what_it_lacks_then_installs_and_unlocks(env: Fixture) -> None:
    import base64

    run_dir = env.tmp / "st" / "runs" / "opt_app" / "r1"
    lock_file = env.install_dir / ".flinger" / "lock"
    plan = {**env.plan("r1", "v1"), "staging_dir": str(run_dir), "lock_holder": "alice", "release_lock": True,
            "overlay_files": {"secrets/token": base64.b64encode(b"s3cret").decode()}}  # fmt: skip
    plan.pop("overlay_dir")
    status, lines = run_remote("install", {**plan, "acquire": {"wait": 0}})
    assert status == 0 and lines[-1]["need"] == ["web"] and lines[-1]["changed"] is False
    assert json.loads(lock_file.read_text())["holder"] == "alice"  # held for the delivery
    assert not os.path.lexists(env.install_dir / "current")

    (run_dir / "packages").mkdir(parents=True)
    shutil.copy(env.staging / plan["packages"][0]["tarball"], run_dir / plan["packages"][0]["tarball"])
    status, lines = run_remote("install", plan)
    assert status == 0 and lines[-1]["changed"] is True and lines[-1]["lock_released"] is True
    assert not lock_file.exists() and not run_dir.exists()  # staged overlay and packages gone too
    token = env.install_dir / "current" / "overlay" / "secrets" / "token"
    assert token.read_bytes() == b"s3cret" and token.stat().st_mode & 0o077 == 0
    assert get(env.url()) == "v1"

    # nothing new: the whole run is this one command
    status, lines = run_remote("install", {**plan, "release": "r2", "acquire": {"wait": 0}})
    assert status == 0 and lines[-1]["changed"] is False and lines[-1]["lock_released"] is True
    assert "need" not in lines[-1] and not lock_file.exists()


@needs_runit
@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a//b", "secrets/./x"])
def test_an_overlay_path_outside_the_overlay_is_refused_and_the_lock_given_up(env: Fixture, bad: str) -> None:
    run_dir = env.tmp / "st" / "runs" / "opt_app" / "r1"
    plan = {**env.plan("r1", "v1"), "staging_dir": str(run_dir), "lock_holder": "alice", "release_lock": True,
            "overlay_files": {bad: "eA=="}, "packages": []}  # fmt: skip
    status, lines = run_remote("install", {**plan, "acquire": {"wait": 0}})
    assert status == 1 and "not a relative path inside the overlay" in lines[-1]["error"]
    assert lines[-1]["lock_released"] is True and not (env.install_dir / ".flinger" / "lock").exists()
    assert not (env.tmp / "escape").exists() and not os.path.lexists(env.install_dir / "current")
