"""Shared fixtures of the integration tests: the local sandbox (real sshd, runit, ssh-agent).

The session-wide `sandbox` is a 4-host sandbox (build1, node1..node3) in a temporary directory,
with SSH_AUTH_SOCK pointing at its agent for the whole session. Without root or the tools the
integration tests are skipped, except when CI is set: there they fail, so CI never goes green
by skipping. OpenSSH runs with `-F /dev/null` and deploy.toml says use_ssh_config = false, so
the developer's own ~/.ssh/config stays out of the tests.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flinger_sandbox import SandboxState, down, missing_tools, up
from flinger_sandbox.paths import LOGIN_USER
from flinger_sandbox.rootfs import missing_tools as rootfs_missing_tools

SshRun = Callable[..., "subprocess.CompletedProcess[str]"]


def _unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the sandbox needs root (it mounts private /etc, /root, /opt, ... per host)"
    missing = missing_tools()
    if missing:
        return f"the sandbox needs Debian packages: apt-get install {' '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def sandbox_prerequisites() -> None:
    """Skip (or, with CI set, fail) when the sandbox cannot run on this machine."""
    reason = _unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so integration tests must not be skipped")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _integration_needs_sandbox(sandbox_prerequisites: None) -> None:
    """Applies the prerequisite check to every integration test."""


@pytest.fixture(scope="session")
def sandbox(sandbox_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """A running 4-host sandbox for the session; brought down at the end, also on failure."""
    directory = tmp_path_factory.mktemp("sandbox")
    state = up(directory, 4)
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("SSH_AUTH_SOCK", str(state.agent_socket))
        yield state
    finally:
        patch.undo()
        down(directory)


@pytest.fixture(scope="session")
def systemd_sandbox(sandbox_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """A 4-host sandbox whose hosts boot systemd (systemd-nspawn on the cached Debian rootfs).

    Its agent is not the session's SSH_AUTH_SOCK: pass `agent_env(state)` to the CLI."""
    missing = rootfs_missing_tools()
    if missing:
        reason = f"systemd hosts need Debian packages: apt-get install {' '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so integration tests must not be skipped")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("systemd")
    state = up(directory, 4, init="systemd")
    try:
        yield state
    finally:
        down(directory)


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


@pytest.fixture
def ssh_run() -> SshRun:
    """`ssh_run(state, "node1", "cat", "/opt/x")` -> CompletedProcess (see run_ssh)."""
    return run_ssh
