"""deploy through an OCI registry: a sandbox of its own with CNCF Distribution (TLS from a
sandbox CA, htpasswd), real sshd and runit. The builder publishes the build once; each server
pulls what it lacks by digest and refuses a blob whose sha256 is wrong.

The tests of this module run in order and share the sandbox: install → no change → a corrupt
blob → a registry that does not answer → uninstall.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flinger_helpers import (
    agent_env,
    by_server,
    derived_config,
    flinger_json,
    quorum_states,
    run_flinger,
    run_sandbox_cli,
    run_ssh,
)

import flinger_sandbox as sb
from flinger.topology import load_topology
from flinger_sandbox import SandboxState
from flinger_sandbox.net import is_listening
from tests.remote_helpers import eventually

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def reg_sandbox(sandbox_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    directory = tmp_path_factory.mktemp("registry")
    state = sb.up(directory, 4, with_registry=True)
    try:
        yield state
    finally:
        sb.down(directory)
    url = state.registry_url or ""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    # down waits for the registry's process; its listening socket may close a moment later
    gone = eventually(lambda: not is_listening(host, int(port)), seconds=15)
    assert gone, f"the registry still listens on {url} 15 s after down"


def _flinger(state: SandboxState, *args: str, config: Path | None = None) -> tuple[int, dict[str, Any]]:
    return flinger_json(config or state.config_path, *args, env=agent_env(state))


def _password(state: SandboxState) -> str:
    return sb.registry_files(state.directory).password.read_text().strip()


@pytest.fixture(scope="module")
def installed(reg_sandbox: SandboxState) -> dict[str, Any]:
    state = reg_sandbox
    outputs = []
    for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):
        proc = run_flinger("-c", str(state.config_path), *step, env=agent_env(state))
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout + proc.stderr)
    proc = run_flinger("-c", str(state.config_path), "--json", "deploy", "install", env=agent_env(state))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs.append(proc.stdout + proc.stderr)
    return {"doc": json.loads(proc.stdout), "outputs": outputs, "topology": load_topology(state.config_path)}


def _package_size(state: SandboxState) -> int:
    out = run_ssh(state, "build1", "sh", "-c", "cat $HOME/src/out/manifest.json", as_root=False)
    packages = json.loads(out.stdout)["packages"]
    return sum(int(p["size"]) for p in packages.values())


def test_the_quorum_deploys_through_the_registry_and_every_node_is_healthy(
    installed: dict[str, Any], reg_sandbox: SandboxState
) -> None:
    doc = installed["doc"]
    results = by_server(doc)
    for node in NODES:
        details = results[node]["details"]
        assert results[node]["status"] == "ok", results[node]
        assert details["pulled"].get("quorum", 0) > 0, details  # pulled by the server itself
        assert details["packages_sent"] == [] and details["push"] == {}, details  # nothing from the builder
    artifacts = doc["artifacts"]
    assert artifacts["store"] == "registry" and artifacts["manifest_digest"].startswith("sha256:"), artifacts
    # the builder sent each package once (plus the package list and the manifest), not once per server
    size = _package_size(reg_sandbox)
    assert size <= artifacts["builder_bytes_sent"] < size + 4096, (size, artifacts)
    code, status = _flinger(reg_sandbox, "deploy", "status")
    assert code == 0, status
    for node, result in by_server(status).items():
        services = result["details"]["services"]
        assert [(s["name"], s["healthy"]) for s in services] == [("quorum", True)], (node, services)


def test_every_node_unseals_from_shares_it_got_with_packages_from_the_registry(installed: dict[str, Any]) -> None:
    assert quorum_states(installed["topology"], NODES, until="unsealed") == {n: "unsealed" for n in NODES}


def test_the_pull_credential_is_never_shown_nor_left_on_servers(
    installed: dict[str, Any], reg_sandbox: SandboxState
) -> None:
    password = _password(reg_sandbox)
    for text in installed["outputs"]:
        assert password not in text
    logs = installed["topology"].state_dir / "logs"
    for path in logs.rglob("*"):
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path
    dry = run_flinger("-c", str(reg_sandbox.config_path), "deploy", "install", "--dry-run", env=agent_env(reg_sandbox))
    assert dry.returncode == 0 and "pull" in dry.stdout and password not in dry.stdout + dry.stderr, dry.stdout
    for node in NODES:  # the install reads it from its plan: it is never written on the server
        found = run_ssh(reg_sandbox, node, "grep", "-rlF", password, "/opt/quorum", "/home/deploy/flinger-staging")
        assert found.returncode == 1 and found.stdout == "", (node, found.stdout, found.stderr)
        assert run_ssh(reg_sandbox, node, "test", "-e", "/opt/quorum/current/overlay/flinger").returncode != 0
        staged = run_ssh(reg_sandbox, node, "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/*/ 2>/dev/null")
        assert staged.stdout.strip() == "", (node, staged.stdout)  # no staged package or secret outlives the run
        events_log = run_ssh(reg_sandbox, node, "cat", "/opt/quorum/.flinger/events.log")
        assert password not in events_log.stdout


def test_a_second_install_publishes_nothing_and_pulls_nothing(
    installed: dict[str, Any], reg_sandbox: SandboxState
) -> None:
    code, doc = _flinger(reg_sandbox, "deploy", "install")
    assert code == 0, doc
    assert doc["artifacts"]["builder_bytes_sent"] == 0 and doc["artifacts"]["pushed"] == [], doc["artifacts"]
    for node, result in by_server(doc).items():
        assert result["details"]["changed"] is False and result["details"]["pulled"] == {}, (node, result)


def _quorum_blob(state: SandboxState) -> Path:
    out = run_ssh(state, "build1", "sh", "-c", "cat $HOME/src/out/manifest.json", as_root=False)
    digest = json.loads(out.stdout)["packages"]["quorum"]["sha256"]
    return sb.registry_files(state.directory).blob(f"sha256:{digest}")


def test_a_corrupt_blob_is_refused_and_nothing_is_half_installed(
    installed: dict[str, Any], reg_sandbox: SandboxState
) -> None:
    code, doc = _flinger(reg_sandbox, "deploy", "uninstall", "--servers", "node3")
    assert code == 0, doc
    blob = _quorum_blob(reg_sandbox)
    good = blob.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, one byte wrong: only the digest can tell
    blob.write_bytes(bytes(bad))
    try:
        code, doc = _flinger(reg_sandbox, "deploy", "install")
        results = by_server(doc)
        assert code == 1, doc
        node3 = results["node3"]
        assert node3["status"] == "failed" and node3["step"] == "pull", node3
        assert "refused" in node3["message"] and "quorum" in node3["message"], node3
        for node in ("node1", "node2"):  # they had it: untouched, no change
            assert results[node]["status"] == "ok" and results[node]["details"]["changed"] is False, results[node]
        # nothing of the release on node3, nothing staged, and the lock given up
        assert run_ssh(reg_sandbox, "node3", "test", "-e", "/opt/quorum/current").returncode != 0
        unpacked = run_ssh(reg_sandbox, "node3", "sh", "-c", "ls -A /opt/quorum/packages 2>/dev/null")
        assert unpacked.stdout.strip() == "", unpacked.stdout
        staged = run_ssh(reg_sandbox, "node3", "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/*/ 2>/dev/null")
        assert staged.stdout.strip() == "", staged.stdout
        assert run_ssh(reg_sandbox, "node3", "test", "-e", "/opt/quorum/.flinger/lock").returncode != 0
    finally:
        blob.write_bytes(good)
    code, doc = _flinger(reg_sandbox, "deploy", "install")  # a re-run finishes the job
    assert code == 0, doc
    assert by_server(doc)["node3"]["details"]["changed"] is True, doc


def test_a_registry_that_does_not_answer_fails_only_the_server_that_needs_a_package(
    installed: dict[str, Any], reg_sandbox: SandboxState, tmp_path: Path
) -> None:
    """An outage of the registry: servers that have every package still converge (a stopped
    service is started again); one that lacks a package fails at `publish`, changed nowhere."""
    url = installed["topology"].artifacts.url
    host = url.rsplit(":", 1)[0]
    config = derived_config(reg_sandbox, tmp_path, {"artifacts.url": f"{host}:5999"})  # nothing listens
    (tmp_path / ".flinger").symlink_to(reg_sandbox.config_path.parent / ".flinger")  # same overlay and CA
    code, doc = _flinger(reg_sandbox, "deploy", "uninstall", "--servers", "node3")
    assert code == 0, doc
    assert run_ssh(reg_sandbox, "node2", "sv", "down", "/etc/sv/quorum").returncode == 0
    before = {n: run_ssh(reg_sandbox, n, "readlink", "/opt/quorum/current").stdout for n in ("node1", "node2")}
    code, doc = _flinger(reg_sandbox, "deploy", "install", config=config)
    results = by_server(doc)
    assert code == 1, doc
    node3 = results["node3"]
    assert node3["status"] == "failed" and node3["step"] == "publish", node3
    assert "5999 unreachable" in node3["message"] and "quorum not installed here" in node3["message"], node3
    assert run_ssh(reg_sandbox, "node3", "test", "-e", "/opt/quorum/current").returncode != 0
    assert run_ssh(reg_sandbox, "node3", "test", "-e", "/opt/quorum/.flinger/lock").returncode != 0
    assert results["node1"]["status"] == "ok" and results["node1"]["details"]["changed"] is False, results["node1"]
    assert results["node2"]["status"] == "ok" and results["node2"]["details"]["started"] == ["quorum"], results
    assert {n: run_ssh(reg_sandbox, n, "readlink", "/opt/quorum/current").stdout for n in before} == before
    assert "5999 unreachable" in doc["artifacts"]["publish_error"], doc["artifacts"]
    code, doc = _flinger(reg_sandbox, "deploy", "install")  # the registry back: node3 finishes
    assert code == 0 and by_server(doc)["node3"]["details"]["changed"] is True, doc


def test_uninstall_through_the_registry_topology_leaves_the_servers_clean(
    installed: dict[str, Any], reg_sandbox: SandboxState
) -> None:
    code, doc = _flinger(reg_sandbox, "deploy", "uninstall")
    assert code == 0, doc
    for node in NODES:
        assert run_ssh(reg_sandbox, node, "test", "-e", "/opt/quorum").returncode != 0, node


def test_sandbox_status_names_the_registry_and_whether_it_answers(reg_sandbox: SandboxState) -> None:
    proc = run_sandbox_cli("status", "--dir", str(reg_sandbox.directory))
    assert proc.returncode == 0 and f"registry: {reg_sandbox.registry_url} up" in proc.stderr, proc.stderr
