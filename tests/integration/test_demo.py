"""The README's demo flow end to end on its own sandbox: every node unseals; uninstall leaves nothing."""

from __future__ import annotations

import json

import pytest
from flinger_helpers import run_flinger, run_sandbox_cli, run_ssh

import flinger_sandbox as sb
from flinger_sandbox.net import is_listening

pytestmark = pytest.mark.integration


def test_demo_then_uninstall(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("demo")
    try:
        proc = run_sandbox_cli("demo", "--dir", str(directory))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        for step in (
            "check",
            "trust",
            "exec",
            "sync",
            "install-prereqs",
            "build package",
            "overlay",
            "deploy install",
            "deploy status",
        ):
            assert f"{step}" in out, step
        assert "demo complete: 3 quorum nodes unsealed" in out
        state = sb.state_of(directory)
        nodes = {n: e for n, e in state.hosts.items() if n != "build1"}
        assert all(is_listening(e.addr, 8443) for e in nodes.values())

        env = {"SSH_AUTH_SOCK": str(state.agent_socket)}
        gone = run_flinger("-c", str(state.config_path), "--json", "deploy", "uninstall", env=env)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert {s["status"] for s in json.loads(gone.stdout)["servers"]} == {"ok"}
        for name, endpoint in nodes.items():
            assert not is_listening(endpoint.addr, 8443), name
            left = run_ssh(state, name, "sh", "-c", "find /opt /etc/sv /etc/service/ -mindepth 1")
            assert left.returncode == 0 and left.stdout.strip() == "", f"{name} still has: {left.stdout}"
    finally:
        sb.down(directory)


def test_uninstall_where_nothing_is_installed_succeeds(sandbox: sb.SandboxState) -> None:
    """`deploy uninstall` on servers where nothing is installed is a no-op that succeeds."""
    proc = run_flinger("-c", str(sandbox.config_path), "--json", "deploy", "uninstall", "--servers", "node1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
