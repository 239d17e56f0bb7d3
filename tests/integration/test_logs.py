"""`flinger logs` and `flinger exec` on the sandbox: the services' own logs through sudo, each
line naming its server; one Ctrl-C ends a follow (and a long exec) at once, exit 130, with
nothing left running on the servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from flinger_helpers import by_server, flinger_json, run_flinger

from flinger_sandbox import SandboxState

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")


def _left(pattern: str) -> list[str]:
    """Processes on this machine (the sandbox hosts share its process table) that match."""
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _interrupted(args: list[str], config: Any, wait_for: str) -> tuple[int, str]:
    """Start `flinger ARGS`, wait until `wait_for` is running on the hosts, send one SIGINT:
    (exit status, stderr); the command must end within a minute of it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(config), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 60
    while len(_left(wait_for)) < len(NODES) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    assert len(_left(wait_for)) >= len(NODES), _left(wait_for)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_logs_show_each_servers_service_log_through_sudo(installed_sandbox: SandboxState) -> None:
    code, doc = flinger_json(installed_sandbox.config_path, "logs", "quorum", "-n", "5")
    assert code == 0, doc
    results = by_server(doc)
    assert set(results) == set(NODES)
    for name, result in results.items():
        assert result["status"] == "ok", result
        assert result["details"]["stdout"].strip(), f"no log lines from {name}"
    refused = run_flinger("-c", str(installed_sandbox.config_path), "logs", "nosuch")
    assert refused.returncode == 2 and 'no chosen server runs service "nosuch" (services: quorum)' in refused.stderr


def test_one_ctrl_c_ends_a_follow_and_a_long_exec_on_every_server(installed_sandbox: SandboxState) -> None:
    config = installed_sandbox.config_path
    follow = "tail -n 2 -F /etc/sv/quorum/log/main/current"
    code, err = _interrupted(["logs", "quorum", "-n", "2", "-f"], config, follow)
    assert code == 130, err  # it ended (a follow never ends by itself): the Ctrl-C ended it
    time.sleep(1)
    assert _left(follow) == []
    code, err = _interrupted(["exec", "sleep 317"], config, "sleep 317")
    assert code == 130, err  # and did not wait for the command
    time.sleep(1)
    assert _left("sleep 317") == []


def test_verbose_shows_commands_paths_and_step_timings_and_no_secret(installed_sandbox: SandboxState) -> None:
    from flinger.topology import load_topology
    from tests.state_helpers import overlay_of

    config = installed_sandbox.config_path
    proc = run_flinger("-c", str(config), "-v", "deploy", "install", "--servers", "node1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = proc.stderr
    topology = load_topology(config)
    assert f"config: {config}" in said and f"state: {topology.state_dir}" in said
    assert "its logs in " in said and "[node1] remote tool: " in said
    commands = [line for line in said.splitlines() if line.startswith("[node1] $ ")]
    assert any("flinger-remote.pyz install" in line and "(stdin: " in line for line in commands), said
    assert "[node1] exit 0 after " in said
    assert "[node1] connecting: ssh " in said  # the ssh that opened the connection, options and all
    # whose first command told $HOME: no round trip of its own, and the paths use it
    assert not any("$HOME" in line for line in commands), commands
    assert any("/home/deploy/flinger-staging/flinger-remote.pyz" in line for line in commands), commands
    timings = [line for line in said.splitlines() if line.startswith("[node1] steps: ")]
    assert len(timings) == 1 and " s, " in timings[0], said
    # nothing secret of node1's: its overlay travels on stdin, never on a command line
    secrets = [v for k, v in overlay_of(topology, "node1").items() if k.endswith(("key.pem", "share.json"))]
    assert secrets, "node1's overlay has no key or share to look for"
    for value in secrets:
        for line in value.decode().splitlines():
            if len(line) >= 16 and "-----" not in line:
                assert line not in said + proc.stdout
    # without -v, none of it
    quiet = run_flinger("-c", str(config), "deploy", "install", "--servers", "node1")
    assert quiet.returncode == 0 and "[node1] $ " not in quiet.stderr and "steps: " not in quiet.stderr
