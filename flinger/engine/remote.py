"""The remote tool on a host: shipping it, and running one of its commands on a typed plan.

`upload_tool` puts `flinger-remote.pyz` (built once per run from this flinger's own source)
into a directory of the host, only when the host does not have the same one. `run_tool`
runs one command there, its plan (flinger/protocol/plans.py) on stdin, and turns the tool's
JSON lines into progress events (`on_event`) and its typed result; a failed result raises
RemoteCommandError carrying it. A `Conversation` runs one in a thread of its own, its stdin
open, for a command that answers, waits for a word, and answers again (an install holding a
release ready: flinger/remote/hold.py).
"""

from __future__ import annotations

import logging
import queue
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
from flinger.ssh.connection import Feed, privileged
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
        conn.open()  # its first session asks (or another thread's open, waited for)
    if conn.home is None:
        conn.home = conn.run('printf %s "$HOME"').stdout.strip()
    for prefix in ("$HOME", "~"):
        if path.startswith(prefix):
            return conn.home + path[len(prefix) :]
    return path


def shell_path(path: str) -> str:
    """`path` as one shell word, a leading ~ or $HOME left to the shell there: what
    resolve_remote_path makes of it, without knowing $HOME."""
    for prefix in ("$HOME", "~"):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            return '"$HOME"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(path)


def tool_check(directory: str, dirs: tuple[str, ...] = ()) -> str:
    """The command that makes `directory` and `dirs` (0700; paths as in deploy.toml, or
    below them) and prints the sha256 of the tool there, if any: upload_tool's first round
    trip, which may ride the connection's start (Transport.open's `first`)."""
    made = " ".join(shell_path(d) for d in (directory, *dirs))
    remote = shell_path(f"{directory}/{ZIPAPP_NAME}")
    return f"mkdir -p -- {made} && chmod 700 -- {made} && (sha256sum -- {remote} 2>/dev/null || true)"


def upload_tool(
    conn: Transport, topology: Topology, directory: str, dirs: tuple[str, ...] = (), checked: str | None = None
) -> str:
    """Put the tool into `directory` (made 0700, with `dirs` below it); returns its
    remote path.

    The same tool already there is left alone (one round trip in all, none when `checked`
    holds what tool_check printed already); a different one is written beside it and
    renamed into place (one more), so a run using the old one never reads a torn file.
    """
    local, digest = local_zipapp(topology)
    remote = f"{resolve_remote_path(conn, directory)}/{ZIPAPP_NAME}"
    if checked is None:
        checked = conn.run(tool_check(directory, dirs)).stdout
    if checked.split()[:1] != [digest]:  # written beside it and renamed into place, in one round trip
        tmp, final = shlex.quote(f"{remote}.{secrets.token_hex(6)}.tmp"), shlex.quote(remote)
        written = f"cat > {tmp} && chmod 600 {tmp} && mv -f -- {tmp} {final}"
        conn.run(f"umask 077 && {{ {written}; }} || {{ rm -f -- {tmp}; exit 1; }}", stdin=local.read_bytes())
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
    feed: Feed | None = None,
    on_result: Callable[[Outcome], None] | None = None,
) -> R:
    """Run `python3 TOOL COMMAND` (through the server's privilege tool), the plan on stdin.

    Returns the command's (last) result; a result that says it failed, or a tool that exits
    without one, raises RemoteCommandError with the last lines it wrote (and the result).
    With `feed`, stdin stays open for more (see `Conversation`); `on_result` hears each
    result as it comes."""
    server = conn.server
    if COMMANDS[command].result is not result_type:
        raise TypeError(f"{command} answers {COMMANDS[command].result.__name__}, not {result_type.__name__}")
    line = tool_line(server.python, tool_path, command)
    if as_root:
        line = privileged(line, server.privilege)
    heard = _Heard(command, on_event, on_text, on_result)
    outcome = conn.run(line, stdin=plan_line(command, plan), on_line=heard, check=False, feed=feed)
    if heard.refused:
        raise FlingerError(f"{server.name}: {command}: {heard.refused[0]}")
    answer, tail = heard.answers, heard.tail
    if not answer:
        raise RemoteCommandError(f"{command} on {server.name}", outcome.exit_code or 1, list(tail))
    result = answer[-1]
    assert isinstance(result, result_type)
    if not result.ok:
        error = RemoteCommandError(f"{command} on {server.name}", outcome.exit_code or 1, list(tail), result)
        error.message = result.error or error.message
        raise error
    return result


