"""`deploy install` on one server, in as few round trips as it takes.

Connect, and run the remote `install` with that server's overlay (and only that one) in its
plan: it takes the server's deploy lock (no secret is staged before it), and when every
package is already there (a re-run, an overlay change) or the server pulls what it lacks
from a registry itself, it also installs and gives the lock up, all in one command.
Otherwise it names the packages it lacks, still holding the lock; the artifact store
delivers them into this run's staging dir, and a second `install` finishes. What the
ledger says a server lacks (a new build) is delivered ahead, before the first `install`,
which then does it all: one start of the tool fewer per server. An install that gets a
release ready (a batch's first phase) or switches to one awaiting confirmation does not
end there: it waits for this client's word on its stdin (switch or abort; confirm), so a
new release is one start of the tool per server (remote/hold.py, `Conversation` in
remote.py), and a client lost meanwhile is an abort on every server still waiting. Which
servers go when, and what is undone when the rollout stops, is the strategy's (strategy.py).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from flinger.engine import ledger
from flinger.engine import report as explain
from flinger.engine.fleet import InstallRecord, fleet_view, record_self_rollbacks, to_forget
from flinger.engine.ledger import read_ledger
from flinger.engine.plan import ServerPlan
from flinger.engine.remote import Conversation, run_tool
from flinger.engine.results import ServerResult, Status, Switch
from flinger.engine.session import Session, open_session, release_lock
from flinger.engine.stores import staged_tarball
from flinger.errors import FlingerError, RemoteCommandError, StoppedError
from flinger.overlay.generation import load_generations
from flinger.overlay.store import reader
from flinger.protocol.plans import ConfirmPlan, InstallPlan, PackageRef
from flinger.protocol.results import ConfirmResult, InstallResult, SelfRollback
from flinger.topology.model import Server

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.run import Run

# A server ready to switch waits in the install that made it ready (remote/hold.py): told
# every HOLD_BEAT seconds that the client is there, it gives up after HOLD_WITHIN of silence.
HOLD_BEAT = 15.0
HOLD_WITHIN = 90.0


class Install:
    """The install operation: each server's plan (plan.py), made once for the whole run."""

    name = "install"
    changes_servers = True

    def __init__(self, plans: list[ServerPlan], overlays: dict[str, dict[str, bytes]] | None = None) -> None:
        self.plans = {p.server: p for p in plans}
        self.overlays = overlays or {}  # each server's overlay, opened from the sealed state before the run
        self.record: InstallRecord | None = None  # the run's part in the fleet ledger, from start()
        self.ready: dict[str, _Ready] = {}  # servers prepared, waiting for their switch (or abort)

    def waves(self, servers: list[Server]) -> list[list[str]]:
        waves = sorted({self.plans[s.name].wave for s in servers})
        return [[s.name for s in servers if self.plans[s.name].wave == wave] for wave in waves]

    def start(self, run: Run, at_once: int) -> None:
        """Read what was built at once, beside the servers' first steps: every server needs
        it, and it need not wait for the first of them to ask; and the store gets ready to
        deliver to `at_once` servers at the same time."""
        self.record = InstallRecord(run.topology.state_dir, list(self.plans))
        run.store.expect(at_once)
        _prefetch(run.store.built)

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        """The run's end in the fleet ledger, the fleet as the ledger now sees it, and, once
        the whole fleet completed a release that rotated secrets out, the old ones removed
        from the releases the servers keep (forget)."""
        if self.record is None or self.record.release is None:
            return {}
        state = self.record.finish(run, results, stopped=run.brake.pulled)
        state_dir = run.topology.state_dir
        known = read_ledger(state_dir)
        deployment = run.topology.deployment_servers()
        view = fleet_view(run.topology, {s.name: known.running.get(s.name) for s in deployment})
        extra: dict[str, Any] = {"fleet_release": self.record.release, "release_state": state, "fleet": view.as_json()}
        generations = load_generations(reader(state_dir))
        before, todo = to_forget(known, generations, self.record.release, [s.name for s in deployment])
        if todo and not run.brake.pulled:
            extra.update(_forget(run, before, [run.topology.servers[n] for n in todo]))
        return extra

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """The whole install in one go (a batch of one server: nobody to wait for)."""
        return self._install_on(run, server, report, "all")

    def prepare_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """Everything up to the switch (lock, push or pull, unpack, release, validate), the
        lock kept by the install, which waits for the word: `prepared` names the release
        ready to switch (none: nothing to switch)."""
        return self._install_on(run, server, report, "prepare")

    def commit_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """Switch to the release `prepare_on` made ready, and start it."""
        ready = self.ready.pop(server.name)
        report.step("install")  # the tool's own steps follow: switch, service: ..., health: ...
        result = self._finish(run, ready, report, "switch")
        return self._done(run, server, result, ready.stats, report, pulled=ready.pulled)

    def abort_on(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        """Leave the release `prepare_on` made ready unswitched: removed, the lock given up."""
        ready = self.ready.pop(server.name)
        report.step("install")  # then the tool's: abort
        result = self._finish(run, ready, report, "abort")
        return {"release": result.release, "switched": False, "prepared": ready.release}

    def _finish(self, run: Run, ready: _Ready, report: Reporter, phase: str) -> InstallResult:
        """The word to the install that holds the release ready (remote/hold.py)."""
        attempt = _Attempt(run, ready.session, report)
        try:
            return attempt.decide(ready.held, ready.plan, phase)
        finally:
            if not attempt.unlocked:
                release_lock(run, ready.session, report)

    def _install_on(self, run: Run, server: Server, report: Reporter, phase: str) -> dict[str, Any]:
        plan = self.plans[server.name]
        if not plan.overlay_files or server.name not in self.overlays:
            raise FlingerError(f"no overlay for {server.name}: run flinger overlay first")
        session = open_session(run, server, report, step="tool", stages=True)
        remote = replace(self._remote_plan(run, server, plan, session, report), phase=phase)
        if phase == "prepare":  # never wait for a lock while holding others: the batch waits (execute.py)
            remote = replace(remote, acquire_wait=0.0)
        sent, stats = self._deliver_ahead(run, server, session, remote, report)
        report.step("lock")  # the install takes it first
        attempt = _Attempt(run, session, report)
        result: InstallResult | None = None
        try:
            result = attempt.install(remote)
            report.details["packages_sent"] = [*sent, *result.need]
            if result.need:  # the lock is held: deliver what this server lacks, then install
                report.step("push")
                session.conn.make_dir(remote.staging_dir, 0o700, exist_ok=True)  # made if delivered ahead
                stats = _added(stats, run.store.deliver(server, remote.staging_dir, result.need, report))
                report.info(f"{stats.get('bytes_sent', 0):,} bytes pushed")
                report.step("install")
                result = attempt.install(replace(remote, acquire=False))
            elif result.pulled:
                report.info(
                    f"{sum(result.pulled.values()):,} bytes pulled from the registry ({', '.join(result.pulled)})"
                )
            elif sent:
                report.info(f"{stats.get('bytes_sent', 0):,} bytes pushed ahead of the lock ({', '.join(sent)})")
            else:
                report.info("0 bytes pushed (every package already installed)")
        finally:
            if not attempt.unlocked and not (result is not None and result.prepared):
                release_lock(run, session, report)
        assert result is not None
        if result.prepared:  # the lock is kept for the switch, by the install that waits for its word
            assert attempt.held is not None
            self.ready[server.name] = _Ready(session, remote, result.prepared, stats, result.pulled, attempt.held)
            report.info(f"release {result.prepared} ready to switch")
            return {"prepared": result.prepared, "switched": False, "release": result.previous_release,
                    "summary": f"release {result.prepared} ready, not switched"}  # fmt: skip
        return self._done(run, server, result, stats, report)

    def _done(
        self,
        run: Run,
        server: Server,
        result: InstallResult,
        stats: dict[str, int],
        report: Reporter,
        pulled: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        if pulled:
            result = replace(result, pulled=pulled)
        if result.self_rollback is not None:
            _self_rolled_back(run, server, result.self_rollback, report)
        details = self._outcome(run, result, stats, report)
        assert self.record is not None
        self.record.server_ran(run, server.name, result.release, bool(details["switched"]))
        return details

    def _deliver_ahead(
        self, run: Run, server: Server, session: Session, remote: InstallPlan, report: Reporter
    ) -> tuple[list[str], dict[str, int]]:
        """Deliver the packages the ledger says this server lacks into this run's staging dir
        before the first `install` (packages only: the overlay comes with the install, under
        the lock); what was sent, and rsync's figures. A guess: a wrong one costs a push, and
        a delivery that fails here is only noted, since the install then names what it needs
        and that delivery's failure is the server's."""
        if remote.pull is not None or self.record is None:
            return [], {}
        lacks = self.record.likely_lacks(server.name, {p.name: p.digest for p in remote.packages})
        if not lacks:
            return [], {}
        report.step("push")
        try:  # into the run's staging dir, made with the session
            return lacks, run.store.deliver(server, remote.staging_dir, lacks, report)
        except StoppedError:
            raise
        except FlingerError as exc:
            report.line(f"push ahead of the lock failed, the install will ask again: {exc}")
            return [], {}

    def _remote_plan(
        self, run: Run, server: Server, plan: ServerPlan, session: Session, report: Reporter
    ) -> InstallPlan:
        # What was built, read once per run: the registry's publish (its wait_step), else the
        # builder's manifest. A builder that cannot be reached fails this step, not `lock`.
        report.step(run.store.wait_step or "builder")
        built = run.store.built()
        missing = [p for p in plan.packages if p not in built]
        if missing:
            raise FlingerError(f"not built on the builder: {', '.join(missing)}; run: flinger build package")
        pull = run.store.pull_spec()
        if pull is not None and pull.credential and pull.credential not in plan.overlay_files:
            raise FlingerError(f"the overlay of {server.name} has no registry pull credential: run flinger overlay")
        deployment = run.topology.deployment
        assert self.record is not None, "start() comes first"
        release = self.record.release_for(run)
        return InstallPlan(
            install_dir=session.install_dir,
            staging_dir=session.run_dir,
            release=release,
            fleet_release=release,
            overlay_generation=self.record.generation,
            # the tool refuses to switch anything unless this run still holds the lock
            lock_holder=run.holder,
            packages=[PackageRef(p, built[p].sha256, staged_tarball(built, p)) for p in plan.packages],
            services=plan.services,
            overlay_files={rel: base64.b64encode(data).decode() for rel, data in self.overlays[server.name].items()},
            overlay_owner=plan.overlay_owner,
            overlay_public=plan.overlay_public,
            staging_runs=session.runs,
            acquire=True,
            acquire_wait=run.settings.lock_wait,
            release_lock=True,
            keep_releases=deployment.keep_releases,
            pull=pull,
            confirm_within=run.settings.confirm_within,
            hold_within=HOLD_WITHIN,  # a release ready, or a switch to confirm: the word in the same tool run
        )

    @staticmethod
    def _outcome(run: Run, result: InstallResult, stats: dict[str, int], report: Reporter) -> dict[str, Any]:
        started = result.started
        summary = f"release {result.release or run.run_id}" if result.changed else "no change"
        if started:  # same release; services that were not running are running again
            summary = f"release {result.release} unchanged; started {', '.join(started)} (was not running)"
        switched = result.changed and not started
        report.switch = Switch(result.release, result.previous_release, switched)
        if result.broke_stale is not None:
            stale = result.broke_stale
            report.details["broke_stale_lock"] = {"holder": stale.holder, "since": stale.since, "reason": stale.reason}
        return {
            "changed": result.changed,
            "started": started,
            "release": result.release,
            "fleet_release": result.fleet_release,
            "switched": switched,  # moved to a new release by this run (what a rollout that fails later undoes)
            "previous_release": result.previous_release,
            "push": stats,
            "pulled": result.pulled,
            "summary": f"{summary}; {explain.moved(stats, result.pulled)}",
        }


@dataclass
class _Ready:
    """A server whose new release is made and validated, its lock held, its switch to come."""

    session: Session
    plan: InstallPlan
    release: str
    stats: dict[str, int]
    pulled: dict[str, int]
    held: Conversation  # the install that made it, waiting for the word: switch or abort


class _Attempt:
    """The remote `install` of one server, run once or twice; knows whether it gave the lock up."""

    def __init__(self, run: Run, session: Session, report: Reporter) -> None:
        self.session = session
        self.report = report
        self.unlocked = False
        self.server = session.conn.server.name
        self.held: Conversation | None = None  # the install at work, which may wait for a word after an answer

    def install(self, plan: InstallPlan) -> InstallResult:
        """One `install`: its answer, or its first one when it then waits for the word (a
        release ready: `decide`; a switch to confirm: `_confirm`)."""
        session, report = self.session, self.report
        self.held = Conversation(session.conn, session.tool, "install", plan, report, prefix="install: ",
                                 beat=HOLD_BEAT)  # fmt: skip
        try:
            result = cast(InstallResult, self.held.first(_held))
        except RemoteCommandError as exc:
            raise self._failed(exc) from None
        return self._answered(plan, result)

    def decide(self, held: Conversation, plan: InstallPlan, word: str) -> InstallResult:
        """Say `word` (switch, abort) to the install holding a release ready; what it did."""
        self.held = held
        try:
            result = cast(InstallResult, held.say(word, self.report, _held))
        except RemoteCommandError as exc:
            raise self._failed(exc) from None
        return self._answered(plan, result)

    def _answered(self, plan: InstallPlan, result: InstallResult) -> InstallResult:
        self.unlocked = self.unlocked or result.lock_released
        if result.awaiting_confirmation:  # the switch stands once this client says so, in time
            self._confirm(plan, result.awaiting_confirmation)
        return result

    def _failed(self, exc: RemoteCommandError) -> FlingerError:
        """A failed install as the error this server's report shows."""
        failed = exc.result
        if isinstance(failed, InstallResult):
            self.unlocked = self.unlocked or failed.lock_released
            if failed.step == "lock" and failed.service_log is None:
                if failed.lock_held_by:  # the batch may give its locks back and try again (execute.py)
                    self.report.details["lock_held_by"] = failed.lock_held_by
                return FlingerError(f"{self.server}: {exc.message}")
        return explain.explained(exc, self.report)

    def _confirm(self, plan: InstallPlan, token: str) -> None:
        """Confirm the switch: to the install that made it, still waiting for the word, else
        (it ended after its answer) with the tool's `confirm`."""
        session, report = self.session, self.report
        report.step("confirm")
        try:
            if self.held is not None and self.held.holding:
                done: InstallResult | ConfirmResult = cast(InstallResult, self.held.say("confirm", report))
            else:
                done = run_tool(session.conn, session.tool, "confirm",
                                ConfirmPlan(plan.install_dir, plan.lock_holder, token), ConfirmResult)  # fmt: skip
        except RemoteCommandError as exc:
            raise explain.explained(exc, report) from None
        self.unlocked = self.unlocked or done.lock_released


def _held(answer: object) -> bool:
    """An install's answer after which it waits for the client's word (remote/hold.py)."""
    return isinstance(answer, InstallResult) and answer.waits_for_word()


def _added(one: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    """Two deliveries' figures, summed."""
    return {key: one.get(key, 0) + other.get(key, 0) for key in {*one, *other}}


def _self_rolled_back(run: Run, server: Server, done: SelfRollback, report: Reporter) -> None:
    """What this server did after an earlier run's switch that nobody confirmed: said, and
    kept in the ledger."""
    report.info(f"earlier: {explain.self_rollback_line(done)}")
    record_self_rollbacks(run.topology.state_dir, run.run_id, {server.name: done})


def _prefetch(read: Callable[[], object]) -> None:
    """Start `read` (which caches what it reads) at once, in the background. An error is
    left for the servers that ask again: each reports it as its own step's failure."""

    def quietly() -> None:
        try:
            read()
        except Exception:  # noqa: BLE001,S110 - the servers' own call reports it
            pass

    threading.Thread(target=quietly, name="flinger-prefetch", daemon=True).start()


def _forget(run: Run, before: int, servers: list[Server]) -> dict[str, Any]:
    """`forget` on `servers`; what --json says of it (a server that could not: a fleet problem)."""
    from flinger.engine.execute import execute
    from flinger.engine.operations import Forget

    results = execute(run, Forget(before), servers)
    done = [r.server for r in results if r.status is Status.OK]
    ledger.append(run.topology.state_dir, {"event": "forgot", "generation": before, "servers": done}, sync=True)
    extra: dict[str, Any] = {"forgot": {r.server: r.details.get("forgotten", []) for r in results if r.server in done}}
    left = [f"{r.server} ({r.message})" for r in results if r.server not in done]
    if left:
        extra["fleet_problem"] = (
            f"secrets rotated out by overlay generation {before} are still kept in older releases on "
            f"{', '.join(left)}: the next deploy install removes them"
        )
    return extra
