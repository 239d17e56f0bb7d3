"""install-prereqs against the sandbox: converges, then reports no changes; --check touches nothing.

The sandbox hosts share this machine's /etc (passwd, group, sysctl.d) and kernel, so the
test only sets a sysctl to the value it already has, and removes the account and the
sysctl file it made. /srv is private to each host.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

import flinger.cli.cmd_prereqs  # noqa: F401 - registers the command
from flinger.cli import run as flinger_run
from flinger.remote.prereqs import SYSCTL_FILE
from flinger_sandbox import SandboxState

pytestmark = pytest.mark.integration

ACCOUNT = "flinger-test"
TEST_ROOT = "/srv/flinger-prereqs"
SYSCTL_KEY = "fs.inotify.max_user_watches"
BOGUS = "flinger-no-such-package-x9"
SshRun = Callable[..., "subprocess.CompletedProcess[str]"]


def _live_sysctl() -> str:
    return " ".join(Path("/proc/sys", *SYSCTL_KEY.split(".")).read_text().split())


def manifest_text(extra_every_server: str = "", extra_apt: str = "") -> str:
    return f"""\
[packages.demo]
source = {{ type = "local", paths = [{{ from = "README", to = "README" }}] }}

[prereqs.builder]
apt = ["rsync"]
groups = ["{ACCOUNT}"]
users = [{{ name = "{ACCOUNT}", group = "{ACCOUNT}", system = true }}]
dirs = [{{ path = "{TEST_ROOT}/builder", owner = "{ACCOUNT}", group = "{ACCOUNT}", mode = "0750" }}]

[prereqs."*"]
apt = ["rsync"{extra_apt}]
sysctl = {{ "{SYSCTL_KEY}" = "{_live_sysctl()}" }}
dirs = [{{ path = "{TEST_ROOT}/all", mode = "0750" }}{extra_every_server}]

