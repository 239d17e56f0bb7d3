"""`deploy rollback` of the fleet: every chosen server back to one fleet release.

First every chosen server says what it keeps (`history`, nothing changes); then the target
is chosen (`choose_rollback`): the release named with --to, else the fleet's last
*completed* release before the newest one a chosen server runs (never one that was rolled
back or interrupted: the fleet ledger, ledger.py, knows which). It must be kept on every
chosen server, and must not bring back secrets that a later overlay generation rotated out
unless the operator asks for it; otherwise the command refuses, before any server changes.
Then `FleetRollback` switches the servers in install's waves (a service others start `after`
goes first), batch by batch as the strategy says, and the ledger records what each did: a
release left by every server is "rolled back".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flinger.engine import ledger
from flinger.engine.fleet import current_fleet
from flinger.engine.operations import Rollback
from flinger.engine.results import ServerResult, Status
from flinger.errors import ExitStatus, FlingerError, UsageError
from flinger.overlay.generation import Generations, load_generations
from flinger.overlay.store import reader
from flinger.protocol.codec import decode
from flinger.protocol.results import HistoryResult, ReleaseInfo
from flinger.topology.model import Server

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.run import Run

RESTORE_FLAG = "--restore-rotated-secrets"


class _Unreachable(FlingerError):
    """A chosen server could not say what it keeps: no rollback starts (exit 4)."""

    exit_status = ExitStatus.UNREACHABLE


@dataclass
class RollbackChoice:
    release: str  # the fleet release every chosen server goes back to
    targets: dict[str, str]  # server -> its own name of that release
    leaving: dict[str, str | None]  # server -> the fleet release it runs now
    rotated: list[str] = field(default_factory=list)  # secrets it brings back (with RESTORE_FLAG)


def _kept_as(history: HistoryResult, release: str) -> str | None:
    """The server's own name of a release that served fleet release `release` and can run."""
    usable = [i for i in history.releases if i.current or i.can_roll_back_to]
    for info in sorted(usable, key=lambda i: not i.current):
        if release in (info.fleet_releases or [info.release]):
            return info.release
    return None


def _served(info: ReleaseInfo) -> list[str]:
    return info.fleet_releases or [info.release]


def _plain_target(known: ledger.Ledger, running: Mapping[str, str | None]) -> str:
    """The fleet's last completed release before the newest one a chosen server runs."""
    unknown = sorted({r for r in running.values() if r is not None and r not in known.releases})
    if unknown:
        raise UsageError(
            f"this client's fleet ledger does not know release {', '.join(unknown)} (run by "
            f"{', '.join(s for s, r in running.items() if r in unknown)}): name the release to go back to with "
            "--to (deploy history lists them); nothing was changed"
        )
    current = max((r for r in running.values() if r is not None), key=known.order)
    before = [r for r in reversed(known.releases) if known.order(r) < known.order(current)]
    completed = [r for r in before if known.releases[r].state == "completed"]
    if not completed:
        states = ", ".join(f"{r} {known.releases[r].state}" for r in before[:5]) or "none"
        raise UsageError(
            f"no completed fleet release before {current} in this client's ledger (earlier: {states}): name "
            "one with --to; nothing was changed"
        )
    return completed[0]


def choose_rollback(
    known: ledger.Ledger,
    histories: Mapping[str, HistoryResult],
    to: str | None,
    generations: Generations,
    *,
    restore_rotated: bool = False,
) -> RollbackChoice:
    """The one release every chosen server goes back to, or UsageError (exit 2) saying why
    there is none; see the module docstring."""
    running = {server: current_fleet(h) for server, h in histories.items()}
    bare = sorted(s for s, r in running.items() if r is None)
    if bare:
        raise UsageError(f"nothing is installed on {', '.join(bare)}: nothing to roll back there; nothing was changed")
    target = to or _plain_target(known, running)
    # A release the ledger knows is judged by its secrets first (once the fleet completed a
    # rotation, the servers' copies lost their overlay: the rotation is the reason); one it
    # does not know has no generation to judge: whether it is kept everywhere says it all.
    rotated = _rotated(known, generations, target, running) if target in known.releases else []
    _refuse_rotated(target, rotated, restore_rotated)
    targets: dict[str, str] = {}
    lacking: list[str] = []
    for server, history in sorted(histories.items()):
        local = _kept_as(history, target)
        if local is None:
            keeps = [r for i in history.releases if i.current or i.can_roll_back_to for r in _served(i)]
            gone = any(i.overlay_removed and target in _served(i) for i in history.releases)
            why = "; its copy lost its overlay once the fleet completed a rotation" if gone else ""
            lacking.append(f"{server} keeps {', '.join(keeps) or 'nothing'}{why}")
        else:
            targets[server] = local
    if lacking:
        raise UsageError(
            f"release {target} is not kept on every chosen server ({'; '.join(lacking)}): no common release to "
            "go back to; nothing was changed"
        )
    if target not in known.releases:  # its servers' receipts say which overlay generation it has
        kept = [i.overlay_generation for h in histories.values() for i in h.releases
                if target in _served(i) and i.overlay_generation is not None]  # fmt: skip
        rotated = generations.rotated_since(min(kept), generations.generation) if kept else []
        _refuse_rotated(target, rotated, restore_rotated)
    return RollbackChoice(target, targets, dict(running), rotated)