class _Heard:
    """What a tool command writes, line by line: its results, its events, plain text (the
    last lines kept for a failure), and lines that break the protocol (refused)."""

    def __init__(
        self,
        command: str,
        on_event: EventSink | None,
        on_text: Callable[[str], None] | None,
        on_result: Callable[[Outcome], None] | None,
    ) -> None:
        self.command = command
        self.on_event, self.on_text, self.on_result = on_event, on_text, on_result
        self.answers: list[Outcome] = []
        self.refused: list[str] = []
        self.tail: deque[str] = deque(maxlen=20)

    def __call__(self, stream: str, text: str) -> None:
        try:
            message = parse_line(self.command, text) if stream == "out" else None
        except ProtocolError as exc:
            self.refused.append(str(exc))
            return
        if isinstance(message, Outcome):
            self.answers.append(message)
            if self.on_result is not None:
                self.on_result(message)
        elif message is not None:
            if self.on_event is not None:
                self.on_event(message)
        else:
            self.tail.append(text)
            if self.on_text is not None:
                self.on_text(text)


class Conversation:
    """A tool command that answers more than once: it runs in a thread of its own, its stdin
    open. `first(waits)` waits for its first result, `say(word, ...)` writes one line to it
    and waits for its next; a result that `waits` says the command waits after is returned
    at once, any other is the command's end (flinger/remote/hold.py: an install holding its
    prepared release, then its switch awaiting confirmation). While it waits for a word it
    is told every `beat` seconds that the client is still there."""

    def __init__(self, conn: Transport, tool_path: str, command: str, plan: Any, report: Reporter, *,
                 prefix: str = "", beat: float = 15.0) -> None:  # fmt: skip
        self.report = report  # whose steps and lines the tool's events become: the phase's at work
        self.feed: Feed = queue.Queue()
        self.changed = threading.Condition()
        self.ended = False
        self.answers: list[Outcome] = []
        self.taken = 0  # answers handed out so far
        self.last: Outcome | None = None
        self.failure: BaseException | None = None
        self.beat = beat
        self.beating = False
        self.holding = False  # it waits for a word after the answer handed out last
        self.what = f"{command} on {conn.server.name}"

        def on_event(event: Event) -> None:
            into_report(self.report, prefix)(event)

        def heard(result: Outcome) -> None:
            with self.changed:
                self.answers.append(result)
                self.changed.notify_all()

        def talk() -> None:
            try:
                self.last = run_tool(conn, tool_path, command, plan, COMMANDS[command].result, on_event=on_event,
                                     on_text=lambda text: self.report.line(text), feed=self.feed,
                                     on_result=heard)  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits: first() or say()
                self.failure = exc
            finally:
                with self.changed:
                    self.ended = True
                    self.changed.notify_all()

        threading.Thread(target=talk, name=f"flinger-{command}-{conn.server.name}", daemon=True).start()

    def first(self, waits: Callable[[Outcome], bool]) -> Outcome:
        """The first result if `waits(it)` (the command goes on, waiting for a word); else
        the command's end: its last result, or its error."""
        return self._next(waits)

    def say(self, word: str, report: Reporter, waits: Callable[[Outcome], bool] = lambda _: False) -> Outcome:
        """Write `word` as a line to the command, its events now `report`'s; its next result
        as `first` returns one."""
        self.report = report
        self.feed.put(word.encode() + b"\n")
        return self._next(waits)

    def _next(self, waits: Callable[[Outcome], bool]) -> Outcome:
        with self.changed:
            self.holding = False
            self.changed.wait_for(lambda: len(self.answers) > self.taken or self.ended)
            unanswered = len(self.answers) <= self.taken
            if not unanswered:
                answer = self.answers[self.taken]
                self.taken += 1
                self.holding = not self.ended and waits(answer)
                if self.holding:
                    if not self.beating:
                        self.beating = True
                        threading.Thread(target=self._beat, daemon=True).start()
                    return answer
                self.changed.wait_for(lambda: self.ended)
                self.taken = len(self.answers)
        if self.failure is not None:
            raise self.failure
        if unanswered or self.last is None:  # it ended (killed?) without a word on what it was told
            error = RemoteCommandError(self.what, 1, [])
            error.message = f"{self.what} ended without an answer to what it was told"
            raise error
        return self.last

    def _beat(self) -> None:
        """While it waits for a word (and only then: the command's timeout counts from the
        last line it was sent), tell it the client is there."""
        with self.changed:
            while not self.changed.wait_for(lambda: self.ended, timeout=self.beat):
                if self.holding:
                    self.feed.put(b"wait\n")
