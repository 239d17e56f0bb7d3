"""One connection to a server over OpenSSH: a connection master (ControlMaster) opened on
first use, each command one `ssh` through it, reading the run's generated config
(flinger/ssh/config.py).

Host keys, aliases, ProxyJump chains, certificates and identities are therefore OpenSSH's
own. What this module adds: the failures said as what they are (flinger/ssh/failures.py), a
session cap per connection that a host's own refusals lower (a builder with `MaxSessions 2`:
OpenSSH falls back to a connection of its own for a refused session, flinger then uses
fewer at once), command timeouts, and output streamed by line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flinger.errors import RemoteCommandError, UnreachableError
from flinger.ssh import detached
from flinger.ssh.config import CONTROL_PERSIST, Hop, SshConfig
from flinger.ssh.failures import connect_error, is_mux_line, is_ssh_line, is_transient, lost_reason, session_refused
from flinger.topology.model import Server, SshSettings

# What -v shows (flinger/cli/app.py): each command line as it is sent, how it ended, and the
# ssh that opens each connection. Plans, overlays and files travel on stdin, never in a
# command line, so what this logs holds no secret; stdin is shown by its size only.
trace = logging.getLogger("flinger.ssh")

LineSink = Callable[[str, str], None]  # (stream "out" | "err", line)
Feed = queue.Queue[bytes | None]  # more for a running command's stdin; None closes it
TAIL_LINES = 20
TIMED_OUT = 124  # the exit status reported for a command flinger stopped waiting for (as timeout(1))
# A stock sshd allows 10 sessions per connection (MaxSessions): stay under it. A host that
# refuses one sooner lowers its connection's cap (SessionCap.refused).
SESSIONS_PER_CONNECTION = 8
# More commands at once to one host than a connection may carry open more connections, up to:
CONNECTIONS_PER_HOST = 8
SSH_FAILED = 255  # ssh's own exit status when it, not the command, failed
# How ssh names the peer of a connection made through a ProxyJump/ProxyCommand.
PROXIED = "UNKNOWN port 65535"


@dataclass
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def privileged(command: str, privilege: str) -> str:
    """Wrap a command line for the server's privilege tool (sudo, pfexec or none)."""
    if privilege == "sudo":
        return f"sudo -n -- sh -c {shlex.quote(command)}"
    if privilege == "pfexec":
        return f"pfexec sh -c {shlex.quote(command)}"
    return command


class SessionCap:
    """How many commands run at once on one connection: SESSIONS_PER_CONNECTION, lowered to
    what the host allowed when it refuses a session."""

    def __init__(self, limit: int = SESSIONS_PER_CONNECTION) -> None:
        self.limit = limit
        self.active = 0
        self._cond = threading.Condition()

    def __enter__(self) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1
            return self.active

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def refused(self, active_then: int) -> None:
        """The host refused a session while `active_then` ran: allow fewer from now on."""
        with self._cond:
            self.limit = max(1, min(self.limit, active_then - 1))


ASK_HOME = 'printf "home=%s\\n" "$HOME"'  # the master's first command
FIRST_SAID_LIMIT = 65536  # what the master's first session may print (more: not ours)


def _home_from(said: str) -> tuple[str | None, str]:
    """The absolute path ASK_HOME printed, and what the command after it printed (None and
    "": anything else, e.g. from a forced command; $HOME is asked again when needed)."""
    first, newline, rest = said.partition("\n")
    if newline and first.startswith("home=/") and "\x00" not in first:
        return first[len("home=") :], rest
    return None, ""


