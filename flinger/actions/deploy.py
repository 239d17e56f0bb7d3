"""`flinger deploy install | uninstall | clean | status | history | rollback | unlock`.

install, per server: connect, and run the remote `install` with that server's overlay (and
only that one) in its plan: it takes the server's deploy lock (nothing is staged before it),
and when every package is already there it installs (switch, (re)start, health) and gives
the lock up in the same command. Otherwise it names the packages it lacks, still holding
the lock; the artifact store (artifacts.py: the builder's rsync) delivers them into this
run's staging dir, and a second `install` finishes. Which servers go when, and what is
undone when the rollout stops, is rollout.py's.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flinger.actions.artifacts import ArtifactStore, BuilderRsync, RegistryStore
from flinger.actions.deploy_plan import ServerPlan, plan_deploy, staging_runs_dir
from flinger.actions.remote_tool import (
    resolve_remote_path,
    run_tool,
    upload_tool,
)
from flinger.actions.rollout import RolloutPolicy, plan_batches, run_rollout
from flinger.errors import FlingerError, RemoteCommandError
from flinger.manifest.model import Manifest
from flinger.progress import Events, RunLog, Sink, nowhere
from flinger.remote import services
from flinger.ssh.connection import ConnectionPool
from flinger.ssh.fanout import Reporter, ServerResult, fan_out
from flinger.ssh.transport import HostPool, Transport
from flinger.topology.model import Server, Topology


def new_run_id() -> str:
    """When (to the millisecond, so ids sort by start) and which process: two runs of one
    process never share their logs or staging dir."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z-{os.getpid()}"


