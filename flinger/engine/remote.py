"""The remote tool on a host: shipping it, and running one of its commands on a typed plan.

`upload_tool` puts `flinger-remote.pyz` (built once per run from this flinger's own source)
into a directory of the host, only when the host does not have the same one. `run_tool`
runs one command there, its plan (flinger/protocol/plans.py) on stdin, and turns the tool's
JSON lines into progress events (`on_event`) and its typed result; a failed result raises
RemoteCommandError carrying it.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flinger.errors import FlingerError, RemoteCommandError
from flinger.progress import Event as Progress
from flinger.progress import Finished, Info, Output, Started, Step
from flinger.protocol.codec import ProtocolError
from flinger.protocol.messages import COMMANDS, Event, parse_line, plan_line
from flinger.protocol.results import Outcome
from flinger.secrets.private_files import private_dir
from flinger.ssh.connection import privileged
from flinger.topology.model import Topology

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.hosts import Transport

ZIPAPP_NAME = "flinger-remote.pyz"
EventSink = Callable[[Event], None]
R = TypeVar("R", bound=Outcome)

_build_lock = threading.Lock()
_built: dict[Path, tuple[Path, str]] = {}


def local_zipapp(topology: Topology) -> tuple[Path, str]:
    """Build the remote tool once per run into the client state dir; (path, sha256)."""
    from flinger.zipapp import build_remote_zipapp

    dest = topology.state_dir / "tool" / ZIPAPP_NAME
    with _build_lock:
        if dest not in _built:
            private_dir(dest.parent)  # and .flinger/ above it, if new: 0700
            digest = build_remote_zipapp(dest)
            _built[dest] = (dest, digest)
        return _built[dest]


def resolve_remote_path(conn: Transport, path: str) -> str:
    """Expand a leading ~ or $HOME with the login user's home on that host (asked once)."""
    if not path.startswith(("~", "$HOME")):
        return path
    if conn.home is None:
        conn.home = conn.run('printf %s "$HOME"').stdout.strip()
    for prefix in ("$HOME", "~"):
        if path.startswith(prefix):
            return conn.home + path[len(prefix) :]
    return path


def upload_tool(conn: Transport, topology: Topology, directory: str, dirs: tuple[str, ...] = ()) -> str:
    """Put the tool into `directory` (made 0700, with `dirs` below it); returns its
    remote path.

    The same tool already there is left alone (one round trip in all); a different one is
    written beside it and renamed into place, so a run using the old one never reads a torn
    file.
    """
    local, digest = local_zipapp(topology)
    staging = resolve_remote_path(conn, directory)
    remote = f"{staging}/{ZIPAPP_NAME}"
    made = " ".join(shlex.quote(d) for d in (staging, *dirs))
    have = conn.run(
        f"mkdir -p {made} && chmod 700 {made} && (sha256sum {shlex.quote(remote)} 2>/dev/null || true)"
    ).stdout.split()[:1]
    if have != [digest]:
        tmp = f"{remote}.{secrets.token_hex(6)}.tmp"
        conn.put_file(local, tmp, mode=0o600)
        conn.rename(tmp, remote)
    logging.getLogger("flinger.run").debug("[%s] remote tool: %s (sha256 %s)", conn.server.name, remote, digest[:16])
    return remote


def into_report(report: Reporter, prefix: str = "") -> EventSink:
    """The tool's events as this server's report: its steps (after `prefix`), notes and lines."""

    def on_event(event: Event) -> None:
        if event.event == "step":
            report.step(prefix + event.text)
        elif event.event == "note":
            report.info(event.text)
        elif event.event == "line":
            report.line(event.text)

    return on_event


def as_progress(event: Event, host: str) -> Progress:
    """A tool's event as the client's progress event, about `subject` (a package of a
    build) or else the host: the one-to-one map of flinger/protocol/messages.py."""
    name = event.subject or host
    kinds: dict[str, Callable[[], Progress]] = {
        "started": lambda: Started(name),
        "step": lambda: Step(name, event.text),
        "note": lambda: Info(name, event.text),
        "line": lambda: Output(name, event.text),
        "finished": lambda: Finished(name, event.text),
    }
    return kinds[event.event]()


def tool_line(python: str, tool_path: str, command: str) -> str:
    """The command line that runs the remote tool: isolated from the server's Python setup
    (-I: no PYTHON* variables, no user site, nothing from the current directory; -S: no
    site-packages, whose .pth files run code), which it does not need, as root or not."""
    return shlex.join([python, "-I", "-S", tool_path, command])


def run_tool(
    conn: Transport,
    tool_path: str,
    command: str,
    plan: Any,
    result_type: type[R],
    *,
    as_root: bool = True,
    on_event: EventSink | None = None,
    on_text: Callable[[str], None] | None = None,
) -> R:
    """Run `python3 TOOL COMMAND` (through the server's privilege tool), the plan on stdin.

    Returns the command's result; a result that says it failed, or a tool that exits
    without one, raises RemoteCommandError with the last lines it wrote (and the result)."""
    server = conn.server
    if COMMANDS[command].result is not result_type:
        raise TypeError(f"{command} answers {COMMANDS[command].result.__name__}, not {result_type.__name__}")
    line = tool_line(server.python, tool_path, command)
    if as_root:
        line = privileged(line, server.privilege)
    answer: list[Outcome] = []
    refused: list[str] = []
    tail: deque[str] = deque(maxlen=20)

    def sink(stream: str, text: str) -> None:
        try:
            message = parse_line(command, text) if stream == "out" else None
        except ProtocolError as exc:
            refused.append(str(exc))
            return
        if isinstance(message, Outcome):
            answer.append(message)
        elif message is not None:
            if on_event is not None:
                on_event(message)
        else:
            tail.append(text)
            if on_text is not None:
                on_text(text)

    outcome = conn.run(line, stdin=plan_line(command, plan), on_line=sink, check=False)
    if refused:
        raise FlingerError(f"{server.name}: {command}: {refused[0]}")
    if not answer:
        raise RemoteCommandError(f"{command} on {server.name}", outcome.exit_code or 1, list(tail))
    result = answer[-1]
    assert isinstance(result, result_type)
    if not result.ok:
        error = RemoteCommandError(f"{command} on {server.name}", outcome.exit_code or 1, list(tail), result)
        error.message = result.error or error.message
        raise error
    return result
