"""What a command did on each server: `ServerResult`, its `Status`, and the exit status of
the whole command.

A server's outcome is data: ok, failed (at which step, exit status, last lines of output),
unreachable, skipped, interrupted or rolled back; `details` is what `--json` says of it, and
`switch` what the step did to the release the server runs (what a rollout undoes).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flinger.errors import ExitStatus


class Status(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # not started: Ctrl-C came first
    ROLLED_BACK = "rolled back"  # its own step went well, then the rollout was undone there
    NOT_SWITCHED = "not switched"  # ready to switch, held back: another server of its batch was not


@dataclass(frozen=True)
class Switch:
    """What a step did to the release a server runs."""

    release: str | None  # what it runs now
    previous: str | None  # what it ran before the step
    switched: bool  # this run moved it to a new release: what a rollout that stops undoes


@dataclass
class ServerResult:
    server: str
    status: Status
    duration: float = 0.0
    step: str | None = None
    exit_code: int | None = None
    message: str | None = None
    tail: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # free-form: what --json says of the server
    steps: list[dict[str, object]] = field(default_factory=list)  # each step and its seconds
    switch: Switch | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "status": self.status.value,
            "duration": round(self.duration, 3),
            "step": self.step,
            "exit_code": self.exit_code,
            "message": self.message,
            "tail": self.tail,
            "details": self.details,
            "steps": self.steps,
        }


def exit_status(results: Iterable[ServerResult]) -> ExitStatus:
    """130 if Ctrl-C stopped servers from starting, else 1 if any server failed (or was
    skipped, or rolled back), else 4 if any was unreachable (servers held back from their
    switch by it are not failures of their own), else 0."""
    statuses = {r.status for r in results}
    if Status.INTERRUPTED in statuses:
        return ExitStatus.INTERRUPTED
    if Status.FAILED in statuses or Status.SKIPPED in statuses or Status.ROLLED_BACK in statuses:
        return ExitStatus.FAILED
    if Status.UNREACHABLE in statuses:
        return ExitStatus.UNREACHABLE
    return ExitStatus.OK