class Deployer:
    """One run of a deploy subcommand: its connections, paths on the builder, and the run id."""

    def __init__(
        self,
        topology: Topology,
        manifest: Manifest,
        *,
        events: Sink = nowhere,
        pool: HostPool | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.topology = topology
        self.manifest = manifest
        self.run_id = new_run_id()
        self.log_dir = topology.state_dir / "logs" / self.run_id
        self.events = Events([RunLog(self.log_dir), events])
        self.holder = f"{getpass.getuser()}@{socket.gethostname()} run {self.run_id}"
        if pool is None:  # SSH; the builder's rsync uses the agent (forwarded to it alone)
            registry = topology.artifacts.registry
            ssh = ConnectionPool(
                topology.servers, topology.ssh, agent_for=set() if registry else {topology.builder.server}
            )
            self.pool: HostPool = ssh
            self.store: ArtifactStore = store or (RegistryStore if registry else BuilderRsync)(topology, ssh)
        else:
            if store is None:
                raise ValueError("a host pool of its own needs an artifact store of its own")
            self.pool, self.store = pool, store

    def close(self) -> None:
        self.pool.close()

    # -- install --------------------------------------------------------------------------
    def install_one(self, server: Server, plan: ServerPlan, report: Reporter, lock_wait: float) -> dict[str, Any]:
        """One server's install in as few round trips as it takes: the remote `install`
        takes the lock, and when every package is already there (a re-run, an overlay
        change) also installs and gives the lock up, all in one command; otherwise it says
        which packages it lacks, holding the lock, and they are delivered before a second
        `install`. The overlay travels in the install's plan (stdin), never as files."""
        self.pool.check_trusted(server)
        if not plan.overlay_files:
            raise FlingerError(f"no overlay for {server.name}: run flinger overlay first")
        report.step("connect")
        conn = self.pool.get(server.name)
        conn.open()
        staging = resolve_remote_path(conn, plan.staging_dir)
        install_dir = resolve_remote_path(conn, plan.install_dir)
        report.step("lock")
        runs = staging_runs_dir(staging, install_dir)  # made with the tool's check, one round trip
        tool = upload_tool(conn, self.topology, plan.staging_dir, dirs=(f"{staging}/runs", runs))
        run_dir = f"{runs}/{self.run_id}"
        if self.store.wait_step is not None:  # the registry's publish, once per run
            report.step(self.store.wait_step)
        built = self.store.built()
        if self.store.wait_step is not None:
            report.step("lock")  # the install takes it first
        missing = [p for p in plan.packages if p not in built]
        if missing:
            raise FlingerError(f"not built on the builder: {', '.join(missing)}; run: flinger build package")
        remote_plan = {
            "install_dir": install_dir,
            "staging_dir": run_dir,
            "staging_runs": runs,
            "release": self.run_id,
            "packages": [
                {"name": p, "digest": built[p]["sha256"], "tarball": self.store.staged_path(run_dir, p)}
                for p in plan.packages
            ],
            "overlay_files": {
                rel: base64.b64encode((plan.overlay_dir / rel).read_bytes()).decode() for rel in plan.overlay_files
            },
            "overlay_owner": plan.overlay_owner,
            "services": [s.as_remote() for s in plan.services],
            # the tool refuses to switch anything unless this run still holds the lock
            "lock_holder": self.holder,
            "release_lock": True,
            "keep_releases": self.topology.deployment.keep_releases,
            **self.store.install_plan(),
        }
        credential = (remote_plan.get("registry") or {}).get("credential")
        if credential and credential not in plan.overlay_files:
            raise FlingerError(f"the overlay of {server.name} has no registry pull credential: run flinger overlay")
        unlocked = False
        on_event = self._install_events(report)

        def install(**extra: Any) -> dict[str, Any]:
            nonlocal unlocked
            try:
                answer = run_tool(
                    conn, server, tool, ["install"], {**remote_plan, **extra}, on_event=on_event, on_text=report.line
                )
            except RemoteCommandError as exc:
                unlocked = unlocked or bool(exc.result.get("lock_released"))
                if exc.result.get("step") == "lock" and not exc.result.get("service_log"):
                    raise FlingerError(f"{server.name}: {exc.message}") from None
                raise _explained(exc, report) from None
            unlocked = unlocked or bool(answer.get("lock_released"))
            return answer

        stats: dict[str, int] = {}
        try:
            result = install(acquire={"wait": lock_wait})
            need = [str(p) for p in result.get("need") or []]
            report.details["packages_sent"] = need
            if need:  # the lock is held: deliver what this server lacks, then install
                report.step("push")
                conn.sftp_mkdir(run_dir, 0o700)
                stats = self.store.deliver(server, run_dir, need, report)
                report.details["push"] = stats
                report.info(f"{stats.get('bytes_sent', 0):,} bytes pushed")
                report.step("install")
                result = install()
            else:
                report.details["push"] = stats
                pulled = {str(k): int(v) for k, v in (result.get("pulled") or {}).items()}
                if pulled:
                    report.details["pulled"] = pulled
                    report.info(f"{sum(pulled.values()):,} bytes pulled from the registry ({', '.join(pulled)})")
                else:
                    report.info("0 bytes pushed (every package already installed)")
        finally:
            if not unlocked:
                self.lock(server, conn, tool, install_dir, "release", report=report, quiet=True)
        changed = bool(result.get("changed", True))
        started = [str(name) for name in result.get("started") or []]
        summary = f"release {result.get('release', self.run_id)}" if changed else "no change"
        if started:  # same release; services that were not running are running again
            summary = f"release {result.get('release')} unchanged; started {', '.join(started)} (was not running)"
        return {
            "changed": changed,
            "started": started,
            "release": result.get("release"),
            # moved to a new release by this run (what a rollout that fails later undoes)
            "switched": changed and not started,
            "previous_release": result.get("previous_release"),
            "push": stats,
            "pulled": report.details.get("pulled", {}),
            "summary": f"{summary}; {_moved(stats, report.details.get('pulled'))}",
        }

    @staticmethod
    def _install_events(report: Reporter) -> Callable[[dict[str, Any]], None]:
        """The remote install's events: its steps, the lock's news, and its output lines."""

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "step":
                report.step(f"install: {event.get('step')}")
            elif _lock_news(event, report):
                pass
            elif kind in ("failed", "error"):
                report.line(str(event.get("error") or event))
            else:
                report.line(_event_line(event))

        return on_event

    def lock(
        self,
        server: Server,
        conn: Transport,
        tool: str,
        install_dir: str,
        action: str,
        *,
        wait: float = 0.0,
        report: Reporter | None = None,
        quiet: bool = False,
    ) -> dict[str, Any]:
        """Acquire or release this run's lock on the server; the tool's result."""
        args = ["lock", action, "--install-dir", install_dir, "--holder", self.holder]
        if action == "acquire":
            args += ["--wait", str(wait)]

        def on_event(event: dict[str, Any]) -> None:
            if report is not None:
                _lock_news(event, report)

        try:
            return run_tool(conn, server, tool, args, on_event=on_event)
        except RemoteCommandError as exc:
            if quiet:
                if report is not None:
                    report.line(f"lock {action}: {exc.message}")
                return {}
            raise FlingerError(f"{server.name}: {exc.message}") from None

    # -- the other subcommands ------------------------------------------------------------
    def simple(
        self,
        server: Server,
        report: Reporter,
        command: str,
        extra: list[str] | None = None,
        hold_lock: bool = True,
        lock_wait: float = 0.0,
        plan_extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.pool.check_trusted(server)
        report.step("connect")
        conn = self.pool.get(server.name)
        conn.open()
        report.step("ship tool")
        tool = upload_tool(conn, self.topology, self.topology.deployment.staging_dir)
        install_dir = resolve_remote_path(conn, self.topology.deployment.install_dir)
        staging = resolve_remote_path(conn, self.topology.deployment.staging_dir)
        args = [command, "--install-dir", install_dir, *(extra or [])]
        if command == "clean":
            args += ["--staging-dir", staging]
        report.step(command)
        if hold_lock:
            self.lock(server, conn, tool, install_dir, "acquire", wait=lock_wait, report=report)
        plan = {"install_dir": install_dir, "staging_dir": staging, **(plan_extra or {})}
        if hold_lock:
            plan["lock_holder"] = self.holder
        try:
            result = run_tool(conn, server, tool, args, plan=plan, on_event=_step_events(report), on_text=report.line)
        except RemoteCommandError as exc:
            raise _explained(exc, report) from None
        finally:
            if hold_lock and command not in ("uninstall", "clean"):
                self.lock(server, conn, tool, install_dir, "release", report=report, quiet=True)
        result.pop("event", None)
        result["summary"] = _summary(command, result)
        if command == "status":
            _require_running(result, report)
        return result


def _prefetch(read: Callable[[], object]) -> None:
    """Start `read` (which caches what it reads) at once, beside the servers' first steps:
    every server needs it, and it need not wait for the first of them to ask. An error is
    left for the servers that ask again: each reports it as its own step's failure."""

    def quietly() -> None:
        try:
            read()
        except Exception:  # noqa: BLE001,S110 - the servers' own call reports it
            pass

    threading.Thread(target=quietly, name="flinger-prefetch", daemon=True).start()


def _moved(pushed: dict[str, int], pulled: dict[str, int] | None) -> str:
    """How this server's packages came: pushed by the builder or pulled from the registry."""
    if pulled:
        return f"{sum(pulled.values()):,} bytes pulled from the registry"
    return f"{pushed.get('bytes_sent', 0):,} bytes pushed"


def _step_events(report: Reporter) -> Callable[[dict[str, Any]], None]:
    """The remote tool's progress events as steps and lines of this server's report."""

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            report.step(f"{event.get('step')}" + (f": {event['service']}" if event.get("service") else ""))
        else:
            report.line(_event_line(event))

    return on_event


def _event_line(event: dict[str, Any]) -> str:
    """A remote event as one line of its server's report: its fields as key=value."""
    return " ".join(f"{k}={v}" for k, v in event.items() if k != "event") or str(event)


def _lock_news(event: dict[str, Any], report: Reporter) -> bool:
    """What the remote side says while taking the lock (a stale one broken, a live one waited
    for), told in this server's report; False for any other event."""
    if event.get("event") == "stale":  # the server found no process left of that run
        report.details["broke_stale_lock"] = {k: event.get(k) for k in ("holder", "since", "reason")}
        report.line(f"broke a stale lock of {event.get('holder')} since {event.get('since')}: {event.get('reason')}")
        return True
    if event.get("event") == "held":
        report.line(
            f"waiting for the deploy lock: held by {event.get('holder')} since {event.get('since')}; {event.get('why')}"
        )
        return True
    return False


def _require_running(result: dict[str, Any], report: Reporter) -> None:
    """`deploy status` fails a server where a service is not running or not healthy."""
    bad = [
        f"{s.get('name')} is {s.get('state')}"
        if str(s.get("state")) not in services.RUNNING_STATES
        else f"{s.get('name')} is not healthy"
        for s in result.get("services") or []
        if str(s.get("state")) not in services.RUNNING_STATES or s.get("healthy") is False
    ]
    if bad:
        report.details.update(result)
        raise FlingerError(f"{'; '.join(bad)} ({result['summary']})")


def _explained(exc: RemoteCommandError, report: Reporter) -> RemoteCommandError:
    """A failed remote install as the operator needs it: the step that really failed (not
    the rollback that followed), the failing service's own last log lines as the tail, and
    which release runs now."""
    result = exc.result
    if result.get("step"):
        report.step(str(result["step"]))
    log = result.get("service_log")
    if isinstance(log, dict) and log.get("lines"):
        lines = [str(line) for line in log["lines"]]
        report.details["service_log"] = {"service": log.get("service"), "lines": lines}
        exc.tail = [f"last lines of {log.get('service')}'s log:", *lines]
        for line in lines:
            report.line(f"{log.get('service')}: {line}")
    output = result.get("validate_output")
    if isinstance(output, list):
        lines = [str(line) for line in output]
        report.details["validate_output"] = lines
        exc.tail = ["what the validate command printed:", *lines]
        for line in lines:
            report.line(f"validate: {line}")
        exc.message += "; nothing was switched or restarted"
    if "rolled_back_to" in result:
        report.details["rolled_back_to"] = result["rolled_back_to"]
        now = str(result["rolled_back_to"] or "nothing (first install)")
        restored = result.get("restored_health")
        if isinstance(restored, dict) and restored:
            report.details["restored_health"] = restored
            sick = [
                f"{name}: {info.get('detail')}"
                for name, info in restored.items()
                if isinstance(info, dict) and not info.get("healthy")
            ]
            now += f", NOT healthy ({'; '.join(sick)})" if sick else ", healthy"
        raw = result.get("rollback_problems")
        problems = "; ".join(str(p) for p in raw) if isinstance(raw, list) else ""
        exc.message += f"; rolled back to {now}" + (f" (with problems: {problems})" if problems else "")
    return exc


def _summary(command: str, result: dict[str, Any]) -> str:
    """One line for the summary table: what this server has now."""
    if command == "rollback":
        if not result.get("changed"):
            return f"already on release {result.get('release')}"
        return f"rolled back from {result.get('previous_release')} to {result.get('release')}, healthy"
    if command == "history":
        if not result.get("installed"):
            return "nothing installed"
        releases = result.get("releases") or []
        current: dict[str, Any] = next((r for r in releases if r.get("current")), {})
        others = [str(r.get("release")) for r in releases if not r.get("current")]
        by = f" by {current.get('installed_by')}" if current.get("installed_by") else ""
        return (
            f"current {result.get('current')} (installed {current.get('installed_at') or 'at an unknown time'}{by}); "
            f"earlier: {', '.join(reversed(others)) or 'none kept'}"
        )
    if command != "status":
        return f"{command} done"
    if not result.get("installed"):
        return "nothing installed"
    packages = ", ".join(f"{n} {str(p.get('digest', ''))[:12]}" for n, p in sorted(result.get("packages", {}).items()))
    health = {None: "", True: " healthy", False: " UNHEALTHY"}
    services = ", ".join(
        f"{s.get('name')}: {s.get('state')}{health.get(s.get('healthy'), '')}" for s in result.get("services", [])
    )
    return f"release {result.get('release')}; {packages}; {services or 'no services'}"


def run_deploy(
    topology: Topology,
    manifest: Manifest,
    servers: list[Server],
    action: str,
    *,
    parallel: int,
    events: Sink = nowhere,
    fail_fast: bool = False,
    lock_wait: float = 0.0,
    on_start: Callable[[Deployer], None] | None = None,
    rollback_to: str | None = None,
    rollout: RolloutPolicy | None = None,
    pool: HostPool | None = None,
    store: ArtifactStore | None = None,
) -> list[ServerResult]:
    """Run one deploy subcommand on `servers`; results in the servers' order. `pool` and
    `store` replace SSH and the builder's rsync (the local ones run the engine in tests)."""
    deployer = Deployer(topology, manifest, events=events, pool=pool, store=store)
    if on_start is not None:
        on_start(deployer)
    by_name = {s.name: s for s in servers}

    def check(names: list[str]) -> list[ServerResult]:
        """A gate of a rollout: each server's services running and healthy (`deploy status`)."""

        def work(server: Server, report: Reporter) -> dict[str, Any]:
            return deployer.simple(server, report, "status", hold_lock=False)

        return fan_out([by_name[n] for n in names], work, parallel=parallel, events=deployer.events)

    try:
        if action == "install":
            plans = {p.server: p for p in plan_deploy(topology, manifest, servers)}
            _prefetch(deployer.store.built)  # the builder's manifest, while servers connect
            waves = [
                [s.name for s in servers if plans[s.name].wave == wave]
                for wave in sorted({p.wave for p in plans.values()})
            ]
            policy = rollout or RolloutPolicy()

            def install(names: list[str]) -> list[ServerResult]:
                def work(server: Server, report: Reporter) -> dict[str, Any]:
                    return deployer.install_one(server, plans[server.name], report, lock_wait)

                chosen = [by_name[n] for n in names]
                return fan_out(chosen, work, parallel=parallel, events=deployer.events, fail_fast=fail_fast)

            def roll_back(todo: list[tuple[str, str]]) -> list[ServerResult]:
                to = dict(todo)

                def work(server: Server, report: Reporter) -> dict[str, Any]:
                    report.step("rollback")
                    return deployer.simple(
                        server, report, "rollback", lock_wait=lock_wait, plan_extra={"to": to[server.name]}
                    )

                return fan_out([by_name[n] for n, _ in todo], work, parallel=parallel, events=deployer.events)

            results = run_rollout(plan_batches(waves, policy), policy, install, check, roll_back)
            return [results[s.name] for s in servers]

        if action == "unlock":

            def unlock(server: Server, report: Reporter) -> dict[str, Any]:
                conn = deployer.pool.get(server.name)
                tool = upload_tool(conn, topology, topology.deployment.staging_dir)
                install_dir = resolve_remote_path(conn, topology.deployment.install_dir)
                report.step("break lock")
                run_tool(
                    conn, server, tool, ["lock", "break", "--install-dir", install_dir, "--holder", deployer.holder]
                )
                return {"summary": "lock broken"}

            return fan_out(servers, unlock, parallel=parallel, events=deployer.events)

        hold = action not in ("status", "history")
        extra = {"to": rollback_to} if action == "rollback" and rollback_to else None

        def other(server: Server, report: Reporter) -> dict[str, Any]:
            return deployer.simple(server, report, action, hold_lock=hold, lock_wait=lock_wait, plan_extra=extra)

        if action == "rollback" and rollout is not None:
            # The same batches and gates as an install; a rollback that fails stops the rest
            # (nothing is undone: each failed server already went back to what it ran).
            def go_back(batch: list[str]) -> list[ServerResult]:
                return fan_out([by_name[n] for n in batch], other, parallel=parallel, events=deployer.events)

            undo = replace(rollout, rollback=False)
            batches = plan_batches([[s.name for s in servers]], undo)
            done = run_rollout(batches, undo, go_back, check, lambda _todo: [])
            return [done[s.name] for s in servers]
        return fan_out(servers, other, parallel=parallel, events=deployer.events, fail_fast=fail_fast)
    finally:
        deployer.close()
