"""Shipping and running the remote tool (flinger-remote.pyz) on a host over a Connection.

The tool speaks JSON lines on stdout (`{"event": ...}`), ending with a `result` event;
this module turns that stream into callbacks and the result into data or a FlingerError.
"""

from __future__ import annotations

import json
import secrets
import shlex
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flinger.errors import FlingerError, RemoteCommandError
from flinger.remote.events import SCHEMA
from flinger.ssh.connection import privileged
from flinger.ssh.transport import Transport
from flinger.topology.model import Server, Topology

ZIPAPP_NAME = "flinger-remote.pyz"
EventSink = Callable[[dict[str, Any]], None]

_build_lock = threading.Lock()
_built: dict[Path, tuple[Path, str]] = {}


def local_zipapp(topology: Topology) -> tuple[Path, str]:
    """Build the remote tool once per run into the client state dir; (path, sha256)."""
    from flinger.zipapp import build_remote_zipapp

    dest = topology.state_dir / "tool" / ZIPAPP_NAME
    with _build_lock:
        if dest not in _built:
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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


def upload_tool(conn: Transport, topology: Topology, staging_dir: str, dirs: tuple[str, ...] = ()) -> str:
    """Put the tool into `staging_dir` (made 0700, with `dirs` below it) over SFTP; returns its
    remote path.

    The same tool already there is left alone (one round trip in all); a different one is
    written beside it and renamed into place, so a run using the old one never reads a torn
    file.
    """
    local, digest = local_zipapp(topology)
    staging = resolve_remote_path(conn, staging_dir)
    remote = f"{staging}/{ZIPAPP_NAME}"
    made = " ".join(shlex.quote(d) for d in (staging, *dirs))
    have = conn.run(
        f"mkdir -p {made} && chmod 700 {made} && (sha256sum {shlex.quote(remote)} 2>/dev/null || true)"
    ).stdout.split()[:1]
    if have != [digest]:
        tmp = f"{remote}.{secrets.token_hex(6)}.tmp"
        conn.put_file(local, tmp, mode=0o600)
        conn.sftp_rename(tmp, remote)
    return remote


def run_tool(
    conn: Transport,
    server: Server,
    tool_path: str,
    args: list[str],
    plan: dict[str, Any] | None = None,
    *,
    as_root: bool = True,
    on_event: EventSink | None = None,
    on_text: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run `python3 TOOL ARGS` (through the server's privilege tool), the plan as JSON on stdin.

    Returns the `result` event; a tool that reports ok=false, or exits non-zero without a
    result, raises RemoteCommandError with the last lines it wrote.
    """
    line = shlex.join([server.python, tool_path, *args])
    if as_root:
        line = privileged(line, server.privilege)
    result: dict[str, Any] = {}
    tail: deque[str] = deque(maxlen=20)

    def sink(stream: str, text: str) -> None:
        if stream == "out" and text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                if event["event"] == "result":
                    result.update(event)
                elif on_event is not None:
                    on_event(event)
                if event["event"] == "failed" and isinstance(event.get("tail"), list):
                    tail.extend(str(x) for x in event["tail"])
                return
        tail.append(text)
        if on_text is not None:
            on_text(text)

    stdin = json.dumps({"schema": SCHEMA, **plan}).encode() if plan is not None else None
    outcome = conn.run(line, stdin=stdin, on_line=sink, check=False)
    if not result:
        raise RemoteCommandError(f"{args[0]} on {server.name}", outcome.exit_code or 1, list(tail))
    if result.get("schema") != SCHEMA:
        raise FlingerError(
            f"{server.name}: {args[0]}: the remote tool answered with result schema {result.get('schema')!r}, "
            f"this flinger reads {SCHEMA}"
        )
    if not result.get("ok"):
        err = RemoteCommandError(f"{args[0]} on {server.name}", outcome.exit_code or 1, list(tail), result)
        err.message = str(result.get("error") or err.message)
        raise err
    return result


def read_remote_json(conn: Transport, path: str) -> dict[str, Any]:
    """Read a JSON file on a host (e.g. the builder's artifacts manifest)."""
    out = conn.run(f"cat {shlex.quote(path)}", check=False)
    if out.exit_code != 0:
        raise FlingerError(f"{conn.server.name}: cannot read {path}: {out.stderr.strip() or 'missing'}")
    try:
        data = json.loads(out.stdout)
    except ValueError:
        raise FlingerError(f"{conn.server.name}: {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise FlingerError(f"{conn.server.name}: {path} is not a JSON object")
    return data
