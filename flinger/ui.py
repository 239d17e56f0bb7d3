"""Everything the operator sees: messages, the live per-server view, summary tables, JSON.

The only module that imports rich. Human text goes to stderr except results and command
output, which go to stdout; with --json, stdout carries nothing but one JSON document.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flinger.engine.results import ServerResult, Status
from flinger.progress import Event, Finished, Info, Output, Started, Step

STATE_STYLE = {
    "waiting": "dim",
    "running": "cyan",
    "ok": "green",
    "failed": "bold red",
    "unreachable": "bold magenta",
    "skipped": "yellow",
    "interrupted": "yellow",
    "rolled back": "bold yellow",
    "not switched": "yellow",
}


@dataclass
class Row:
    """One row of the live board: a server (or a package in a build)."""

    state: str = "waiting"
    step: str = ""
    info: str = ""
    start: float | None = None
    end: float | None = None


class LiveBoard:
    """A live table of servers: state, current step, elapsed time and a short info field."""

    def __init__(self, ui: UI, names: Sequence[str], title: str) -> None:
        self.ui = ui
        self.title = title
        self.rows: dict[str, Row] = {n: Row() for n in names}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def _render(self) -> Table:
        table = Table(title=self.title, title_justify="left", expand=False)
        for col in ("server", "state", "step", "elapsed", ""):
            table.add_column(col)
        now = time.monotonic()
        for name, row in self.rows.items():
            start, end = row.start, row.end
            elapsed = "" if start is None else f"{(end or now) - start:5.1f}s"
            table.add_row(
                escape(name),
                Text(row.state, style=STATE_STYLE.get(row.state, "")),
                escape(row.step),
                elapsed,
                escape(row.info),
            )
        return table

    def __call__(self, event: Event) -> None:
        """The board is a sink of the run's events (progress.py)."""
        if isinstance(event, Output):
            self.line(event.name, event.text)
            return
        with self._lock:
            row = self.rows.setdefault(event.name, Row())
            state: str | None = None
            if isinstance(event, Started):
                state = row.state = "running"
                if row.start is None:
                    row.start = event.at
            elif isinstance(event, Finished):
                state = row.state = event.state
                row.end = event.at
            elif isinstance(event, Step):
                row.step = event.step
                if self._live is None and self.ui.verbose and not self.ui.json_mode:
                    since = "" if row.start is None else f" (at {event.at - row.start:.2f} s)"
                    self.ui.debug(f"[{event.name}] step: {event.step}{since}")
            elif isinstance(event, Info):
                row.info = event.text
            if self._live is not None:
                self._live.update(self._render())
            elif state is not None and self.ui.verbose and not self.ui.json_mode:
                self.ui.note(f"{event.name}: {state}")

    def line(self, server: str, text: str) -> None:
        if self.ui.json_mode:
            return
        message = Text.assemble((f"[{server}] ", "bold"), text)
        with self._lock:
            if self._live is not None and self.ui.out_is_err_terminal:
                self._live.console.print(message, highlight=False, soft_wrap=True)
            else:
                self.ui.out.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def running(self) -> Iterator[LiveBoard]:
        if self.ui.live_enabled:
            with Live(self._render(), console=self.ui.err, refresh_per_second=4, transient=True) as live:
                self._live = live
                try:
                    yield self
                finally:
                    self._live = None
        else:
            yield self


_UNWRAPPED = 100_000  # columns of a console that is no terminal: a line is as long as it is


def _console(file: TextIO) -> Console:
    """A console for `file`; without a terminal (a pipe, a file, CI) nothing is wrapped, so a
    fingerprint, a release id or a URL is never cut in two (a table is as wide as its cells)."""
    console = Console(file=file, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file, highlight=False, soft_wrap=True, width=_UNWRAPPED)
    return console


class _Trace(logging.Handler):
    """Records of flinger's loggers (what -v traces: commands, paths) as the UI's debug lines."""

    def __init__(self, ui: UI) -> None:
        super().__init__(logging.DEBUG)
        self.ui = ui

    def emit(self, record: logging.LogRecord) -> None:
        self.ui.debug(record.getMessage())


class UI:
    def __init__(
        self,
        *,
        json_mode: bool = False,
        verbose: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        self.out = _console(stdout or sys.stdout)
        self.err = _console(stderr or sys.stderr)

    def trace(self) -> None:
        """With -v, show what flinger's loggers trace (each SSH command, rsync, the paths in
        use) on this UI; without, nothing (a previous command's tracing ends)."""
        root = logging.getLogger("flinger")
        for handler in [h for h in root.handlers if isinstance(h, _Trace)]:
            root.removeHandler(handler)
        if self.verbose:
            root.addHandler(_Trace(self))
        root.setLevel(logging.DEBUG if self.verbose else logging.NOTSET)

    @property
    def live_enabled(self) -> bool:
        return self.err.is_terminal and not self.json_mode

    @property
    def out_is_err_terminal(self) -> bool:
        return self.out.is_terminal and self.err.is_terminal

    def note(self, message: str) -> None:
        self.err.print(escape(message))

    def debug(self, message: str) -> None:
        if self.verbose:
            self.err.print(Text(message, style="dim"))

    def warn(self, message: str) -> None:
        self.err.print(Text.assemble(("warning: ", "bold yellow"), message))

    def error(self, message: str) -> None:
        self.err.print(Text.assemble(("error: ", "bold red"), message))

    def success(self, message: str) -> None:
        if not self.json_mode:
            self.out.print(Text(message, style="green"))

    def board(self, names: Sequence[str], title: str) -> LiveBoard:
        return LiveBoard(self, names, title)

    def emit_json(self, document: Any) -> None:
        self.out.file.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
        self.out.file.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.json_mode:
            return
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(escape(str(c)) for c in row))
        self.out.print(table)

    def summary(self, title: str, results: Sequence[ServerResult]) -> None:
        """A table naming every server and what happened to it (and why, if it failed)."""
        if self.json_mode:
            return
        table = Table(title=title, title_justify="left")
        for col in ("server", "result", "step", "exit", "time"):
            table.add_column(col, no_wrap=True)
        table.add_column("detail", overflow="fold")
        for r in results:
            detail = r.message or ""
            if r.status is Status.OK and r.details.get("summary"):
                detail = str(r.details["summary"])
            table.add_row(
                escape(r.server),
                Text(r.status.value, style=STATE_STYLE.get(r.status.value, "")),
                escape(r.step or ""),
                "" if r.exit_code is None else str(r.exit_code),
                f"{r.duration:.1f}s",
                escape(detail),
            )
        self.out.print(table)
        for r in results:
            if r.status is not Status.OK and r.message:
                # The whole message on one line of its own: a table cell would cut or wrap it.
                message = r.message.removeprefix(f"{r.server}: ")  # most already name the server
                self.out.print(Text.assemble((f"{r.server}: ", "bold"), message), soft_wrap=True)
        for r in results:
            said = [line for line in r.tail[-10:] if line.strip()]
            if r.status is Status.FAILED and said:  # no header over nothing
                self.out.print(Text(f"last lines from {r.server}:", style="bold"))
                for line in said:
                    self.out.print(Text.assemble((f"  [{r.server}] ", "dim"), line), highlight=False)
        for r in results if self.verbose else ():
            if r.steps:  # -v: where each server's time went, step by step
                spent = ", ".join(f"{s['step']} {float(str(s['seconds'])):.2f} s" for s in r.steps)
                self.debug(f"[{r.server}] steps: {spent}")
