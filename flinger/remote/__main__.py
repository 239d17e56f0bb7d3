"""Entry point of the remote tool: `python3 flinger-remote.pyz COMMAND`, its plan on stdin.

The one place a command's plan is read (flinger/protocol: versioned, every field checked)
and a refused plan, or a service or file error nobody caught, becomes the command's failed
result. Each command is a function of its module taking the decoded plan and returning the
result (flinger/protocol/results.py). An `install` told to hold a prepared release answers
twice: ready, then what the client's word made of it (hold.py).
"""

import importlib
import sys
from typing import Any, List, Optional, Union

from flinger.protocol.codec import ProtocolError
from flinger.protocol.messages import COMMANDS, read_plan
from flinger.protocol.results import Outcome
from flinger.remote import hold

# command -> (module in flinger.remote, its function taking the plan)
HANDLERS = {
    "install": ("install", "install"),
    "status": ("inventory", "status"),
    "history": ("inventory", "history"),
    "rollback": ("rollback", "rollback"),
    "uninstall": ("inventory", "uninstall"),
    "forget": ("forget", "forget"),
    "confirm": ("confirm", "confirm"),
    "lock": ("lock", "run"),
    "build": ("pkgbuild", "build"),
    "registry-push": ("registry", "push"),
    "prereqs": ("prereqs", "run"),
}
if set(HANDLERS) != set(COMMANDS):  # pragma: no cover - a command half added
    raise ImportError("remote commands without a handler or a protocol entry: %s" % (set(HANDLERS) ^ set(COMMANDS)))


def run(command: str, stdin: Union[str, hold.Stdin]) -> int:
    """Run `command` on the plan in `stdin`'s first line; the exit status (the result line
    is written)."""
    from flinger.remote import events, services

    if isinstance(stdin, str):
        stdin = hold.Stdin.given(stdin.encode())

    result_type = COMMANDS[command].result
    plan: Any = None
    try:
        plan = read_plan(command, (stdin.line() or b"").decode("utf-8", "replace"))
        module, function = HANDLERS[command]
        handler: Any = getattr(importlib.import_module("flinger.remote." + module), function)
        result: Outcome = handler(plan)
    except (ProtocolError, events.PlanError) as exc:
        result = result_type(ok=False, error=str(exc))
    except (services.ServiceError, OSError) as exc:
        result = result_type(ok=False, error="%s: %s" % (command, exc))
    if command == "install" and plan is not None:  # it may hold its answer for the client's word
        try:
            result = hold.go_on(plan, result, stdin)  # type: ignore[arg-type]
        except (events.PlanError, services.ServiceError, OSError) as exc:
            result = result_type(ok=False, error="%s: %s" % (command, exc))
    return events.finish(result)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in COMMANDS:
        sys.stderr.write("usage: flinger-remote {%s} (the plan on stdin)\n" % ",".join(sorted(COMMANDS)))
        return 2
    return run(args[0], hold.Stdin(sys.stdin.fileno()))


if __name__ == "__main__":
    sys.exit(main())
