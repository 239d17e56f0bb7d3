"""The error types flinger raises and the exit statuses they map to.

Only `flinger.cli` turns these into messages and exit statuses (the one error boundary).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flinger.protocol.results import Outcome


class ExitStatus(enum.IntEnum):
    """Exit statuses of the command contract (DESIGN.md)."""

    OK = 0
    FAILED = 1  # the operation failed on at least one server
    USAGE = 2  # bad usage or configuration; nothing was touched
    UNREACHABLE = 4  # a server was unreachable, and none failed otherwise
    INTERRUPTED = 130


class FlingerError(Exception):
    """An error with a one-line message for the operator and an exit status."""

    exit_status: ExitStatus = ExitStatus.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(FlingerError):
    """Bad command-line usage."""

    exit_status = ExitStatus.USAGE


class ConfigError(FlingerError):
    """Bad input in a file: names the file, the line and the dotted key."""

    exit_status = ExitStatus.USAGE

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.reason = message  # without file, line and key
        where = ""
        if self.file is not None:
            where = self.file if line is None else f"{self.file}:{line}"
        prefix = ": ".join(p for p in (where, key) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigErrors(ConfigError):
    """Several errors in input files, each one line; `check` reports them all."""

    def __init__(self, errors: list[ConfigError], *, total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        first = errors[0]
        super().__init__(first.message)
        self.message = first.message
        self.file, self.line, self.key = first.file, first.line, first.key

    def lines(self) -> list[str]:
        out = [e.message for e in self.errors]
        if self.total > len(self.errors):
            out.append(f"... and {self.total - len(self.errors)} more errors")
        return out


class UnreachableError(FlingerError):
    """A server could not be reached over SSH."""

    exit_status = ExitStatus.UNREACHABLE


class HostKeyError(UnreachableError):
    """A host key that is unknown or does not match what was recorded: not safely reachable."""


class StoppedError(FlingerError):
    """A command the operator stopped (Ctrl-C, SIGTERM) while it ran: the server is `interrupted`."""

    exit_status = ExitStatus.INTERRUPTED


class RemoteCommandError(FlingerError):
    """A remote command exited non-zero."""

    def __init__(self, command: str, exit_code: int, tail: list[str], result: Outcome | None = None) -> None:
        self.command = command
        self.exit_code = exit_code
        self.tail = tail
        self.result = result  # the remote tool's result, when it wrote one
        super().__init__(f"`{command}` exited with status {exit_code}")
