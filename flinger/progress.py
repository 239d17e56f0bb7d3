"""Typed progress events, and the sinks that show or keep them.

Work on a server (or a package, in a build) reports what it does as events: it `Started`,
entered a `Step`, has a short `Info`, printed an `Output` line, `Finished` with a status.
One `Events` bus carries each event to every sink of the run: the live board (ui.py), the
per-server run logs and the run's events.jsonl (`RunLog`). Each server's reporter also feeds
a `Timeline`: the steps, with their durations, that the server's --json result carries.
Producers never know who listens.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from flinger.secrets.private_files import private_dir


@dataclass(frozen=True)
class Started:
    """`name` (a server, or a package in a build) began its work."""

    name: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Step:
    """`name` entered a step: `connect`, `lock`, `push`, `install: service: db`, …"""

    name: str
    step: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Info:
    """A short note that replaces the last one (bytes pushed, rsync progress)."""

    name: str
    text: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Output:
    """One line of output from the remote side, or a line flinger says about `name`."""

    name: str
    text: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Finished:
    """`name` is done: `state` is a final state (ok, failed, unreachable, rolled back, …)."""

    name: str
    state: str
    at: float = field(default_factory=time.monotonic)


Event = Started | Step | Info | Output | Finished


Sink = Callable[[Event], None]  # a function, or an object with __call__, that takes events


def as_record(event: Event) -> dict[str, str]:
    """An event as a flat JSON-able record (the kind, the row, what it says)."""
    match event:
        case Started(name=name):
            return {"event": "started", "name": name}
        case Step(name=name, step=step):
            return {"event": "step", "name": name, "step": step}
        case Info(name=name, text=text):
            return {"event": "info", "name": name, "text": text}
        case Output(name=name, text=text):
            return {"event": "output", "name": name, "text": text}
        case Finished(name=name, state=state):
            return {"event": "finished", "name": name, "state": state}
    raise TypeError(f"not a progress event: {event!r}")


class Events:
    """The bus: every event goes to every sink, in the order emitted, one event at a time."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def __call__(self, event: Event) -> None:
        with self._lock:
            for sink in self._sinks:
                sink(event)


def nowhere(_event: Event) -> None:
    """The sink of a run that nobody watches."""


def _private_append(path: Path) -> TextIO:
    """`path` opened for appending, made 0600 if it is new."""
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8")


class RunLog:
    """Keeps a run's events: `<name>.log` per server (steps, states and output, timestamped,
    for people) and `events.jsonl` (every event, for machines): 0600 files in 0700 directories
    (`.flinger/`, the deployment's, `logs/` and the run's own)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if directory.parent.name == "logs":
            private_dir(directory.parent)
        private_dir(directory)

    def __call__(self, event: Event) -> None:
        wall = dt.datetime.now(dt.UTC)
        record = as_record(event)
        with _private_append(self.directory / "events.jsonl") as fh:
            fh.write(json.dumps({"time": wall.isoformat(timespec="milliseconds"), **record}) + "\n")
        text = {
            "started": "state: running",
            "step": f"step: {record.get('step')}",
            "finished": f"state: {record.get('state')}",
        }.get(record["event"], record.get("text", ""))
        if record["event"] == "info":
            return  # a passing note (progress figures): events.jsonl has it
        with _private_append(self.directory / f"{event.name}.log") as fh:
            fh.write(f"{wall.strftime('%H:%M:%S')} {text}\n")


class Timeline:
    """The steps of each row with how long each took, for the --json results."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[str, float]] = {}
        self.steps: dict[str, list[dict[str, object]]] = {}

    def _close(self, name: str, at: float) -> None:
        if name in self._open:
            step, since = self._open.pop(name)
            self.steps.setdefault(name, []).append({"step": step, "seconds": round(at - since, 3)})

    def __call__(self, event: Event) -> None:
        if isinstance(event, Step):
            self._close(event.name, event.at)
            self._open[event.name] = (event.step, event.at)
        elif isinstance(event, Finished):
            self._close(event.name, event.at)

    def of(self, name: str) -> list[dict[str, object]]:
        return list(self.steps.get(name, []))
