"""Fleet releases: which one an install run installs, and what the ledger (ledger.py) says
each server did with it.

A fleet release's content is every deployment server's packages (the build's digests), the
services the manifest defines and the overlay generation, as one digest (`content_of`). An
install run that installs the content of the newest release continues it: a re-run finishes
an interrupted or failed rollout under the same id, and a run with nothing new makes no new
release; anything else is a new release, named after the run that makes it (`InstallRecord`).
The id is the release's name on every server it touches; a server with nothing to change
records that it runs it (remote/receipt.py).

`fleet_view` says which release each server runs and whether servers of one role differ:
what `deploy status` fails on, and what every deploy summary warns of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flinger.engine import ledger
from flinger.engine.results import ServerResult, Status
from flinger.manifest.model import Manifest
from flinger.overlay.generation import Generations, load_generations
from flinger.overlay.store import reader
from flinger.protocol.results import BuiltPackage, HistoryResult, SelfRollback
from flinger.topology.model import Topology

if TYPE_CHECKING:
    from flinger.engine.run import Run


def content_of(
    topology: Topology, manifest: Manifest, built: Mapping[str, BuiltPackage], generation: int
) -> tuple[str, dict[str, str]]:
    """The content digest of what an install of the whole fleet puts in place, and the
    packages' digests by name."""
    per_server: dict[str, dict[str, str]] = {}
    packages: dict[str, str] = {}
    for server in topology.deployment_servers():
        mine = {p.name: built[p.name].sha256 if p.name in built else "" for p in manifest.packages_for(server.roles)}
        per_server[server.name] = mine
        packages.update(mine)
    services = {p.name: dataclasses.asdict(p.service) for p in manifest.packages.values() if p.service is not None}
    doc = {"servers": per_server, "services": services, "generation": generation}
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), dict(sorted(packages.items()))


def server_state(result: ServerResult) -> str:
    """What a server's final result in an install run means for the release it runs."""
    switched = result.switch is not None and result.switch.switched
    if result.status is Status.OK:
        return "switched" if switched else "unchanged"
    if result.status is Status.FAILED and switched:
        return "switched"  # installed, and undoing it failed: it still runs the new release
    return {
        Status.ROLLED_BACK: "rolled back",
        Status.INTERRUPTED: "interrupted",
        Status.SKIPPED: "skipped",
        Status.NOT_SWITCHED: "not switched",
        Status.UNREACHABLE: "unreachable",
    }.get(result.status, "failed")


class InstallRecord:
    """One install run's part in the ledger: the fleet release it installs (decided once,
    when the first server needs it, since the build's digests come from the builder), each
    server's outcome as it comes, and how the run ended."""

    def __init__(self, state_dir: Path, chosen: list[str]) -> None:
        self.state_dir = state_dir
        self.chosen = chosen
        self.release: str | None = None
        self.generation = 0  # the overlay generation of the release
        self.previous: dict[str, str | None] = {}  # the release each server ran before, as the ledger knew
        self.had: dict[str, dict[str, str]] = {}  # that release's packages (name -> sha256), if known
        self.bare: set[str] = set()  # servers the ledger never saw, or last saw running no release
        self._lock = threading.Lock()

    def release_for(self, run: Run) -> str:
        with self._lock:
            if self.release is None:
                self.release = self._decide(run)
            return self.release

    def _decide(self, run: Run) -> str:
        generation = load_generations(reader(run.topology.state_dir)).generation
        content, packages = content_of(run.topology, run.manifest, run.store.built(), generation)
        with ledger.locked(self.state_dir) as known:
            self.previous = {s: known.running.get(s) for s in self.chosen}
            self.had = {s: dict(known.releases[r].packages) for s, r in self.previous.items() if r in known.releases}
            self.bare = {s for s in self.chosen if s not in known.running or s in known.bare}
            newest = known.newest()
            events: list[dict[str, Any]] = []
            self.generation = generation
            if newest is not None and newest.content == content and newest.state != "rolled back":
                release = newest.id  # the same content again: finish that release
            else:
                release = run.run_id
                events.append({"event": "release", "id": release, "content": content, "generation": generation,
                               "packages": packages, "by": run.holder})  # fmt: skip
            events.append({"event": "run", "id": release, "run": run.run_id, "kind": "install",
                           "servers": self.chosen, **ledger.this_process()})  # fmt: skip
            ledger.append(self.state_dir, *events, sync=True)
        return release

    def likely_lacks(self, server: str, packages: Mapping[str, str]) -> list[str]:
        """Of `packages` (name -> sha256), those `server` most likely does not have: all but
        those of the release the ledger last saw it run; all for a server it never saw or
        saw running nothing; none when it does not know (a run cut short). A guess, only to
        deliver ahead; the server's own answer decides."""
        if server in self.had:
            return [name for name, digest in packages.items() if self.had[server].get(name) != digest]
        return list(packages) if server in self.bare else []

    def server_ran(self, run: Run, server: str, release: str | None, switched: bool) -> None:
        """A server now runs this run's release (as its `release`), switched or not."""
        if self.release is None:
            return
        ledger.append(self.state_dir, {
            "event": "server", "id": self.release, "run": run.run_id, "server": server,
            "state": "switched" if switched else "unchanged", "release": release,
            "previous": self.previous.get(server),
        })  # fmt: skip

    def finish(self, run: Run, results: Iterable[ServerResult], *, stopped: bool) -> str | None:
        """Each server's final state (what the rollout undid included) and the run's end;
        the release's state, None when the run never got as far as deciding it."""
        if self.release is None:
            return None
        results = list(results)
        events: list[dict[str, Any]] = []
        for r in results:
            state = server_state(r)
            if state in ("switched", "unchanged"):
                continue  # written as it came
            events.append({"event": "server", "id": self.release, "run": run.run_id, "server": r.server,
                           "state": state, "previous": self.previous.get(r.server)})  # fmt: skip
        ledger.append(self.state_dir, *events)
        statuses = {r.status for r in results}
        if stopped:
            state, note = "interrupted", f"stopped by {run.brake.by}"
        elif Status.ROLLED_BACK in statuses:
            state, note = "rolled back", "the rollout stopped and was undone"
        elif statuses - {Status.OK}:
            state, note = "failed", "not every chosen server installed it"
        else:
            known = ledger.read_ledger(self.state_dir)
            missing = [s.name for s in run.topology.deployment_servers() if known.running.get(s.name) != self.release]
            state = "partial" if missing else "completed"
            note = f"not yet on {', '.join(missing)}" if missing else ""
        ledger.append(self.state_dir, {"event": "end", "id": self.release, "run": run.run_id, "state": state,
                                       "note": note}, sync=True)  # fmt: skip
        return state


