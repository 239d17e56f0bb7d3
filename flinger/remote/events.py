"""JSON-lines output of the remote tool: progress events, the final result, and the plan input.

Every command writes one JSON object per line to stdout (`{"event": ...}`) and ends with
`{"event": "result", "ok": ..., "schema": N}`; human text goes to stderr. Builds run packages in threads,
so writes are serialised by a lock to keep lines whole.

A command that changes a server must not die because its client went away (Ctrl-C, a cut
network, a killed flinger): that would leave it half-switched. `survive_lost_client(log)`
ignores SIGHUP and SIGPIPE's consequences: once stdout or stderr cannot be written, every
later line goes to `log` instead, and the command runs on to its end (install or rollback).
"""

import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

# The version of the plan/result contract between flinger and this tool: plans may say which
# they follow ("schema"), every result says it. A change that an older reader would misread
# bumps it; both sides refuse what they do not know.
SCHEMA = 1

_write_lock = threading.Lock()
_fallback: Optional[str] = None  # where lines go once the client is gone
_client_gone = False


def survive_lost_client(log_path: str) -> None:
    """Keep running when the client disconnects; lines go to `log_path` from then on."""
    global _fallback
    _fallback = log_path
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


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


class PlanError(Exception):
    """The plan given to a command is malformed (a one-line message for the operator)."""


def emit(event: str, **fields: Any) -> None:
    """Write one progress event as a JSON line."""
    record: Dict[str, Any] = {"event": event}
    record.update(fields)
    line = json.dumps(record, sort_keys=False, default=str)
    with _write_lock:
        _write(sys.stdout, line)


_before_result: List[Callable[[Dict[str, Any]], None]] = []


def before_result(hook: Callable[[Dict[str, Any]], None]) -> None:
    """Run `hook(fields)` just before the result line is written (it may add fields): the
    last thing a command does, whichever way it ends, e.g. give up the deploy lock."""
    _before_result.append(hook)


def result(ok: bool, **fields: Any) -> int:
    """Write the final result line (it says its schema) and return the command's exit status."""
    while _before_result:
        _before_result.pop(0)(fields)
    emit("result", ok=ok, schema=SCHEMA, **fields)
    return 0 if ok else 1


def say(text: str) -> None:
    """Human-readable progress on stderr."""
    with _write_lock:
        _write(sys.stderr, text.rstrip("\n"))


def read_plan() -> Dict[str, Any]:
    """Read the command's JSON plan from stdin; it must be an object of a schema this tool reads."""
    try:
        plan = json.load(sys.stdin)
    except ValueError as exc:
        raise PlanError("the plan on stdin is not valid JSON: %s" % exc) from None
    if not isinstance(plan, dict):
        raise PlanError("the plan on stdin must be a JSON object")
    schema = plan.get("schema", SCHEMA)
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA:
        raise PlanError(
            "this flinger-remote reads plans of schema 1 to %d, not %r: run it from "
            "the flinger that sent it" % (SCHEMA, schema)
        )
    return plan


def require(plan: Dict[str, Any], key: str, kind: Any = str) -> Any:
    """Return plan[key], which must be present and of type `kind`."""
    if key not in plan:
        raise PlanError("the plan has no %r" % key)
    value = plan[key]
    if not isinstance(value, kind):
        raise PlanError("plan key %r has the wrong type (%s)" % (key, type(value).__name__))
    return value
