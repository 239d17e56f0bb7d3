"""The remote `prereqs` command's decisions, against a fake host (commands faked, files in a tmp root)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flinger.protocol.codec import decode
from flinger.protocol.plans import PrereqsPlan
from flinger.remote import prereqs
from flinger.remote.__main__ import run as remote_run
from tests.remote_helpers import envelope

REPO = Path(__file__).resolve().parents[2]
UID, GID = os.getuid(), os.getgid()


@dataclass
class FakeHost:
    """A Debian-like host: dpkg/apt, getent/groupadd/useradd, sysctl; every command recorded."""

    root: Path
    installed: set[str] = field(default_factory=lambda: {"rsync"})
    available: set[str] = field(default_factory=lambda: {"rsync", "python3", "jq"})
    available_after_update: set[str] = field(default_factory=set)
    groups: dict[str, int] = field(default_factory=lambda: {"root": 0})
    users: dict[str, list[str]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    script_status: int = 0
    makes_user: dict[str, str] = field(default_factory=dict)  # package -> the account its scripts make

    def __call__(self, argv: list[str], env: dict[str, str] | None, cwd: str | None) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        handler = {
            "dpkg-query": self.dpkg_query,
            "apt-get": self.apt_get,
            "apt-cache": self.apt_cache,
            "getent": self.getent,
            "groupadd": self.groupadd,
            "useradd": self.useradd,
            "usermod": self.usermod,
            "sysctl": self.sysctl,
            "sh": lambda _argv, _env: (self.script_status, "", "boom\n" if self.script_status else ""),
        }.get(argv[0])
        if handler is None:
            raise AssertionError(f"unexpected command {argv}")
        return handler(argv, env)

    def dpkg_query(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        name = argv[-1]
        if name in self.installed:
            return 0, "install ok installed", ""
        return 1, "", f"dpkg-query: no packages found matching {name}"

    def apt_get(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        if argv[1] == "update":
            self.available |= self.available_after_update
            return 0, "Reading package lists...\n", ""
        assert argv[1] == "install", argv
        assert env == {"DEBIAN_FRONTEND": "noninteractive"}
        names = [a for a in argv[2:] if not a.startswith("-") and "=" not in a]
        unknown = [n for n in names if n not in self.available]
        if unknown:
            return 100, "Reading package lists...\n", "".join(f"E: Unable to locate package {n}\n" for n in unknown)
        self.installed |= set(names)
        for name in names:
            if name in self.makes_user:
                user = self.makes_user[name]
                self.groups[user] = GID
                self.users[user] = [user, "x", str(UID), str(GID), "", f"/var/lib/{user}", "/usr/sbin/nologin"]
        return 0, "Setting up ...\n", ""

    def apt_cache(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        assert argv[1] == "show", argv
        if argv[-1] in self.available:
            return 0, f"Package: {argv[-1]}\n", ""
        return 100, "", "E: No packages found"

    def getent(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        database, name = argv[1], argv[2]
        if database == "group" and name in self.groups:
            return 0, f"{name}:x:{self.groups[name]}:\n", ""
        if database == "passwd" and name in self.users:
            return 0, ":".join(self.users[name]) + "\n", ""
        return 2, "", ""

    def groupadd(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        self.groups[argv[-1]] = GID
        return 0, "", ""

    def useradd(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        name = argv[-1]
        group = argv[argv.index("-g") + 1] if "-g" in argv else name
        self.users[name] = [name, "x", str(UID), str(self.groups[group]), "", f"/home/{name}", "/bin/sh"]
        return 0, "", ""

    def usermod(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        entry = self.users[argv[-1]]
        if "-s" in argv:
            entry[6] = argv[argv.index("-s") + 1]
        return 0, "", ""

    def sysctl(self, argv: list[str], env: dict[str, str] | None) -> tuple[int, str, str]:
        assert argv[1] == "-p", argv
        for line in Path(argv[2]).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = (p.strip() for p in line.split("=", 1))
                (self.root / "proc/sys" / key.replace(".", "/")).write_text(value + "\n")
        return 0, "", ""

    def ran(self, *prefix: str) -> int:
        return sum(1 for c in self.calls if c[: len(prefix)] == list(prefix))


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for key, value in {"fs/inotify/max_user_watches": "8192", "net/ipv4/ip_local_port_range": "32768\t60999"}.items():
        (root / "proc/sys" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "proc/sys" / key).write_text(value + "\n")
    return root


def run(host: FakeHost, plan: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan (written here as plain data) applied to the fake host: the result, and every
    item it looked at, as plain data."""
    typed = decode(PrereqsPlan, {"os": "debian", **plan}, "plan")
    tool = prereqs.Prereqs(typed, runner=host, root=str(host.root), which=lambda name: True)
    result = tool.apply()
    return asdict(result), [asdict(i) for i in tool.items]


