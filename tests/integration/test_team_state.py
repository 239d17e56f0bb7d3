"""A team's deployment on the sandbox: alice (an SSH key) deploys with the state sealed to
her and bob (an age key); nothing the servers hold is in clear anywhere in her project
directory; bob deploys from a copy of that directory and nothing changes on the servers;
mallory's key gets exit 2 and changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from flinger_helpers import by_server, derived_config, flinger_json, run_flinger, why

from flinger_sandbox import SandboxState
from tests.unit.test_sealed_state import age_key, ssh_key

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")


def _held(sandbox: SandboxState, ssh_run: Any, node: str) -> list[str]:
    """The secret values a server holds in its overlay: its share, TLS key and secrets."""
    overlay = "/opt/quorum/current/overlay"
    share = json.loads(ssh_run(sandbox, node, "sudo", "-n", "cat", f"{overlay}/share.json").stdout)["share"]
    key = ssh_run(sandbox, node, "sudo", "-n", "cat", f"{overlay}/tls/key.pem").stdout.splitlines()[1]
    listed = ssh_run(sandbox, node, "sudo", "-n", "find", f"{overlay}/secrets", "-type", "f").stdout.split()
    values = [ssh_run(sandbox, node, "sudo", "-n", "cat", path).stdout.strip() for path in listed]
    return [share, key, *values]


def test_a_team_deploys_one_sealed_state_and_a_stranger_cannot(
    sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    alice_pub = ssh_key(keys / "alice", "alice@laptop")
    bob_pub = age_key(keys / "bob.txt")
    ssh_key(keys / "mallory", "mallory@elsewhere")
    alice_dir = tmp_path / "alice"
    alice_dir.mkdir()
    config = derived_config(sandbox, alice_dir, {"state": {"recipients": [alice_pub, bob_pub]}})
    as_alice = {"FLINGER_IDENTITY": str(keys / "alice")}
    for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):
        proc = run_flinger("-c", str(config), *step, env=as_alice)
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
    code, doc = flinger_json(config, "deploy", "install", env=as_alice)
    assert code == 0, why(doc)

    held = [value for node in NODES for value in _held(sandbox, ssh_run, node)]
    assert len(held) >= 3 * 2 and all(len(v) >= 16 for v in held)  # at least each share and TLS key
    for path in alice_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("latin-1")
            assert not any(value in text for value in held), f"a value a server holds is in clear in {path}"

    bob_dir = tmp_path / "bob"
    shutil.copytree(alice_dir, bob_dir, ignore=shutil.ignore_patterns("logs", "tool", "releases"))
    code, doc = flinger_json(
        bob_dir / "deploy.toml", "deploy", "install", env={"FLINGER_IDENTITY": str(keys / "bob.txt")}
    )
    assert code == 0, why(doc)
    assert all(r["details"]["changed"] is False for r in by_server(doc).values()), why(doc)

    release = {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES}
    state = bob_dir / ".flinger" / "sandbox"
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file() and "logs" not in p.parts}
    for args in (["overlay"], ["deploy", "install"]):
        proc = run_flinger("-c", str(bob_dir / "deploy.toml"), *args, env={"FLINGER_IDENTITY": str(keys / "mallory")})
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "alice@laptop (SHA256:" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file() and "logs" not in p.parts} == before
    assert {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES} == release
