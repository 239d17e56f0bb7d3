"""The sandbox's own ssh-agent, holding the client key every host trusts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from flinger.errors import FlingerError
from flinger_sandbox.paths import SandboxPaths
from flinger_sandbox.procs import ProcessRef, discard, spawn

START_TIMEOUT = 10.0
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def start(paths: SandboxPaths) -> ProcessRef:
    """Start `ssh-agent -D -a <dir>/agent.sock` and load the client key into it."""
    socket_path = paths.agent_socket
    if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
        raise FlingerError(
            f"the sandbox directory path is too long for a unix socket ({socket_path}): use a shorter one"
        )
    socket_path.unlink(missing_ok=True)
    proc = spawn(["ssh-agent", "-D", "-a", str(socket_path)], paths.agent_log, {"PATH": "/usr/bin:/bin"})
    agent = ProcessRef.of(proc.pid)
    deadline = time.monotonic() + START_TIMEOUT
    while not socket_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if agent is None or not socket_path.exists():
        discard(proc)
        raise FlingerError(f"ssh-agent did not start (log: {paths.agent_log})")
    try:
        add_key(socket_path, paths.client_key)
    except FlingerError:
        proc.terminate()
        proc.wait()
        raise
    return agent


def add_key(socket_path: Path, key: Path) -> None:
    result = subprocess.run(
        ["ssh-add", "-q", str(key)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SSH_AUTH_SOCK": str(socket_path)},
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlingerError(f"ssh-add could not load {key} into the sandbox agent: {detail}")