def states(items: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(i["kind"], i["name"]): i["state"] for i in items}


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(root=make_root(tmp_path))


def test_installed_packages_are_ok_and_missing_ones_installed_once(host: FakeHost) -> None:
    result, items = run(host, {"apt": ["rsync", "python3", "jq"]})
    assert states(items) == {("apt", "rsync"): "ok", ("apt", "python3"): "changed", ("apt", "jq"): "changed"}
    assert result["ok"] and result["changed"] == 2
    install = [c for c in host.calls if c[:2] == ["apt-get", "install"]]
    assert len(install) == 1
    assert "--no-install-recommends" in install[0] and install[0][-2:] == ["python3", "jq"]
    assert host.ran("apt-get", "update") == 0

    again, items = run(host, {"apt": ["rsync", "python3", "jq"]})
    assert again["changed"] == 0 and set(states(items).values()) == {"ok"}


def test_check_mode_reports_would_change_and_runs_no_installer(host: FakeHost) -> None:
    result, items = run(host, {"check": True, "apt": ["rsync", "python3", "nope"]})
    found = {i["name"]: i for i in items}
    assert found["python3"]["state"] == "would-change" and found["python3"]["detail"] == "not installed"
    assert found["nope"]["state"] == "would-change" and "not in apt's package lists" in found["nope"]["detail"]
    assert result == {**result, "ok": True, "changed": 0, "would_change": 2}
    assert host.ran("apt-get") == 0
    assert "python3" not in host.installed


def test_an_unknown_package_refreshes_the_lists_once_then_fails_clearly(host: FakeHost) -> None:
    host.available_after_update = {"fresh"}
    result, items = run(host, {"apt": ["fresh", "no-such-pkg", "jq"]})
    assert host.ran("apt-get", "update") == 1
    assert states(items) == {("apt", "fresh"): "changed", ("apt", "no-such-pkg"): "failed", ("apt", "jq"): "changed"}
    failed = next(i for i in items if i["state"] == "failed")
    assert failed["detail"] == "apt: no package named no-such-pkg"
    assert not result["ok"] and result["error"] == "apt: no package named no-such-pkg"
    assert {"fresh", "jq"} <= host.installed


def test_a_package_name_that_looks_like_an_option_is_refused_without_running_apt(host: FakeHost) -> None:
    result, items = run(host, {"apt": ["--purge"]})
    assert states(items) == {("apt", "--purge"): "failed"}
    assert host.ran("dpkg-query") == 0 and host.ran("apt-get") == 0
    assert not result["ok"]


def test_sysctl_already_live_is_ok_but_persisted_once(host: FakeHost) -> None:
    plan = {"sysctl": {"net.ipv4.ip_local_port_range": "32768 60999"}}
    _result, items = run(host, plan)
    conf = host.root / "etc/sysctl.d/90-flinger.conf"
    assert states(items) == {
        ("sysctl", "net.ipv4.ip_local_port_range"): "ok",
        ("file", prereqs.SYSCTL_FILE): "changed",
    }
    assert "net.ipv4.ip_local_port_range = 32768 60999\n" in conf.read_text()
    assert host.ran("sysctl") == 0  # nothing to apply: the live value already matches
    mtime = conf.stat().st_mtime_ns
    again, items = run(host, plan)
    assert again["changed"] == 0 and set(states(items).values()) == {"ok"}
    assert conf.stat().st_mtime_ns == mtime


