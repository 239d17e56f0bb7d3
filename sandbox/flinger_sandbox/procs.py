"""Processes the sandbox started, identified by pid *and* start time so a reused pid is never hit.

Everything here reads /proc (Linux only). A zombie counts as gone: it runs nothing, listens on
nothing, and its parent may be an init that never reaps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRef:
    """A process as recorded when started: its pid and its start time in clock ticks."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """The live process `pid` now, or None when there is none."""
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            return None
        return cls(pid, stat[1])

    def alive(self) -> bool:
        """True while this very process (not a later one with the same pid) runs."""
        _reap(self.pid)
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[1] == self.start

    def signal(self, signum: int) -> bool:
        """Send `signum` if the process is still this one; False when it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def mount_namespace(self) -> str | None:
        return mount_namespace(self.pid) if self.alive() else None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) from /proc/<pid>/stat, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def mount_namespace(pid: int) -> str | None:
    """The mount namespace of `pid`, e.g. "mnt:[4026532301]", or None."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_in_namespace(namespace: str) -> list[ProcessRef]:
    """Every live process whose mount namespace is `namespace`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid() or mount_namespace(pid) != namespace:
            continue
        ref = ProcessRef.of(pid)
        if ref is not None:
            found.append(ref)
    return found


def wait_gone(processes: Iterable[ProcessRef], timeout: float) -> list[ProcessRef]:
    """Wait up to `timeout` seconds for all `processes` to end; return those still alive."""
    pending = list(processes)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if p.alive()]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def terminate(processes: Iterable[ProcessRef], signum: int = signal.SIGTERM, timeout: float = 5.0) -> list[ProcessRef]:
    """Send `signum`, wait, then SIGKILL what is left; return what survived even that."""
    targets = [p for p in processes if p.signal(signum)]
    survivors = wait_gone(targets, timeout)
    for p in survivors:
        p.signal(signal.SIGKILL)
    return wait_gone(survivors, timeout)


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one of the sandbox's long-lived processes: no stdin, its output appended to
    `log`, no inherited descriptors, and a session of its own, so a Ctrl-C aimed at the
    caller does not take it down."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )  # fmt: skip


def discard(proc: subprocess.Popen[bytes]) -> None:
    """Kill (and reap) a process `spawn` started that did not come up as it should."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
