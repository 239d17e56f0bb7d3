"""The deploy subcommands besides install, one class each: what it asks each server (its
plan), what it does with the answer, and the line the summary shows.

Every operation has a `name`, `on_server(run, server, report) -> details`, the order a
rollout takes its servers in (`waves`) and what it does once before them (`start`).
execute.py runs them on the servers, through a strategy when they roll out in batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from flinger.engine import report as lines
from flinger.engine.fleet import current_fleet, fleet_history, fleet_view, observe, record_self_rollbacks
from flinger.engine.ledger import read_ledger
from flinger.engine.remote import into_report, run_tool
from flinger.engine.results import ServerResult, Switch
from flinger.engine.results import Status as ResultStatus
from flinger.engine.session import open_session
from flinger.errors import RemoteCommandError
from flinger.protocol.codec import decode, encode
from flinger.protocol.plans import ForgetPlan, InventoryPlan, LockPlan, RollbackPlan, UninstallPlan
from flinger.protocol.results import (
    ForgetResult,
    HistoryResult,
    LockResult,
    SelfRollback,
    StatusResult,
    SwitchResult,
    UninstallResult,
)
from flinger.topology.model import Server

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.run import Run


class Operation(Protocol):
    name: str
    # False for an operation that only asks (status, history, the dry run): one that changes
    # servers starts on none while a chosen server is known to be untrusted (execute.py).
    changes_servers: bool

    def waves(self, servers: list[Server]) -> list[list[str]]:
        """The servers in the order a rollout takes them (their services' dependencies)."""
        ...

    def start(self, run: Run, at_once: int) -> None:
        """What the run does once, before the first server; up to `at_once` servers will
        run the operation at the same time."""
        ...

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """Do the operation on one server; what --json says of it (with a `summary` line)."""
        ...

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        """What the run does once, after the last server: what --json adds of the fleet
        (a `fleet_problem` line fails the command)."""
        ...


@runtime_checkable
class TwoPhase(Operation, Protocol):
    """An operation that can stop each server just before it changes what runs (`prepare_on`),
    so a rollout switches a batch only once every server of it is ready (`commit_on`), and
    leaves them all as they were when one is not (`abort_on`)."""

    def prepare_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """Everything before the change; `prepared` in the answer when a change waits."""
        ...

    def commit_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]: ...

    def abort_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]: ...


class OnEveryServer:
    """What most operations do besides their own step: all servers in one wave, no start."""

    changes_servers = True

    def waves(self, servers: list[Server]) -> list[list[str]]:
        return [[s.name for s in servers]]

    def start(self, run: Run, at_once: int) -> None:
        pass

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        return {}


R = TypeVar("R", StatusResult, HistoryResult)


def _inventory(run: Run, server: Server, report: Reporter, command: str, kind: type[R]) -> R:
    """What `command` (status or history) answers of the server's install dir."""
    session = open_session(run, server, report, step=command)
    plan = InventoryPlan(session.install_dir)
    return run_tool(session.conn, session.tool, command, plan, kind, on_event=into_report(report))


class Status(OnEveryServer):
    """`deploy status`: what each server runs; a service not running or unhealthy fails it."""

    name = "status"
    changes_servers = False

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        result = _inventory(run, server, report, "status", StatusResult)
        details: dict[str, Any] = {**encode(result), "summary": lines.status_line(result)}
        report.details.update(details)
        if result.self_rollback is not None:
            report.info(lines.self_rollback_line(result.self_rollback))
        lines.require_running(result, report)
        return details

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        """The fleet view: servers of one role on different releases fail the command."""
        running = {r.server: r.details.get("fleet_release") for r in results if "installed" in r.details}
        observe(run.topology.state_dir, run.run_id, running)
        undone = {r.server: r.details["self_rollback"] for r in results if r.details.get("self_rollback")}
        record_self_rollbacks(run.topology.state_dir, run.run_id,
                              {s: decode(SelfRollback, d, "self_rollback") for s, d in undone.items()})  # fmt: skip
        view = fleet_view(run.topology, running)
        problem = view.problem()
        return {"fleet": view.as_json(), **({"fleet_problem": problem} if problem else {})}