def test_sysctl_change_is_written_and_applied_from_the_file(host: FakeHost) -> None:
    result, items = run(host, {"sysctl": {"fs.inotify.max_user_watches": "524288"}})
    item = next(i for i in items if i["kind"] == "sysctl")
    assert item["state"] == "changed" and item["detail"] == "8192 -> 524288"
    assert host.ran("sysctl", "-p") == 1
    assert (host.root / "proc/sys/fs/inotify/max_user_watches").read_text().strip() == "524288"
    assert result["changed"] == 2  # the file and the live value


def test_sysctl_check_mode_writes_nothing(host: FakeHost) -> None:
    result, _items = run(host, {"check": True, "sysctl": {"fs.inotify.max_user_watches": "524288"}})
    assert result["would_change"] == 2 and result["changed"] == 0
    assert not (host.root / "etc/sysctl.d").exists()
    assert (host.root / "proc/sys/fs/inotify/max_user_watches").read_text().strip() == "8192"


def test_unknown_or_malicious_sysctl_keys_fail(host: FakeHost) -> None:
    result, items = run(host, {"sysctl": {"no.such.key": "1", "fs/../../etc/passwd": "x"}})
    found = states(items)
    assert found[("sysctl", "no.such.key")] == "failed"
    assert found[("sysctl", "fs/../../etc/passwd")] == "failed"
    assert not result["ok"]
    assert not (host.root / "etc/passwd").exists()


def test_groups_users_and_owned_dirs_are_made_once(host: FakeHost) -> None:
    plan = {
        "groups": ["svc"],
        "users": [{"name": "svc", "group": "svc", "system": True}],
        "dirs": [{"path": "/srv/svc/data", "owner": "svc", "group": "svc", "mode": 0o750}],
    }
    result, items = run(host, plan)
    assert states(items) == {
        ("group", "svc"): "changed",
        ("user", "svc"): "changed",
        ("dir", "/srv/svc/data"): "changed",
    }
    useradd = next(c for c in host.calls if c[0] == "useradd")
    assert useradd[:2] == ["useradd", "--system"] and useradd[-1] == "svc"
    assert ["-g", "svc"] == useradd[2:4]
    made = host.root / "srv/svc/data"
    assert made.is_dir() and (made.stat().st_mode & 0o7777) == 0o750
    assert result == {**result, "ok": True, "changed": 3}

    again, items = run(host, plan)
    assert again["changed"] == 0 and set(states(items).values()) == {"ok"}
    assert host.ran("useradd") == 1 and host.ran("groupadd") == 1


def test_a_dir_with_the_wrong_mode_is_fixed_and_check_mode_leaves_it(host: FakeHost) -> None:
    target = host.root / "srv/x"
    target.mkdir(parents=True, mode=0o755)
    target.chmod(0o755)
    plan = {"dirs": [{"path": "/srv/x", "mode": 0o700}]}
    _, items = run(host, {**plan, "check": True})
    assert items[0]["state"] == "would-change" and items[0]["detail"] == "mode 0755 -> 0700"
    assert (target.stat().st_mode & 0o7777) == 0o755
    _result, items = run(host, plan)
    assert items[0]["state"] == "changed"
    assert (target.stat().st_mode & 0o7777) == 0o700


def test_check_mode_on_a_fresh_dir_creates_nothing_even_for_a_user_not_yet_made(host: FakeHost) -> None:
    plan = {"check": True, "users": [{"name": "svc"}], "dirs": [{"path": "/srv/new", "owner": "svc"}]}
    _result, items = run(host, plan)
    assert states(items) == {("user", "svc"): "would-change", ("dir", "/srv/new"): "would-change"}
    assert not (host.root / "srv/new").exists()
    assert host.ran("useradd") == 0


