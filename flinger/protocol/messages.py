"""The wire: which plan and result each remote command has, the version, and the lines.

The client runs `python3 flinger-remote.pyz COMMAND` and writes one JSON line to its stdin:
`{"version": VERSION, "command": COMMAND, "plan": {...}}`. The tool writes JSON lines to
stdout: progress events (`Event`), then one result `{"event": "result", "version": VERSION,
...}`. Each side refuses a message of another version, or a plan without one: the client
ships the tool built from its own source, so both always speak the same version.

Progress events are the client's own progress events, one to one: `started`, `step`,
`note`, `line`, `finished` (progress.py's Started, Step, Info, Output, Finished), about the
host itself or, with `subject`, about one package of a build. Facts the client acts on
travel in the result, never in events.
"""

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Type, Union

from flinger.protocol import plans, results
from flinger.protocol.codec import ProtocolError, decode, encode

# The contract's version. Bump it with any change an older reader would misread.
VERSION = 2

Plan = Union[
    plans.InstallPlan,
    plans.InventoryPlan,
    plans.RollbackPlan,
    plans.UninstallPlan,
    plans.LockPlan,
    plans.BuildPlan,
    plans.PushPlan,
    plans.PrereqsPlan,
]
Result = results.Outcome


@dataclass(frozen=True)
class Command:
    plan: Type[Any]
    result: Type[Any]


# Every command of the remote tool: its plan and its result.
COMMANDS: Dict[str, Command] = {
    "install": Command(plans.InstallPlan, results.InstallResult),
    "status": Command(plans.InventoryPlan, results.StatusResult),
    "history": Command(plans.InventoryPlan, results.HistoryResult),
    "rollback": Command(plans.RollbackPlan, results.SwitchResult),
    "uninstall": Command(plans.UninstallPlan, results.UninstallResult),
    "forget": Command(plans.ForgetPlan, results.ForgetResult),
    "confirm": Command(plans.ConfirmPlan, results.ConfirmResult),
    "lock": Command(plans.LockPlan, results.LockResult),
    "build": Command(plans.BuildPlan, results.BuildResult),
    "registry-push": Command(plans.PushPlan, results.PushResult),
    "prereqs": Command(plans.PrereqsPlan, results.PrereqsResult),
}

EVENT_KINDS = ("started", "step", "note", "line", "finished")


@dataclass
class Event:
    """One progress event: `text` is the step's name (step), the note or line (note, line)
    or the final state (finished); `subject` a package of a build, else the host itself."""

    event: str
    text: str = ""
    subject: Optional[str] = None


def plan_line(command: str, plan: Any) -> bytes:
    """The stdin of `command`: its plan in the envelope, one JSON line."""
    expected = COMMANDS[command].plan
    if not isinstance(plan, expected):
        raise TypeError("%s takes a %s, not a %s" % (command, expected.__name__, type(plan).__name__))
    return (json.dumps({"version": VERSION, "command": command, "plan": encode(plan)}) + "\n").encode()


def read_plan(command: str, text: str) -> Any:
    """The plan of `command` from its stdin; ProtocolError when it is not one of this version."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("the plan on stdin is not JSON: %s" % exc) from None
    if not isinstance(message, dict):
        raise ProtocolError("the plan on stdin is not a JSON object")
    version = message.get("version")
    if version != VERSION:
        said = "no version" if version is None else "version %r" % (version,)
        raise ProtocolError("this flinger-remote reads plans of version %d, the plan has %s: run it from "
                            "the flinger that sent it" % (VERSION, said))  # fmt: skip
    if message.get("command") != command:
        raise ProtocolError("the plan is for %r, not %r" % (message.get("command"), command))
    return decode(COMMANDS[command].plan, message.get("plan"), "plan")


def event_line(event: Event) -> str:
    return json.dumps(encode(event))


def result_line(result: results.Outcome) -> str:
    return json.dumps({"event": "result", "version": VERSION, **encode(result)}, default=str)


def parse_line(command: str, line: str) -> Union[Event, results.Outcome, None]:
    """A line the tool wrote: an Event, the command's result, or None for plain text.
    ProtocolError for a result of another version or shape."""
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or "event" not in message:
        return None
    kind = message.pop("event")
    if kind == "result":
        version = message.pop("version", None)
        if version != VERSION:
            raise ProtocolError("the remote tool answered with version %r, this flinger reads %d" % (version, VERSION))
        return decode(COMMANDS[command].result, message, "result")  # type: ignore[no-any-return]
    if kind in EVENT_KINDS:
        return decode(Event, dict(message, event=kind), "event")
    return None
