"""The remote tool's output: progress events as they happen, then the result.

Every command writes JSON lines to stdout (flinger/protocol/messages.py): `step`, `note`,
`line`, `started` and `finished` events, then one result; human text goes to stderr. Builds
run packages in threads, so writes are serialised by a lock to keep lines whole.

A command that changes a server must not die because its client went away (Ctrl-C, a cut
network, a killed flinger): that would leave it half-switched. `survive_lost_client(log)`
ignores SIGHUP and SIGPIPE's consequences: once stdout or stderr cannot be written, every
later line goes to `log` instead, and the command runs on to its end (install or rollback).
"""

import os
import signal
import sys
import threading
from typing import Any, Callable, List, Optional

from flinger.protocol.messages import Event, event_line, result_line
from flinger.protocol.results import Outcome

_write_lock = threading.Lock()
_fallback: Optional[str] = None  # where lines go once the client is gone
_client_gone = False


class PlanError(Exception):
    """The plan given to a command cannot be carried out as it is (a one-line message)."""


def survive_lost_client(log_path: str) -> None:
    """Keep running when the client disconnects; lines go to `log_path` from then on."""
    global _fallback
    _fallback = log_path
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def client_gone() -> None:
    """The client is known gone (its end of stdin closed): every later line goes to the
    log of `survive_lost_client`, whether or not stdout still takes it."""
    global _client_gone
    if _fallback is not None:
        _client_gone = True


def _write(stream: Any, line: str) -> None:
    """One line to `stream`, or to the fallback log once the client is gone."""
    global _client_gone
    if not _client_gone:
        try:
            stream.write(line + "\n")
            stream.flush()
            return
        except (OSError, ValueError):  # BrokenPipeError, EIO, or a closed file
            if _fallback is None:
                raise
            _client_gone = True
    try:
        os.makedirs(os.path.dirname(_fallback or ".") or ".", exist_ok=True)
        with open(str(_fallback), "a") as log:
            log.write(line + "\n")
    except OSError:
        pass  # nowhere left to write: the work itself goes on


def emit(kind: str, text: str = "", subject: Optional[str] = None) -> None:
    """Write one progress event (see flinger/protocol/messages.py) as a JSON line."""
    line = event_line(Event(kind, text, subject))
    with _write_lock:
        _write(sys.stdout, line)


def step(name: str, subject: Optional[str] = None) -> None:
    """The host (or `subject`, a package of a build) enters a step."""
    emit("step", name, subject)


def note(text: str, subject: Optional[str] = None) -> None:
    """A passing note that replaces the last one (progress figures)."""
    emit("note", text, subject)


def line(text: str, subject: Optional[str] = None) -> None:
    """A line for the report (kept in the run's log and the failure's tail)."""
    emit("line", text, subject)


_before_result: List[Callable[[Any], None]] = []


def before_result(hook: Callable[[Any], None]) -> None:
    """Run `hook(result)` just before the result line is written (it may set fields): the
    last thing a command does, whichever way it ends, e.g. give up the deploy lock."""
    _before_result.append(hook)


def finish(result: Outcome) -> int:
    """Write the result line and return the command's exit status."""
    while _before_result:
        _before_result.pop(0)(result)
    with _write_lock:
        _write(sys.stdout, result_line(result))
    return 0 if result.ok else 1


def say(text: str) -> None:
    """Human-readable progress on stderr."""
    with _write_lock:
        _write(sys.stderr, text.rstrip("\n"))