def test_check_mode_expects_an_owner_from_a_package_of_the_same_plan_and_the_real_run_makes_it(
    host: FakeHost,
) -> None:
    """redis-server's own scripts make the `redis` user: a fresh host's check must not fail
    /srv/redis for it, and the real run, packages first, makes both."""
    host.available.add("redis-server")
    host.makes_user["redis-server"] = "redis"
    plan = {"apt": ["redis-server"], "dirs": [{"path": "/srv/redis", "owner": "redis", "group": "redis"}]}
    result, items = run(host, {**plan, "check": True})
    assert result["ok"] and states(items) == {
        ("apt", "redis-server"): "would-change",
        ("dir", "/srv/redis"): "would-change",
    }
    detail = next(i for i in items if i["kind"] == "dir")["detail"]
    assert "no user redis yet: expected from the packages to install (redis-server)" in detail, detail
    assert not (host.root / "srv/redis").exists() and host.ran("apt-get") == 0
    result, items = run(host, plan)
    assert result["ok"] and states(items) == {("apt", "redis-server"): "changed", ("dir", "/srv/redis"): "changed"}


def test_check_mode_still_fails_an_owner_no_package_or_user_of_the_plan_can_make(host: FakeHost) -> None:
    _result, items = run(host, {"check": True, "apt": ["rsync"], "dirs": [{"path": "/srv/y", "owner": "ghost"}]})
    assert states(items)[("dir", "/srv/y")] == "failed", items  # rsync is installed: nothing pending


def test_a_package_that_does_not_make_the_owner_fails_the_real_run_naming_it(host: FakeHost) -> None:
    _result, items = run(host, {"apt": ["jq"], "dirs": [{"path": "/srv/y", "owner": "ghost"}]})
    assert states(items) == {("apt", "jq"): "changed", ("dir", "/srv/y"): "failed"}
    assert "no user named ghost" in items[-1]["detail"]


def test_a_dir_owned_by_an_unknown_user_fails(host: FakeHost) -> None:
    _result, items = run(host, {"dirs": [{"path": "/srv/y", "owner": "ghost"}]})
    assert items[0]["state"] == "failed" and "no user named ghost" in items[0]["detail"]
    assert not (host.root / "srv/y").exists()


def test_an_existing_user_with_another_shell_is_modified(host: FakeHost) -> None:
    host.users["svc"] = ["svc", "x", str(UID), "0", "", "/home/svc", "/bin/sh"]
    _result, items = run(host, {"users": [{"name": "svc", "shell": "/usr/sbin/nologin"}]})
    assert items[0]["state"] == "changed" and "shell /bin/sh -> /usr/sbin/nologin" in items[0]["detail"]
    assert host.users["svc"][6] == "/usr/sbin/nologin"
    _again, items = run(host, {"users": [{"name": "svc", "shell": "/usr/sbin/nologin"}]})
    assert items[0]["state"] == "ok"


def test_scripts_run_only_outside_check_mode_and_only_with_the_right_digest(host: FakeHost) -> None:
    import hashlib

    script = host.root / "src/setup.sh"
    script.parent.mkdir(parents=True)
    script.write_text("echo hi\n")
    digest = hashlib.sha256(b"echo hi\n").hexdigest()
    spec = {"name": "setup.sh", "path": "/src/setup.sh", "sha256": digest, "cwd": "/src"}
    _, items = run(host, {"check": True, "scripts": [spec]})
    assert items[0]["state"] == "would-change" and host.ran("sh") == 0
    _, items = run(host, {"scripts": [spec]})
    assert items[0]["state"] == "changed" and items[0]["detail"] == "ran"
    assert host.calls[-1] == ["sh", str(script)]
    _, items = run(host, {"scripts": [{**spec, "sha256": "0" * 64}]})
    assert items[0]["state"] == "failed" and "differs from the client's copy" in items[0]["detail"]
    host.script_status = 3
    _result, items = run(host, {"scripts": [spec]})
    assert items[0]["state"] == "failed" and "status 3: boom" in items[0]["detail"]


def test_pkg_names_are_ignored_on_debian_and_apt_names_on_illumos(host: FakeHost) -> None:
    result, items = run(host, {"pkg": ["runtime/python-39"]})
    assert items == [] and host.calls == []
    result, items = run(host, {"os": "illumos", "apt": ["rsync"]})
    assert items == [] and result["ok"]


def test_the_command_reads_the_plan_and_ends_with_a_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert remote_run("prereqs", envelope("prereqs", PrereqsPlan(check=True))) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "result" and last["ok"] is True and last["changed"] == 0