class Connection:
    """A connection to one server, opened on first use and reused for every step of a run."""

    def __init__(
        self,
        server: Server,
        settings: SshSettings,
        *,
        config: SshConfig,
        forward_agent: bool = False,
    ) -> None:
        self.server = server
        self.settings = settings
        self.config = config
        self.forward_agent = forward_agent
        self.hop = Hop.of(server)
        self.control: Path = config.control_path()
        self.master_log = self.control.with_name(self.control.name + ".log")
        self._lock = threading.Lock()
        self.sessions = SessionCap()
        self.leases = 0  # commands ConnectionPool.lease handed this connection, running now
        self.home: str | None = None  # the login user's $HOME there, once asked (remote_tool)
        self._opened = False
        self._first_said: str | None = None  # what open's `first` printed in the master's first session
        self._connecting: subprocess.Popen[bytes] | None = None  # the ssh that opens the master, meanwhile
        self._abandoned = threading.Event()  # abandon(): the run ends; an open still under way stops

    def options(self) -> list[str]:
        """What this connection adds to the config: its control socket, the agent (the
        builder's only), deploy.toml's jump host and pin."""
        out = ["-o", f"ControlPath={self.control}", "-o", f"ForwardAgent={'yes' if self.forward_agent else 'no'}"]
        return [*out, *self.config.hop_options(self.server)]

    def argv(self, *extra: str) -> list[str]:
        """`ssh` through this connection's master (a direct connection if it is gone)."""
        return [*self.config.base_argv(), *self.options(), *extra, *self.hop.argv()]

    def open(self, first: str = "") -> str | None:
        """Start the connection master (once), retrying what may pass (a refused or reset
        connection), never a host key or an authentication failure.

        `first`, a command for the master's first session (beside the $HOME question, no
        round trip of its own): its output when it ran there and ended with status 0; None
        when the master was up already or it did not (run it on its own: its error is
        then its own)."""
        with self._lock:
            if self._opened and self.control.exists():
                return None
            with contextlib.suppress(FileNotFoundError):
                self.control.unlink()  # a master that died left its socket
            attempts = self.settings.retries + 1
            for attempt in range(attempts):
                stderr = self._start_master(first) if not self._abandoned.is_set() else ""
                if stderr is None:
                    self._opened = True
                    return self._first_said
                if self._abandoned.is_set():
                    raise UnreachableError(f"{self.server.name}: connection abandoned: the run ended while it opened")
                error = connect_error(self.server, self.config, stderr)
                if not is_transient(stderr) or attempt == attempts - 1:
                    raise error
                self._abandoned.wait(min(0.5 * 2**attempt, 4.0))  # a pause before the next try
            raise AssertionError("unreachable: the last attempt returns or raises")

    def _start_master(self, first: str) -> str | None:
        """None once the master runs (it goes to the background by itself), else ssh's words.
        The master writes them to its log (-E): there they also say why it ended later.
        Its first session asks for the login's $HOME (`home`), which every operation needs
        to place its files, then runs `first` (`_first_said`): no round trip of their own."""
        self.master_log.write_bytes(b"")
        self._first_said = None
        master = ("-o", "ControlMaster=yes", "-o", f"ControlPersist={CONTROL_PERSIST}", "-E", str(self.master_log))
        argv = [*self.argv(*master), f"{ASK_HOME} && {{ {first}\n}}" if first else ASK_HOME]
        limit = max(1.0, self.settings.connect_timeout) * 3 + 30
        trace.debug("[%s] connecting: %s", self.server.name, shlex.join(argv))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            code = self._connect(argv, out, err, limit)
            err.seek(0)
            text = err.read().decode("utf-8", "replace") + self._master_said()
            out.seek(0)
            said = out.read(FIRST_SAID_LIMIT + 1).decode("utf-8", "replace")
        if code != -1 and self.control.exists():  # up, whatever a forced command made of the question
            home, rest = _home_from(said) if len(said) <= FIRST_SAID_LIMIT else (None, "")
            self.home = home if code == 0 or first else None
            self._first_said = rest if code == 0 and home is not None and first else None
            return None
        if self._abandoned.is_set():
            return text  # not diagnosed: open says the run ended, at once
        if code == -1:
            return f"{text}\nno answer within {limit:.0f}s (timed out)"
        if PROXIED in text:  # a master hides its proxy's (a jump host's) words: ask once without
            return self._diagnose(limit) or text
        return text

    def _connect(self, argv: list[str], out: Any, err: Any, limit: float) -> int:
        """Run the ssh that opens the master: its exit status; -1 when it took longer than
        `limit` (then that ssh is killed, not its group: once up, the master lives on in a
        session of its own, and a jump host's ssh in that group is the master's too)."""
        proc = detached.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self._connecting = proc
        try:
            if self._abandoned.is_set():  # abandon() came before this ssh was there to kill
                _kill_group(proc)
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
        finally:
            self._connecting = None
        return code

    def abandon(self) -> None:
        """The run ends: an open still under way (a connection opened ahead) stops now
        instead of holding the run's end for its whole connect limit, with the ssh to its
        jump host (nobody will use this connection: a master that came up meanwhile ends
        too, or is stopped by close)."""
        self._abandoned.set()
        proc = self._connecting
        if proc is not None:
            _kill_group(proc)

    def _diagnose(self, limit: float) -> str:
        argv = [*self.argv("-o", "ControlPath=none"), "exit 0"]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return str(detached.run(argv, capture_output=True, text=True, timeout=limit).stderr)
        return ""

    def _master_said(self) -> str:
        try:
            return self.master_log.read_bytes()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        """The master still runs (`ssh -O check`)."""
        if not self.control.exists():
            return False
        argv = self.argv("-O", "check")
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return detached.run(argv, capture_output=True, timeout=10).returncode == 0
        return False

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineSink | None = None,
        check: bool = True,
        timeout: float | None = None,
        stop: threading.Event | None = None,
        feed: Feed | None = None,
    ) -> CommandResult:
        """Run a command line (already quoted by the caller) and collect its output.

        With `stop`, the command's stdin stays open while it runs, and closes (and ssh ends)
        as soon as `stop` is set: a command wrapped by `stoppable` then ends on the server too.
        With `feed`, stdin stays open after `stdin` too: what is put into `feed` is written
        to it as it comes, until None (then it closes); such a command's `timeout` counts
        from the last thing written to it (one that waits for a word is told `wait` meanwhile).

        At most the session cap of commands run at once on one connection; more wait. One
        that runs longer than `timeout` (default: [ssh] command_timeout) is abandoned with a
        RemoteCommandError naming it, with its last output lines. A connection that ends
        under a command is an UnreachableError saying "connection lost".
        """
        self.open()
        fed = f"  (stdin: {len(stdin)} bytes)" if stdin else ""
        trace.debug("[%s] $ %s%s", self.server.name, command, fed)
        began = time.monotonic()
        with self.sessions as active:
            result, ssh_lines = run_process(
                [*self.argv(), command], command, stdin, on_line, timeout or self.settings.command_timeout, stop, feed
            )
        trace.debug("[%s] exit %d after %.2f s", self.server.name, result.exit_code, time.monotonic() - began)
        if session_refused(ssh_lines):
            self.sessions.refused(active)
        if stop is not None and stop.is_set():
            return result  # stopped on purpose: whatever it said so far
        if result.exit_code == SSH_FAILED and not self.alive():
            self._opened = False
            said = [*ssh_lines, *(ln for ln in result.stderr.splitlines()[-5:] if is_ssh_line(ln))]
            said += self._master_said().splitlines()
            raise UnreachableError(f"{self.server.name}: connection lost: {lost_reason(said, self.config, self.hop)}")
        if check and result.exit_code != 0:
            raise RemoteCommandError(command, result.exit_code, result.tail)
        return result

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        """Write a file (created private, then given `mode`); the caller makes its directory
        private first."""
        path = shlex.quote(remote_path)
        # A write that fails (a full disk) leaves no partial file behind.
        written = f"cat > {path} && chmod {mode:o} {path}"
        self.run(f"umask 077 && {{ {written}; }} || {{ rm -f -- {path}; exit 1; }}", stdin=data)

    def put_file(self, local: Path, remote_path: str, mode: int = 0o600) -> None:
        self.put_bytes(local.read_bytes(), remote_path, mode)

    def make_dir(self, remote_path: str, mode: int = 0o700, *, exist_ok: bool = False) -> None:
        path = shlex.quote(remote_path)
        there = f"test -d {path} && ! test -L {path} || " if exist_ok else ""
        self.run(f"{there}mkdir -m {mode:o} -- {path}")

    def rename(self, source: str, dest: str) -> None:
        """Rename, replacing `dest` atomically (rename(2) within a directory)."""
        self.run(f"mv -f -- {shlex.quote(source)} {shlex.quote(dest)}")

    def close(self) -> None:
        """Stop the master (closing a dead connection must not mask the results of the run)."""
        if self.control.exists():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                detached.run(self.argv("-O", "exit"), capture_output=True, timeout=10)
        self._opened = False