class History(OnEveryServer):
    """`deploy history`: the releases kept on each server, and the fleet's releases (the
    ledger's, with where each runs and is kept)."""

    name = "history"
    changes_servers = False

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        result = _inventory(run, server, report, "history", HistoryResult)
        return {**encode(result), "summary": lines.history_line(result)}

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        answered = {r.server: decode(HistoryResult, r.details, "history", strict=False) for r in results
                    if r.status is ResultStatus.OK}  # fmt: skip
        running = {name: current_fleet(h) for name, h in answered.items()}
        observe(run.topology.state_dir, run.run_id, running)
        return {"fleet_releases": fleet_history(read_ledger(run.topology.state_dir), answered, running)}


class Rollback(OnEveryServer):
    """`deploy rollback`: each server back to `to`, or to the release before its current one;
    `targets` gives some servers their own (what a failed rollout undoes)."""

    name = "rollback"

    def __init__(
        self, to: str | None = None, targets: dict[str, str] | None = None, fleet_release: str | None = None
    ) -> None:
        self.to = to
        self.targets = targets or {}
        self.fleet_release = fleet_release  # the fleet release the servers serve once back (None: as before)

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        session = open_session(run, server, report, step="rollback")
        to = self.targets.get(server.name, self.to)
        plan = RollbackPlan(session.install_dir, run.holder, to=to, acquire_wait=run.settings.lock_wait,
                            fleet_release=self.fleet_release)  # fmt: skip
        try:
            result = run_tool(session.conn, session.tool, "rollback", plan, SwitchResult,
                              on_event=into_report(report), on_text=report.line)  # fmt: skip
        except RemoteCommandError as exc:
            raise lines.explained(exc, report) from None
        report.switch = Switch(result.release, result.previous_release, result.changed)
        return {**encode(result), "summary": lines.rollback_line(result)}


class Forget(OnEveryServer):
    """Remove the overlays of kept releases older than overlay generation `before`: a
    rotation the whole fleet completed replaced the secrets they hold (remote/forget.py)."""

    name = "forget"

    def __init__(self, before: int) -> None:
        self.before = before

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        session = open_session(run, server, report, step=self.name)
        plan = ForgetPlan(session.install_dir, run.holder, self.before, acquire_wait=run.settings.lock_wait)
        result = run_tool(session.conn, session.tool, "forget", plan, ForgetResult, on_event=into_report(report))
        gone = ", ".join(result.forgotten) or "none kept"
        return {**encode(result), "summary": f"rotated-out secrets removed from releases: {gone}"}


class Uninstall(OnEveryServer):
    """`deploy uninstall`: stop and remove exactly what flinger installed, under the deploy lock."""

    name = "uninstall"
    clean = False

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        session = open_session(run, server, report, step=self.name)
        plan = UninstallPlan(session.install_dir, run.holder, staging_dir=session.staging if self.clean else None,
                             clean=self.clean, acquire_wait=run.settings.lock_wait)  # fmt: skip
        result = run_tool(session.conn, session.tool, "uninstall", plan, UninstallResult,
                          on_event=into_report(report), on_text=report.line)  # fmt: skip
        return {**encode(result), "summary": f"{self.name} done"}

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        """The ledger learns that the servers uninstalled run no release now."""
        observe(run.topology.state_dir, run.run_id, {r.server: None for r in results if r.status is ResultStatus.OK})
        return {}


class Clean(Uninstall):
    """`deploy clean`: uninstall, and remove the staging dir too."""

    name = "clean"
    clean = True


class Unlock(OnEveryServer):
    """`deploy unlock`: break a deploy lock, whoever holds it (the operator's decision)."""

    name = "unlock"

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        session = open_session(run, server, report, step="break lock")
        plan = LockPlan("break", session.install_dir, run.holder)
        result = run_tool(session.conn, session.tool, "lock", plan, LockResult)
        held = f" (it was held by {result.holder} since {result.since})" if result.broken else " (nobody held it)"
        return {**encode(result), "summary": "lock broken" + held}