[prereqs.seed]
dirs = [{{ path = "{TEST_ROOT}/seed", mode = "0700" }}]
"""


class Project:
    """A throwaway source tree with its own deploy.toml pointing at the sandbox hosts."""

    def __init__(self, sandbox: SandboxState, directory: Path) -> None:
        self.sandbox = sandbox
        self.source = directory / "project"
        self.source.mkdir()
        (self.source / "README").write_text("prereqs test\n")
        doc = tomlkit.parse(sandbox.config_path.read_text())
        doc["source_dir"] = str(self.source)
        doc["manifest"] = "package-manifest.toml"
        self.config = directory / "deploy.toml"
        self.config.write_text(tomlkit.dumps(doc))
        self.write(manifest_text())

    def write(self, manifest: str) -> None:
        (self.source / "package-manifest.toml").write_text(manifest)

    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        status = flinger_run(["-c", str(self.config), "--json", "install-prereqs", *args])
        out = capsys.readouterr().out
        return status, json.loads(out)


def _account_exists(database: str) -> bool:
    return subprocess.run(["getent", database, ACCOUNT], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def project(sandbox: SandboxState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    if _account_exists("passwd") or _account_exists("group"):
        pytest.fail(f"an account named {ACCOUNT} already exists on this machine; remove it first")
    machine_sysctl = Path(SYSCTL_FILE).read_bytes() if Path(SYSCTL_FILE).exists() else None
    proj = Project(sandbox, tmp_path_factory.mktemp("prereqs"))
    assert flinger_run(["-c", str(proj.config), "trust"]) == 0
    try:
        yield proj
    finally:
        hosts = ",".join(sandbox.hosts)
        cleanup = f"rm -rf {TEST_ROOT} {SYSCTL_FILE}; userdel {ACCOUNT}; groupdel {ACCOUNT}; true"
        flinger_run(["-c", str(proj.config), "exec", "--privileged", cleanup, "--servers", hosts])
        # Each host has its own /etc: nothing of this reached the machine's own.
        assert not _account_exists("passwd") and not _account_exists("group")
        assert (Path(SYSCTL_FILE).read_bytes() if Path(SYSCTL_FILE).exists() else None) == machine_sysctl


def by_server(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["server"]: s for s in document["servers"]}


def changed_items(server: dict[str, Any]) -> set[str]:
    return {i["item"] for i in server["details"]["items"] if i["state"] == "changed"}


def test_first_run_converges_and_second_run_reports_no_changes(
    project: Project, capsys: pytest.CaptureFixture[str], ssh_run: SshRun
) -> None:
    status, document = project.run(capsys)
    servers = by_server(document)
    assert status == 0, document
    assert set(servers) == {"build1", "node1", "node2", "node3"}
    assert {f"user {ACCOUNT}", f"dir {TEST_ROOT}/builder"} <= changed_items(servers["build1"])
    assert f"dir {TEST_ROOT}/all" in changed_items(servers["node2"])
    assert f"dir {TEST_ROOT}/seed" in changed_items(servers["node1"])
    assert f"dir {TEST_ROOT}/seed" not in changed_items(servers["node2"])
    for server in servers.values():
        # already at the asked value: the kernel setting is reported unchanged everywhere
        assert f"sysctl {SYSCTL_KEY}" not in changed_items(server)
        assert server["status"] == "ok"
    made = ssh_run(project.sandbox, "build1", "stat", "-c", "%a %U %G", f"{TEST_ROOT}/builder")
    assert made.stdout.split() == ["750", ACCOUNT, ACCOUNT]
    seed = ssh_run(project.sandbox, "node1", "stat", "-c", "%a", f"{TEST_ROOT}/seed")
    assert seed.stdout.strip() == "700"
    written = ssh_run(project.sandbox, "node2", "cat", SYSCTL_FILE)
    assert f"{SYSCTL_KEY} = {_live_sysctl()}" in written.stdout

    status, document = project.run(capsys)
    assert status == 0
    for server in by_server(document).values():
        assert server["details"]["summary"] == "no changes", server
        assert server["details"]["changed"] == 0 and server["details"]["items"] == []


def test_check_mode_reports_a_fresh_dir_and_creates_nothing(
    project: Project, capsys: pytest.CaptureFixture[str], ssh_run: SshRun
) -> None:
    fresh = f"{TEST_ROOT}/fresh"
    project.write(manifest_text(extra_every_server=f', {{ path = "{fresh}" }}'))
    try:
        status, document = project.run(capsys, "--check")
    finally:
        project.write(manifest_text())
    assert status == 0
    servers = by_server(document)
    for node in ("node1", "node2", "node3"):
        details = servers[node]["details"]
        assert details["summary"] == "1 would change"
        assert details["items"] == [{"item": f"dir {fresh}", "state": "would-change", "detail": "created"}]
        assert ssh_run(project.sandbox, node, "test", "-e", fresh).returncode == 1
    assert servers["build1"]["details"]["summary"] == "no changes"


def test_check_mode_expects_an_owner_from_a_package_it_would_install(
    project: Project, capsys: pytest.CaptureFixture[str], ssh_run: SshRun
) -> None:
    """A fresh host: the dir's owner is made by a package of the same plan (as redis-server
    makes `redis`); --check says so instead of failing. (The real run installs the packages
    first and fails only if none of them made it.)"""
    owned = f"{TEST_ROOT}/by-package"
    project.write(
        manifest_text(extra_apt=f', "{BOGUS}"', extra_every_server=f', {{ path = "{owned}", owner = "{BOGUS}" }}')
    )
    try:
        status, document = project.run(capsys, "--check", "--servers", "node1")
    finally:
        project.write(manifest_text())
    assert status == 0, document
    items = {i["item"]: i for i in by_server(document)["node1"]["details"]["items"]}
    assert items[f"apt {BOGUS}"]["state"] == "would-change"
    assert items[f"dir {owned}"]["state"] == "would-change", items
    assert f"no user {BOGUS} yet: expected from the packages to install ({BOGUS})" in items[f"dir {owned}"]["detail"]
    assert ssh_run(project.sandbox, "node1", "test", "-e", owned).returncode == 1


def test_an_unknown_apt_package_fails_that_server_clearly(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.write(manifest_text(extra_apt=f', "{BOGUS}"'))
    try:
        status, document = project.run(capsys, "--servers", "node1")
    finally:
        project.write(manifest_text())
    assert status == 1
    (node1,) = document["servers"]
    assert node1["server"] == "node1" and node1["status"] == "failed"
    assert node1["message"].startswith(f"apt: no package named {BOGUS}")
    assert node1["details"]["failures"] == [node1["message"]]