def observe(state_dir: Path, run_id: str, seen: Mapping[str, str | None]) -> None:
    """What servers said they run, where the ledger thought otherwise."""
    known = ledger.read_ledger(state_dir)
    events = [
        {"event": "observed", "run": run_id, "server": server, "id": release}
        for server, release in sorted(seen.items())
        if known.running.get(server, "") != release or (release is None and server not in known.bare)
    ]
    if events:
        ledger.append(state_dir, *events)


def record_self_rollbacks(state_dir: Path, run_id: str, done: Mapping[str, SelfRollback]) -> None:
    """Servers that switched to a fleet release and, never confirmed, switched themselves
    back (remote/confirm.py): in the ledger once each."""
    known = ledger.read_ledger(state_dir)
    events = []
    for server, back in sorted(done.items()):
        release = known.releases.get(back.fleet_release or "")
        mark = release.servers.get(server) if release else None
        if release is None or (mark is not None and mark.state == "rolled itself back" and mark.at == back.at):
            continue
        events.append({"event": "self_rollback", "id": release.id, "run": run_id, "server": server,
                       "release": back.release, "to": back.to, "at": back.at, "ok": back.ok})  # fmt: skip
    if events:
        ledger.append(state_dir, *events)


@dataclass
class FleetView:
    """Which fleet release each server runs (None: nothing installed or not known), and the
    roles whose servers run different ones."""

    running: dict[str, str | None]
    skew: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # role -> release -> servers

    @property
    def releases(self) -> dict[str, list[str]]:
        by: dict[str, list[str]] = {}
        for server, release in self.running.items():
            by.setdefault(release or "none", []).append(server)
        return by

    def problem(self) -> str | None:
        """One line naming who runs what in each role that runs more than one release."""
        if not self.skew:
            return None
        parts = [
            f"role {role}: " + "; ".join(f"{release} on {', '.join(servers)}" for release, servers in by.items())
            for role, by in sorted(self.skew.items())
        ]
        return "servers of one role run different releases: " + " | ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {"running": self.running, "releases": self.releases, "skew": self.skew}


def fleet_view(topology: Topology, running: Mapping[str, str | None]) -> FleetView:
    """The fleet as `running` (server -> fleet release, of the servers that answered) shows it."""
    view = FleetView(dict(running))
    for role in sorted({r for name in running for r in topology.servers[name].roles}):
        by: dict[str, list[str]] = {}
        for name, release in running.items():
            if role in topology.servers[name].roles:
                by.setdefault(release or "none", []).append(name)
        if len(by) > 1:
            view.skew[role] = by
    return view


def current_fleet(history: HistoryResult) -> str | None:
    """The fleet release a server's history says it runs (None: nothing installed)."""
    current = next((r for r in history.releases if r.current), None)
    if not history.installed or current is None:
        return None
    return current.fleet_releases[-1] if current.fleet_releases else current.release


SHOWN = 20  # fleet releases `deploy history` lists, newest first


def fleet_history(
    known: ledger.Ledger, histories: Mapping[str, HistoryResult], running: Mapping[str, str | None]
) -> list[dict[str, Any]]:
    """The fleet's releases, newest first: the ledger's (its state) and any the servers keep
    that this client's ledger does not know, each with the servers that run it and those
    that keep it (could roll back to it)."""
    kept: dict[str, set[str]] = {}
    for server, history in histories.items():
        for info in history.releases:
            for fleet_id in info.fleet_releases or [info.release]:
                kept.setdefault(fleet_id, set()).add(server)
    rows = []
    for fleet_id in sorted(set(known.releases) | set(kept), reverse=True)[:SHOWN]:
        release = known.releases.get(fleet_id)
        rows.append({
            "id": fleet_id,
            "state": release.state if release else "unknown",
            "note": release.note if release else "not in this client's ledger",
            "created": release.created if release else "",
            "by": release.by if release else "",
            "running": sorted(s for s, r in running.items() if r == fleet_id),
            "kept": sorted(kept.get(fleet_id, set())),
            "rolled_itself_back": sorted(s for s, m in (release.servers if release else {}).items()
                                         if m.state == "rolled itself back"),
        })  # fmt: skip
    return rows


def to_forget(
    known: ledger.Ledger, generations: Generations, release: str, servers: list[str]
) -> tuple[int, list[str]]:
    """Once `release` is completed: the newest generation up to its own that rotated secrets
    out, and the servers that have not yet removed the overlays from before it (0 and []
    when there is nothing to forget)."""
    done = known.releases.get(release)
    if done is None or done.state != "completed" or done.generation is None:
        return 0, []
    rotations = [g for g in generations.rotated if g <= done.generation]
    if not rotations:
        return 0, []
    newest = max(rotations)
    return newest, [s for s in servers if s not in known.forgot.get(newest, set())]
