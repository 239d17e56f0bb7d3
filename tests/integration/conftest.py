"""Shared fixtures of the integration tests: the local sandbox (real sshd, runit, ssh-agent).

The session-wide `sandbox` is a 4-host sandbox (build1, node1..node3) in a temporary directory,
with SSH_AUTH_SOCK pointing at its agent for the whole session. Without root or the tools the
integration tests are skipped, except when CI is set: there they fail, so CI never goes green
by skipping. OpenSSH runs with `-F /dev/null` and deploy.toml says use_ssh_config = false, so
the developer's own ~/.ssh/config stays out of the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flinger_helpers import SshRun, deploy_everything, run_flinger, run_ssh

from flinger_sandbox import SandboxState, down, missing_tools, up
from flinger_sandbox.rootfs import missing_tools as rootfs_missing_tools


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


@pytest.fixture
def ssh_run() -> SshRun:
    """`ssh_run(state, "node1", "cat", "/opt/x")` -> CompletedProcess (see run_ssh)."""
    return run_ssh


@pytest.fixture(scope="module")
def installed_sandbox(sandbox: SandboxState) -> Iterator[SandboxState]:
    """The session sandbox with the quorum system deployed (trust, sync, build, overlay,
    install) for one module, and uninstalled after it: the next module finds it as it was."""
    deploy_everything(sandbox)
    yield sandbox
    done = run_flinger("-c", str(sandbox.config_path), "deploy", "uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
