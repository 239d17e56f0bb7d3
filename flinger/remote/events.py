"""JSON-lines output of the remote tool: progress events, the final result, and the plan input.

Every command writes one JSON object per line to stdout (`{"event": ...}`) and ends with
`{"event": "result", "ok": ...}`; human text goes to stderr. Builds run packages in threads,
so writes are serialised by a lock to keep lines whole.
"""

import json
import sys
import threading
from typing import Any, Dict

_write_lock = threading.Lock()


class PlanError(Exception):
    """The plan given to a command is malformed (a one-line message for the operator)."""


def emit(event: str, **fields: Any) -> None:
    """Write one progress event as a JSON line."""
    record: Dict[str, Any] = {"event": event}
    record.update(fields)
    line = json.dumps(record, sort_keys=False, default=str)
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def result(ok: bool, **fields: Any) -> int:
    """Write the final result line and return the command's exit status."""
    emit("result", ok=ok, **fields)
    return 0 if ok else 1


def say(text: str) -> None:
    """Human-readable progress on stderr."""
    with _write_lock:
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()


def read_plan() -> Dict[str, Any]:
    """Read the command's JSON plan from stdin; it must be an object."""
    try:
        plan = json.load(sys.stdin)
    except ValueError as exc:
        raise PlanError("the plan on stdin is not valid JSON: %s" % exc) from None
    if not isinstance(plan, dict):
        raise PlanError("the plan on stdin must be a JSON object")
    return plan


def require(plan: Dict[str, Any], key: str, kind: Any = str) -> Any:
    """Return plan[key], which must be present and of type `kind`."""
    if key not in plan:
        raise PlanError("the plan has no %r" % key)
    value = plan[key]
    if not isinstance(value, kind):
        raise PlanError("plan key %r has the wrong type (%s)" % (key, type(value).__name__))
    return value