_STOPPABLE = """import os, signal, subprocess, sys, threading
p = subprocess.Popen(["/bin/sh", "-c", sys.argv[1]], stdin=subprocess.DEVNULL, start_new_session=True)
def watch():
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except OSError:
        pass
threading.Thread(target=watch, daemon=True).start()
code = p.wait()
os._exit(code if code >= 0 else 128 - code)
"""


def stoppable(command: str, python: str = "python3") -> str:
    """`command` as a line that ends, with every process it started, when its ssh's stdin
    closes (the Ctrl-C of `exec` and `logs`: Connection.run's `stop`). A small python3
    program (every server has one: the remote tool needs it) runs it in a process group of
    its own and kills that group at EOF; its exit status is the command's."""
    return shlex.join([python, "-c", _STOPPABLE, command])


def run_process(
    argv: list[str],
    command: str,
    stdin: bytes | None,
    on_line: LineSink | None,
    timeout: float | None,
    stop: threading.Event | None = None,
    feed: Feed | None = None,
    **popen: Any,
) -> tuple[CommandResult, list[str]]:
    """Run one ssh (or, with `popen`'s env and cwd, a local command); (the command's
    result, ssh's own lines from stderr)."""
    # Its own session: a Ctrl-C at the terminal is the brake's (flinger/engine/brake.py), and
    # the commands at work finish their step; it never reaches ssh.
    proc = detached.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    fed = _Fed()
    writer = threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin or b"", stop is None, feed, fed), daemon=True)
    writer.start()
    try:
        return _collect(proc, command, on_line, timeout, stop, fed)
    finally:
        if feed is not None:
            feed.put(None)  # the writer ends with the command
        writer.join(timeout=5)


