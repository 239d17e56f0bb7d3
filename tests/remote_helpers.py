"""Running the remote tool in tests as flinger runs it on a host: a command, its plan on
stdin in the versioned envelope, JSON lines back (progress events, then the result)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from flinger.protocol.codec import encode
from flinger.protocol.messages import VERSION, Event, parse_line
from flinger.protocol.results import Outcome

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Answer:
    status: int  # the tool's exit status
    result: Any  # the command's result (flinger/protocol/results.py), None when it wrote none
    events: list[Event] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def steps(self) -> list[str]:
        return [e.text for e in self.events if e.event == "step"]

    def lines(self) -> list[str]:
        return [e.text for e in self.events if e.event == "line"]


def envelope(command: str, plan: Any) -> str:
    """The stdin of `command`: a plan object or a plain dict, in the versioned envelope."""
    body = encode(plan) if is_dataclass(plan) else plan
    return json.dumps({"version": VERSION, "command": command, "plan": body}) + "\n"


def parse(command: str, stdout: str) -> tuple[Any, list[Event]]:
    result, events = None, []
    for line in stdout.splitlines():
        message = parse_line(command, line)
        if isinstance(message, Outcome):
            result = message
        elif isinstance(message, Event):
            events.append(message)
    return result, events


def run_remote(
    command: str,
    plan: Any,
    *,
    python: str = sys.executable,
    tool: list[str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> Answer:
    """Run `python -m flinger.remote COMMAND` from this checkout (or `tool`, e.g. a zipapp)."""
    argv = [python, *(tool or ["-m", "flinger.remote"]), command]
    proc = subprocess.run(
        argv, input=envelope(command, plan) if stdin is None else stdin, capture_output=True, text=True,
        cwd=REPO, timeout=timeout, check=False,
    )  # fmt: skip
    result, events = parse(command, proc.stdout)
    return Answer(proc.returncode, result, events, proc.stdout, proc.stderr)


def eventually(check: Callable[[], bool], seconds: float = 90) -> bool:
    """Whether `check()` comes true within `seconds` (asked every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
