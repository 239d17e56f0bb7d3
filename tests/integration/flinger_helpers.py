"""Helpers of the integration tests: run the real CLI, derive a deploy.toml from the sandbox's,
ask the quorum nodes for their /status."""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from flinger_sandbox import SandboxState
from flinger_sandbox.paths import LOGIN_USER


def run_flinger(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `flinger` CLI in a subprocess (real exit status, real output)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "flinger", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def run_sandbox_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real `flinger-sandbox` CLI (the test bed's own distribution) in a subprocess."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "flinger_sandbox", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=dict(os.environ),
    )  # fmt: skip


def flinger_json(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run `flinger -c CONFIG --json ARGS`: (exit status, the JSON report)."""
    import json

    proc = run_flinger("-c", str(config), "--json", *args, env=env)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def by_server(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A --json report's per-server results by server name."""
    return {s["server"]: s for s in doc["servers"]}


def why(doc: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    """What an assertion on a --json report shows: each server's status, step and message."""
    return [(s["server"], s["status"], s.get("step"), s.get("message")) for s in doc.get("servers", [])]


def derived_config(state: SandboxState, directory: Path, edits: dict[str, object]) -> Path:
    """A copy of the sandbox's deploy.toml with dotted-key edits (e.g. {"builder.source_dir": "/root/x"}),
    written as DIR/deploy.toml so its client state (.flinger/) stays in DIR."""
    import tomlkit

    doc = tomlkit.parse(state.config_path.read_text())
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        table = doc
        for part in parents:
            table = table[part]  # type: ignore[assignment]
        table[last] = value  # type: ignore[index]
    path = directory / "deploy.toml"
    path.write_text(tomlkit.dumps(doc))
    return path


def fetch_cert(addr: str, port: int, ca: Path) -> tuple[x509.Certificate, dict[str, Any]]:
    """The node's TLS certificate and its /status answer (the CA checks the chain; a caller
    checks the SAN against the node's own address)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with socket.create_connection((addr, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return x509.load_der_x509_certificate(der), body


def quorum_states(topology: Any, nodes: tuple[str, ...], *, until: str, timeout: float = 60) -> dict[str, str]:
    """Each quorum node's /status `state` (over TLS, verified with the deployment CA), asked
    again every 0.5 s until all say `until` or `timeout` seconds have passed."""
    import time

    ca_path = topology.state_dir / "ca" / "ca.pem"
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {n: fetch_cert(topology.servers[n].addr, 8443, ca_path)[1]["state"] for n in nodes}
        if set(states.values()) == {until}:
            break
        time.sleep(0.5)
    return states


SshRun = Callable[..., "subprocess.CompletedProcess[str]"]


def agent_env(state: SandboxState) -> dict[str, str]:
    """The environment the CLI needs for that sandbox's agent."""
    return {"SSH_AUTH_SOCK": str(state.agent_socket)}


def run_ssh(
    state: SandboxState,
    host: str,
    *command: str,
    forward_agent: bool = False,
    known_hosts: Path | None = None,
    timeout: float = 120,
    as_root: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `command` on a sandbox host with OpenSSH (strict host keys, the agent), logged in as
    the non-root login user, through `sudo -n` unless `as_root` is False, as an operator would."""
    addr, port = state.hosts[host]
    argv = [
        "ssh", "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts or state.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=no",
        "-o", "ConnectTimeout=5",
        "-p", str(port),
    ]  # fmt: skip
    if forward_agent:
        argv.append("-A")
    line = shlex.join(command)
    if as_root:
        line = "sudo -n -- " + line
    argv += [f"{LOGIN_USER}@{addr}", line]
    env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def deploy_everything(state: SandboxState) -> dict[str, Any]:
    """trust, sync, build package, overlay and deploy install of the sandbox's deploy.toml,
    each asserted to succeed; the install's --json report."""
    import json

    for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):
        proc = run_flinger("-c", str(state.config_path), *step)
        assert proc.returncode == 0, f"{step}: {proc.stdout}\n{proc.stderr}"
    code, doc = flinger_json(state.config_path, "deploy", "install")
    assert code == 0, json.dumps(doc, indent=1)
    return doc
