"""The whole workflow on systemd hosts (systemd as PID 1, journald), logged in as `deploy` with
`sudo -n`: units, daemon-reload, is-active, the journal in failure reports, rollback, uninstall."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from flinger_helpers import agent_env, by_server, derived_config, flinger_json, run_flinger, run_ssh

from flinger_sandbox import SandboxState
from tests.remote_helpers import eventually

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
MARKER = "MARKER-7f3a: the config is unreadable"


def wait_active(state: SandboxState, host: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while True:
        out = run_ssh(state, host, "systemctl", "is-active", "quorum.service", as_root=False).stdout.strip()
        if out == "active" or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


@pytest.fixture(scope="module")
def installed(systemd_sandbox: SandboxState) -> dict[str, Any]:
    state = systemd_sandbox
    config = state.config_path
    for step in (["check"], ["trust"], ["sync"], ["install-prereqs"], ["build", "package"], ["overlay"]):
        proc = run_flinger("-c", str(config), *step, env=agent_env(state))
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
    code, doc = flinger_json(config, "deploy", "install", env=agent_env(state))
    assert code == 0, json.dumps(doc, indent=1)
    return doc


def test_install_makes_enabled_active_units_logging_to_the_journal(
    systemd_sandbox: SandboxState, installed: dict[str, Any]
) -> None:
    state = systemd_sandbox
    assert {s["status"] for s in installed["servers"]} == {"ok"}
    for name in NODES:
        assert run_ssh(state, name, "cat", "/proc/1/comm").stdout.strip() == "systemd"
        assert wait_active(state, name) == "active"
        enabled = run_ssh(state, name, "systemctl", "is-enabled", "quorum.service", as_root=False)
        assert enabled.stdout.strip() == "enabled"
        unit = run_ssh(state, name, "systemctl", "cat", "quorum.service", as_root=False).stdout
        assert "/etc/systemd/system/quorum.service" in unit and "Restart=always" in unit
        # The deploy user sees no journal without sudo on stock Debian; flinger reads it as root.
        journal = run_ssh(state, name, "journalctl", "--unit", "quorum.service", "--no-pager")
        assert "quorum[" in journal.stdout, journal.stdout[-2000:]
    code, status = flinger_json(state.config_path, "deploy", "status", env=agent_env(state))
    assert code == 0, status
    for name, result in by_server(status).items():
        services = result["details"]["services"]
        assert [(s["name"], s["state"], s["healthy"]) for s in services] == [("quorum", "active", True)], name


def test_a_crashing_release_shows_the_last_lines_of_its_journal_and_rolls_back(
    systemd_sandbox: SandboxState, installed: dict[str, Any], tmp_path: Path
) -> None:
    state = systemd_sandbox
    before = {n: run_ssh(state, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES}
    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    start = manifest[manifest.index('command = "/usr/bin/python3 {{ install_dir }}') :].split("\n", 1)[0]
    # The cause comes last, after 60 lines of noise: the report must show the journal's tail.
    crash = f"[print('noise line', i, flush=True) for i in range(60)]; raise SystemExit('{MARKER}')"
    broken = manifest.replace(start, f'command = "/usr/bin/python3 -c \\"{crash}\\""')
    broken = broken.replace("timeout = 30 ", "timeout = 4 ")
    assert broken != manifest
    (tmp_path / "manifest.toml").write_text(broken)
    config = derived_config(state, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(state.config_path.parent / ".flinger")  # same overlay and CA

    proc = run_flinger("-c", str(config), "deploy", "install", env=agent_env(state))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert MARKER in proc.stdout + proc.stderr  # the service's own words, from the journal
    code, doc = flinger_json(config, "deploy", "install", "--servers", "node3", env=agent_env(state))
    assert code == 1
    node3 = by_server(doc)["node3"]
    assert node3["step"] == "health:quorum", node3
    shown = node3["details"]["service_log"]["lines"]
    assert any(MARKER in line for line in shown), shown
    assert not any("noise line 0" in line for line in shown), shown  # the window's tail, not its head
    release = before["node3"].rsplit("/", 1)[-1]  # current -> releases/<id>
    assert node3["details"]["rolled_back_to"] == release
    assert f"rolled back to {release}, healthy" in node3["message"]  # checked again after the rollback
    assert node3["details"]["restored_health"]["quorum"]["healthy"] is True
    log_dir = state.config_path.parent / ".flinger" / "sandbox" / "logs"
    assert any(MARKER in p.read_text() for p in log_dir.glob("*/node3.log"))
    for name in NODES:
        assert run_ssh(state, name, "readlink", "/opt/quorum/current").stdout.strip() == before[name]
        assert wait_active(state, name) == "active", name
        unit = run_ssh(state, name, "systemctl", "cat", "quorum.service", as_root=False).stdout
        assert MARKER not in unit and "quorum.py" in unit


def _fleet_release(state: SandboxState, node: str) -> str:
    receipt = json.loads(run_ssh(state, node, "cat", "/opt/quorum/.flinger/state.json").stdout)
    link = run_ssh(state, node, "readlink", "/opt/quorum/current").stdout.strip()
    assert link == f"releases/{receipt['release']}", (node, link, receipt["release"])
    return str(receipt["fleet_release"])


def test_on_systemd_skew_fails_status_an_unconfirmed_switch_goes_back_and_rollback_takes_the_fleet_as_one(
    systemd_sandbox: SandboxState, installed: dict[str, Any], tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    state, env = systemd_sandbox, agent_env(systemd_sandbox)
    code, doc = flinger_json(state.config_path, "deploy", "install", env=env)  # release A, on every node
    assert code == 0 and doc["release_state"] == "completed", doc
    first = doc["fleet_release"]
    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    (tmp_path / "manifest.toml").write_text(manifest.replace("timeout = 30 ", "timeout = 35 "))  # release B
    config = derived_config(state, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(state.config_path.parent / ".flinger")
    code, doc = flinger_json(config, "deploy", "install", "--servers", "node1", env=env)
    assert code == 0 and doc["release_state"] == "partial", doc
    second = doc["fleet_release"]
    code, status = flinger_json(state.config_path, "deploy", "status", env=env)
    assert code == 1 and status["fleet"]["running"] == {"node1": second, "node2": first, "node3": first}, status

    # The client dies while node2 switches to B: its watcher (the SSH session is gone with
    # the client) switches it back to A once no confirmation came within 5 s.
    logs = state.config_path.parent / ".flinger" / "sandbox" / "logs"
    before = set(logs.iterdir())
    argv = [sys.executable, "-m", "flinger", "-c", str(config), "--json", "deploy", "install", "--servers", "node2",
            "--confirm-timeout", "5"]  # fmt: skip
    client = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    switching = False
    deadline = time.monotonic() + 120
    while not switching and time.monotonic() < deadline and client.poll() is None:
        logged = [d / "node2.log" for d in logs.iterdir() if d not in before and (d / "node2.log").exists()]
        switching = any("step: install: service" in p.read_text() for p in logged)
        time.sleep(0.01)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=30)
    assert switching, "the run ended before node2 switched"
    record = "/opt/quorum/.flinger/self-rollback.json"
    assert eventually(lambda: run_ssh(state, "node2", "test", "-e", record).returncode == 0)
    assert _fleet_release(state, "node2") == first
    assert wait_active(state, "node2") == "active"
    code, status = flinger_json(state.config_path, "deploy", "status", env=env)
    back = by_server(status)["node2"]["details"]["self_rollback"]
    assert back["ok"] is True and back["reason"] == "no confirmation within 5 s of the switch", back

    # A plain rollback: the fleet's last completed release before B, on every node, as one.
    code, doc = flinger_json(state.config_path, "deploy", "rollback", env=env)
    assert code == 0 and doc["fleet_release"] == first, doc
    assert {n: _fleet_release(state, n) for n in NODES} == dict.fromkeys(NODES, first)
    code, status = flinger_json(state.config_path, "deploy", "status", env=env)
    assert code == 0, status
    for name in NODES:
        assert wait_active(state, name) == "active", name


def test_uninstall_leaves_no_unit_no_receipt_and_nothing_in_install_dir(
    systemd_sandbox: SandboxState, installed: dict[str, Any]
) -> None:
    state = systemd_sandbox
    code, doc = flinger_json(state.config_path, "deploy", "uninstall", env=agent_env(state))
    assert code == 0, doc
    for name in NODES:
        assert run_ssh(state, name, "test", "-e", "/etc/systemd/system/quorum.service").returncode == 1
        gone = run_ssh(state, name, "systemctl", "cat", "quorum.service", as_root=False)
        assert gone.returncode != 0
        left = run_ssh(state, name, "sh", "-c", "find /opt/quorum -mindepth 1 2>/dev/null; true")
        assert left.stdout.strip() == "", left.stdout
        addr = state.hosts[name][0]  # this host's own: the hosts share the machine's network (a demo may run)
        listening = run_ssh(state, name, "sh", "-c", f"ss -ltn | grep -cF ' {addr}:8443 ' || true")
        assert listening.stdout.strip() == "0"
