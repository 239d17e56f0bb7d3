"""The fleet ledger: the client's record of the fleet's releases and of what became of each.

A fleet release is what install runs put on the deployment servers under one id, the same on
every server (engine/fleet.py decides it). The ledger is
`.flinger/<deployment>/releases/ledger.jsonl` (0600, in a 0700 directory), append-only: one
JSON line per event, written as it happens, so a client killed with -9 leaves every event
up to its death, and reading folds them:

  release   a new fleet release: id, content (digest), generation, packages, by, at
  run       a run starts working on a release: id, run, kind (install | rollback), pid,
            the servers it chose; a rollback also names the releases it leaves (`from`)
  server    what a server ended on in that run: state, its own name of the release, and the
            fleet release it ran before (`previous`)
  observed  what a server said it runs, read by any later command (`status`, `history`, an
            install or rollback): the ledger follows the servers, not the other way round
  end       how the run ended: completed | partial | failed | rolled back | interrupted
  state     a release's state set by a later run (a rollback leaves it "rolled back")
  forgot    the servers that removed the overlays older than a generation that rotated
            secrets out (once the fleet completed a release of that generation)

A run with no `end` whose process is gone was interrupted (its client lost); what its
servers really did is what they say next time (`observed`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flinger.secrets.private_files import private_dir

# What a server did in a run (server events), and what a run made of its release (end events).
ON_RELEASE = ("switched", "unchanged", "returned")  # it runs the event's release afterwards
LEFT_AS_IT_WAS = ("failed", "rolled back", "interrupted", "skipped", "unreachable")
END_STATES = ("completed", "partial", "failed", "rolled back", "interrupted")


@dataclass
class ServerMark:
    """What one server did with a release, in the last run that touched it there."""

    state: str
    run: str
    release: str | None = None  # the server's own name of the release (its releases/<name>)
    previous: str | None = None  # the fleet release it ran before that run
    at: str = ""


@dataclass
class FleetRelease:
    id: str
    content: str = ""
    generation: int | None = None
    packages: dict[str, str] = field(default_factory=dict)  # name -> sha256
    created: str = ""
    by: str = ""
    state: str = "installing"  # installing | END_STATES
    note: str = ""  # why it is in that state, when it says more than the state
    runs: list[str] = field(default_factory=list)
    servers: dict[str, ServerMark] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "note": self.note,
            "created": self.created,
            "by": self.by,
            "generation": self.generation,
            "packages": self.packages,
            "runs": self.runs,
            "servers": {name: vars(mark) for name, mark in sorted(self.servers.items())},
        }


@dataclass
class _RunInfo:
    release: str
    kind: str
    pid: int
    host: str
    start: str | None
    servers: list[str]
    ended: bool = False


@dataclass
class Ledger:
    """The folded ledger: the releases (oldest first) and which release each server runs,
    as far as this client knows (None: unknown, e.g. its run was cut short)."""

    path: Path
    releases: dict[str, FleetRelease] = field(default_factory=dict)
    running: dict[str, str | None] = field(default_factory=dict)
    runs: dict[str, _RunInfo] = field(default_factory=dict)
    forgot: dict[int, set[str]] = field(default_factory=dict)  # generation -> servers that forgot before it
    bare: set[str] = field(default_factory=set)  # servers last seen running no release (None there: known)

    def newest(self) -> FleetRelease | None:
        return next(reversed(self.releases.values()), None)

    def order(self, release: str) -> int:
        """Where `release` comes in the ledger (-1: not in it)."""
        return list(self.releases).index(release) if release in self.releases else -1

    # -- folding ---------------------------------------------------------------------------
    def _fold(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        fold = _FOLDS.get(str(kind))
        if fold is not None:
            fold(self, event)

    def _release(self, e: dict[str, Any]) -> None:
        self.releases[e["id"]] = FleetRelease(
            id=e["id"], content=e.get("content", ""), generation=e.get("generation"),
            packages=dict(e.get("packages", {})), created=e.get("at", ""), by=e.get("by", ""),
        )  # fmt: skip

    def _run(self, e: dict[str, Any]) -> None:
        info = _RunInfo(e["id"], e.get("kind", "install"), int(e.get("pid", 0)), e.get("host", ""),
                        e.get("start"), list(e.get("servers", [])))  # fmt: skip
        self.runs[e["run"]] = info
        release = self.releases.get(e["id"])
        if release is not None and info.kind == "install":
            release.runs.append(e["run"])
            release.state, release.note = "installing", ""
        for server in info.servers:  # until it says, a chosen server is on an unknown release
            if info.kind == "install":
                self.running[server] = None
                self.bare.discard(server)

    def _server(self, e: dict[str, Any]) -> None:
        mark = ServerMark(e["state"], e["run"], e.get("release"), e.get("previous"), e.get("at", ""))
        release = self.releases.get(e["id"])
        if release is not None:
            release.servers[e["server"]] = mark
        self.running[e["server"]] = e["id"] if mark.state in ON_RELEASE else mark.previous
        self.bare.discard(e["server"])

    def _self_rollback(self, e: dict[str, Any]) -> None:
        """A server that switched to the release and, never confirmed, switched itself back
        (what it runs now is the `observed` or `server` event's to say)."""
        release = self.releases.get(e["id"])
        if release is not None:
            release.servers[e["server"]] = ServerMark("rolled itself back", e["run"], e.get("release"),
                                                      e.get("to"), e.get("at", ""))  # fmt: skip

    def _observed(self, e: dict[str, Any]) -> None:
        self.running[e["server"]] = e.get("id")
        if e.get("id") is None:
            self.bare.add(e["server"])
        else:
            self.bare.discard(e["server"])

    def _end(self, e: dict[str, Any]) -> None:
        info = self.runs.get(e["run"])
        if info is not None:
            info.ended = True
        release = self.releases.get(e["id"])
        if release is not None and (info is None or info.kind == "install"):
            release.state, release.note = e["state"], e.get("note", "")

    def _state(self, e: dict[str, Any]) -> None:
        release = self.releases.get(e["id"])
        if release is not None:
            release.state, release.note = e["state"], e.get("note", "")

    def _forgot(self, e: dict[str, Any]) -> None:
        self.forgot.setdefault(int(e["generation"]), set()).update(e.get("servers", []))

    def _lost_runs(self) -> None:
        """A run that never ended and whose process is gone: its release was interrupted."""
        for run_id, info in self.runs.items():
            if info.ended or _alive(info):
                continue
            release = self.releases.get(info.release)
            if info.kind == "install" and release is not None and release.state == "installing":
                release.state, release.note = "interrupted", f"the client of run {run_id} was lost"


_FOLDS = {
    "release": Ledger._release,
    "run": Ledger._run,
    "server": Ledger._server,
    "observed": Ledger._observed,
    "self_rollback": Ledger._self_rollback,
    "end": Ledger._end,
    "state": Ledger._state,
    "forgot": Ledger._forgot,
}


def ledger_path(state_dir: Path) -> Path:
    return state_dir / "releases" / "ledger.jsonl"


def read_ledger(state_dir: Path) -> Ledger:
    """The ledger as far as it was written (a torn last line, from a killed client, is skipped)."""
    path = ledger_path(state_dir)
    ledger = Ledger(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ledger
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                ledger._fold(event)
    ledger._lost_runs()
    return ledger


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[Ledger]:
    """The ledger, read under an exclusive lock (two runs on this client decide one after the other)."""
    path = ledger_path(state_dir)
    private_dir(path.parent.parent)
    private_dir(path.parent)
    with open(path.parent / "ledger.lock", "a", encoding="utf-8") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield read_ledger(state_dir)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def append(state_dir: Path, *events: dict[str, Any], sync: bool = False) -> None:
    """Add events to the ledger, each one whole line (O_APPEND), stamped with the time."""
    path = ledger_path(state_dir)
    private_dir(path.parent.parent)
    private_dir(path.parent)
    at = now()
    data = "".join(json.dumps({**e, "at": e.get("at", at)}, sort_keys=True) + "\n" for e in events)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = "\n" + data  # after a line torn by a killed client: start a line of our own
        os.write(fd, data.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def this_process() -> dict[str, Any]:
    """What tells this process apart later: pid, host and (on Linux) its start time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(info: _RunInfo) -> bool:
    """Whether the process of a run still runs (on another host: assumed so)."""
    if info.host and info.host != socket.gethostname():
        return True
    if info.pid <= 0:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return info.start is None or _start_time(info.pid) == info.start
