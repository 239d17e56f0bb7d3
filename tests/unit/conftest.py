"""Unit tests run in this process alone: starting a process (a subprocess, a fork, a shell)
fails the test. What needs another process is a local test (tests/local); what needs sshd,
a registry, runit or root is an integration test (tests/integration)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest


class StartedAProcess(AssertionError):
    """A unit test started a process."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise StartedAProcess(f"unit tests start no processes (asked for {args[:2]!r}); move it to tests/local")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "spawnv"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse)