def _collect(
    proc: subprocess.Popen[bytes],
    command: str,
    on_line: LineSink | None,
    timeout: float | None,
    stop: threading.Event | None,
    fed: _Fed,
) -> tuple[CommandResult, list[str]]:
    """Read a started command's output to its end (or its timeout after it was last fed,
    or `stop`)."""
    assert proc.stdout is not None and proc.stderr is not None
    collected = _Collected(on_line)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        while selector.get_map():
            if stop is not None and stop.is_set():
                _stop(proc)
                break
            left = None if timeout is None else fed.at + timeout - time.monotonic()
            if left is not None and left <= 0:
                proc.kill()
                proc.wait()
                error = RemoteCommandError(command, TIMED_OUT, list(collected.tail))
                error.message = f"`{command}` did not finish within {timeout:.0f}s (no exit status; stopped waiting)"
                raise error
            look = 0.2 if stop is not None else 1.0  # a stop is seen within that
            for key, _ in selector.select(timeout=min(left, look) if left is not None else look):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                collected.feed(key.data, data)
    code = proc.wait()
    collected.finish()
    return collected.result(command, code), collected.ssh_lines


class _Fed:
    """When a command's stdin was last written to (its timeout counts from then)."""

    def __init__(self) -> None:
        self.at = time.monotonic()


def _feed_stdin(
    pipe: object, data: bytes, close: bool = True, feed: Feed | None = None, fed: _Fed | None = None
) -> None:
    with contextlib.suppress(OSError):
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.flush()  # type: ignore[attr-defined]
    if feed is not None:
        while (more := feed.get()) is not None:
            with contextlib.suppress(OSError):
                pipe.write(more)  # type: ignore[attr-defined]
                pipe.flush()  # type: ignore[attr-defined]
            if fed is not None:
                fed.at = time.monotonic()
    if close or feed is not None:
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[attr-defined]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill an ssh started in a session of its own (detached) and what it started there: the
    ssh to its jump host."""
    if proc.returncode is None:  # not reaped: its pid (the group's id) is still its own
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the command's stdin (a `stoppable` command ends on the server), then end ssh."""
    with contextlib.suppress(OSError):
        assert proc.stdin is not None
        proc.stdin.close()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()


class _Collected:
    """A command's output by stream and line; ssh's own stderr lines kept apart."""

    def __init__(self, on_line: LineSink | None) -> None:
        self.on_line = on_line
        self.chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self.partial = {"out": b"", "err": b""}
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.ssh_lines: list[str] = []

    def feed(self, stream: str, data: bytes) -> None:
        buf = self.partial[stream] + data
        *lines, self.partial[stream] = buf.split(b"\n")
        for raw in lines:
            self._line(stream, raw)

    def _line(self, stream: str, raw: bytes, end: bytes = b"\n") -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if stream == "err" and is_mux_line(line):
            self.ssh_lines.append(line)
            return
        self.chunks[stream].append(raw + end)
        self.tail.append(line)
        if self.on_line is not None:
            self.on_line(stream, line)

    def finish(self) -> None:
        for stream in ("out", "err"):
            if self.partial[stream]:
                raw, self.partial[stream] = self.partial[stream], b""
                self._line(stream, raw, end=b"")  # as it came: no newline after the last line

    def result(self, command: str, code: int) -> CommandResult:
        return CommandResult(
            command=command,
            exit_code=code,
            stdout=b"".join(self.chunks["out"]).decode("utf-8", "replace"),
            stderr=b"".join(self.chunks["err"]).decode("utf-8", "replace"),
            tail=list(self.tail),
        )
