"""`build package` on the sandbox builder through the CLI, a failing build, and a jump host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flinger_helpers import derived_config, run_flinger

from flinger_sandbox import SandboxState
from tests.state_helpers import overlay_of

pytestmark = pytest.mark.integration

MANIFEST = """\
[packages.app]
roles = ["node"]
setup_hint = "install the app's toolchain with: flinger install-prereqs"
[packages.app.source]
type = "local"
build = ["sh build.sh"]
inputs = ["build.sh", "app.txt"]
paths = [{ from = "app.txt", to = "share/app.txt" }]

[packages.lib]
roles = ["node"]
[packages.lib.source]
type = "local"
paths = [{ from = "lib.txt", to = "lib.txt" }]
"""


@pytest.fixture
def project(sandbox: SandboxState, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "build.sh").write_text("echo building app\n")
    (src / "app.txt").write_text("app v1\n")
    (src / "lib.txt").write_text("lib v1\n")
    (src / "manifest.toml").write_text(MANIFEST)
    return derived_config(
        sandbox, tmp_path,
        {"source_dir": str(src), "manifest": "manifest.toml", "builder.source_dir": f"$HOME/build-{tmp_path.name}"},
    )  # fmt: skip


def build(config: Path, *extra: str) -> tuple[int, dict[str, dict[str, object]]]:
    proc = run_flinger("-c", str(config), "--json", "build", "package", *extra)
    doc = json.loads(proc.stdout)
    return proc.returncode, {p["name"]: p for p in doc["packages"]}


def test_build_package_caches_and_rebuilds_only_what_changed(project: Path) -> None:
    src = project.parent / "src"
    assert run_flinger("-c", str(project), "sync").returncode == 0
    code, first = build(project)
    assert code == 0 and {n: p["state"] for n, p in first.items()} == {"app": "built", "lib": "built"}
    code, second = build(project)
    assert code == 0 and {n: p["state"] for n, p in second.items()} == {"app": "cached", "lib": "cached"}
    (src / "lib.txt").write_text("lib v2\n")
    assert run_flinger("-c", str(project), "sync").returncode == 0
    code, third = build(project)
    assert {n: p["state"] for n, p in third.items()} == {"app": "cached", "lib": "built"}
    assert third["lib"]["sha256"] != first["lib"]["sha256"]


def test_failed_build_shows_command_status_output_and_hint(project: Path) -> None:
    src = project.parent / "src"
    (src / "build.sh").write_text("echo compiling...\necho 'error: no toolchain' >&2\nexit 7\n")
    assert run_flinger("-c", str(project), "sync").returncode == 0
    proc = run_flinger("-c", str(project), "build", "package")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "`sh build.sh` exited with status 7" in out
    assert "[app] error: no toolchain" in out
    assert "hint for app: install the app's toolchain" in out
    assert re.search(r"lib\s+│\s+(built|cached)", out), out


def test_exec_through_a_jump_host(sandbox: SandboxState, tmp_path: Path) -> None:
    builder = sandbox.hosts["build1"]
    config = derived_config(sandbox, tmp_path, {"ssh.jump": f"deploy@{builder.addr}:{builder.port}"})
    proc = run_flinger("-c", str(config), "exec", "--servers", "node2", "uname -n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[node2] node2" in proc.stdout
    # The jump host's key is checked like any other: with an empty known_hosts nothing connects.
    empty = tmp_path / "kh"
    empty.write_text("")
    strict = derived_config(
        sandbox, tmp_path, {"ssh.jump": f"deploy@{builder.addr}:{builder.port}", "ssh.known_hosts": str(empty)}
    )
    refused = run_flinger("-c", str(strict), "--json", "exec", "--servers", "node2", "true")
    assert refused.returncode == 4
    assert "unknown host key" in refused.stdout and "a jump host on the way" in refused.stdout
    assert "flinger trust --servers node2" in refused.stdout


def test_dry_run_contacts_nobody_and_shows_no_secret(sandbox: SandboxState, tmp_path: Path) -> None:
    # Addresses nobody listens on: a dry run must not need them.
    config = derived_config(sandbox, tmp_path, {f"servers.node{i}.addr": f"127.0.0.{200 + i}" for i in (1, 2, 3)})
    assert run_flinger("-c", str(config), "overlay").returncode == 0
    proc = run_flinger("-c", str(config), "--json", "deploy", "install", "--dry-run", "--offline")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [s["server"] for s in plan["servers"]] == ["node1", "node2", "node3"]
    for server in ("node1", "node2", "node3"):
        files = overlay_of(tmp_path / ".flinger" / "sandbox", server)
        share = json.loads(files["share.json"])["share"]
        key = files["tls/key.pem"].decode().splitlines()[1]
        assert share not in proc.stdout and key not in proc.stdout
    assert "share.json" in proc.stdout  # files are named, never shown