def _refuse_rotated(target: str, rotated: list[str], restore: bool) -> None:
    if rotated and not restore:
        raise UsageError(
            f"release {target} predates the rotation of {', '.join(rotated)}: rolling back to it would put the "
            f"rotated-out secrets back in use. Pass {RESTORE_FLAG} to do it all the same; nothing was changed"
        )


def _rotated(
    known: ledger.Ledger, generations: Generations, target: str, running: Mapping[str, str | None]
) -> list[str]:
    """What the overlay generations after the target's (up to the newest a server runs) rotated out."""

    def generation(release: str | None) -> int:
        found = known.releases.get(release) if release else None
        return found.generation if found is not None and found.generation is not None else 0

    newest = max((generation(r) for r in running.values()), default=0) or generations.generation
    return generations.rotated_since(generation(target), max(newest, generation(target)))


class FleetRollback(Rollback):
    """The operation of `deploy rollback`: it starts by asking every chosen server what it
    keeps and choosing the one release they go back to (refusing, before any change, when
    there is none); then each server goes to its name of it, in install's waves; the ledger
    records what each did."""

    def __init__(
        self, to: str | None, servers: list[Server], waves: list[list[str]], *, restore_rotated: bool = False
    ) -> None:
        super().__init__()
        self.to = to
        self.chosen = servers
        self._waves = waves
        self.restore_rotated = restore_rotated
        self.choice: RollbackChoice | None = None

    def waves(self, servers: list[Server]) -> list[list[str]]:
        chosen = {s.name for s in servers}
        waves = [[n for n in wave if n in chosen] for wave in self._waves]
        return [w for w in waves if w]

    def start(self, run: Run, at_once: int) -> None:
        from flinger.engine.execute import execute
        from flinger.engine.operations import History

        asked = execute(run, History(), self.chosen)
        silent = [r for r in asked if r.status is not Status.OK]
        if silent:
            raise _Unreachable(
                "nothing was rolled back: " + "; ".join(f"{r.server}: {r.message}" for r in silent)
                + " (leave a server out with --servers to roll back the others)"
            )  # fmt: skip
        histories = {r.server: decode(HistoryResult, r.details, "history", strict=False) for r in asked}
        known = ledger.read_ledger(run.topology.state_dir)
        generations = load_generations(reader(run.topology.state_dir))
        self.choice = choose_rollback(known, histories, self.to, generations, restore_rotated=self.restore_rotated)
        self.targets, self.fleet_release = self.choice.targets, self.choice.release
        ledger.append(run.topology.state_dir, {
            "event": "run", "id": self.choice.release, "run": run.run_id, "kind": "rollback",
            "servers": sorted(self.choice.targets), "from": sorted({r for r in self.choice.leaving.values() if r}),
            **ledger.this_process(),
        }, sync=True)  # fmt: skip

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        assert self.choice is not None, "start() chose the release"
        details = super().on_server(run, server, report)
        ledger.append(run.topology.state_dir, {
            "event": "server", "id": self.choice.release, "run": run.run_id, "server": server.name,
            "state": "returned", "release": details.get("release"), "previous": self.choice.leaving.get(server.name),
        })  # fmt: skip
        return details

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        if self.choice is None:
            return {}
        state_dir = run.topology.state_dir
        events: list[dict[str, Any]] = [
            {"event": "server", "id": self.choice.release, "run": run.run_id, "server": r.server,
             "state": "interrupted" if r.status is Status.INTERRUPTED else "failed",
             "previous": self.choice.leaving.get(r.server)}
            for r in results if r.status is not Status.OK
        ]  # fmt: skip
        done = all(r.status is Status.OK for r in results)
        ended = "completed" if done else ("interrupted" if run.brake.pulled else "failed")
        events.append({"event": "end", "id": self.choice.release, "run": run.run_id, "kind": "rollback",
                       "state": ended})  # fmt: skip
        ledger.append(state_dir, *events)
        known = ledger.read_ledger(state_dir)
        still = set(known.running.values())
        left = sorted({r for r in self.choice.leaving.values() if r and r != self.choice.release and r not in still})
        ledger.append(state_dir, *[
            {"event": "state", "id": r, "state": "rolled back", "run": run.run_id,
             "note": f"the fleet went back to {self.choice.release}"}
            for r in left if r in known.releases
        ], sync=True)  # fmt: skip
        return {"fleet_release": self.choice.release, "rolled_back_from": left, "restored_rotated": self.choice.rotated}
