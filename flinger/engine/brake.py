"""The brake: what one Ctrl-C (SIGINT) or SIGTERM does to a command that works on servers.

While a command's work runs (`Brake.held`), the first of those signals pulls the brake and
nothing else: no server starts from then on, no batch, no canary wait goes on; servers
already at work finish their step on the server (an install, or the rollback of a failed
one: a server is never left half-switched), then the summary names every server's state and
the command exits 130. A later signal only says the command is already stopping. Code that
runs no work of servers gets Python's default: KeyboardInterrupt, exit 130.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Brake:
    def __init__(self) -> None:
        self._pulled = threading.Event()
        self.by: str | None = None  # the signal that pulled it
        self._held = 0
        self._before: dict[int, Any] = {}

    @property
    def pulled(self) -> bool:
        return self._pulled.is_set()

    @property
    def event(self) -> threading.Event:
        """Set once the brake is pulled: what a command that can stop at once watches (exec, logs)."""
        return self._pulled

    def pull(self, why: str) -> None:
        if not self._pulled.is_set():
            self.by = why
            self._pulled.set()

    def wait(self, seconds: float) -> bool:
        """Sleep `seconds`; False as soon as the brake is pulled (then at once)."""
        return not self._pulled.wait(seconds)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.pulled:
            sys.stderr.write(f"flinger: {name}: already stopping; the servers at work finish their step\n")
            return
        self.pull(name)
        sys.stderr.write(
            f"flinger: {name}: stopping: no server or batch starts now; the servers at work finish their step "
            "(a further signal changes nothing)\n"
        )

    @contextmanager
    def held(self) -> Iterator[Brake]:
        """SIGINT and SIGTERM pull the brake while this is held (from the main thread; held
        again inside, nothing more is done)."""
        install = self._held == 0 and threading.current_thread() is threading.main_thread()
        self._held += 1
        if install:
            for signum in SIGNALS:
                self._before[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            self._held -= 1
            if install:
                for number, handler in self._before.items():
                    signal.signal(number, handler)
                self._before.clear()
