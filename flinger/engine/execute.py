"""`execute`: an operation on a run's servers, all at once or rolled out by a strategy.

Without a strategy every server runs the operation (up to `--parallel` at once). With one,
the operation's servers are put in its waves, the strategy cuts them into batches and goes
through them with the run's real effects: the operation on a batch, `deploy status` as the
gate, a rollback as the undo.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.operations import Operation, Rollback, Status, TwoPhase
from flinger.engine.results import ServerResult
from flinger.engine.run import Run
from flinger.engine.strategy import Strategy, ready_to_switch
from flinger.errors import HostKeyError
from flinger.progress import Output
from flinger.topology.model import Server


def execute(
    run: Run, operation: Operation, servers: list[Server], strategy: Strategy | None = None
) -> list[ServerResult]:
    """Run `operation` on `servers`; each server's result, in the servers' order."""
    if operation.changes_servers:
        require_trusted(run, servers)
    if strategy is None:
        operation.start(run, min(run.settings.parallel, len(servers)))
        return _fan_out(run, operation, servers, fail_fast=run.settings.fail_fast)
    batches = strategy.batches(operation.waves(servers))
    operation.start(run, min(run.settings.parallel, max((len(b.servers) for b in batches), default=0)))
    effects = _Effects(run, operation, {s.name: s for s in servers})
    results = strategy.run(batches, effects)
    return [results[s.name] for s in servers]


Step = Callable[[Run, Server, Reporter], dict[str, Any]]


def require_trusted(run: Run, servers: list[Server]) -> None:
    """An operation that changes servers starts on none of them while one is known to be
    unreachable safely (nothing in known_hosts for it or a jump host on its way): the others
    would change, then wait or go back, for nothing. HostKeyError naming every such server.
    Each check may ask OpenSSH how it resolves the host (`ssh -G`): up to `--parallel` at
    once, not one server after another."""

    def refusal(server: Server) -> HostKeyError | None:
        try:
            run.hosts.check_trusted(server)
        except HostKeyError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(run.settings.parallel, len(servers)))) as pool:
        found = list(pool.map(refusal, servers))
    refused = [(server.name, exc) for server, exc in zip(servers, found, strict=True) if exc is not None]
    if refused:
        others = [name for name, _ in refused[1:]]
        more = f" (and {len(others)} more: {', '.join(others)})" if others else ""
        raise HostKeyError(f"{refused[0][1].message}{more}; no server was touched")


def _fan_out(
    run: Run,
    operation: Operation,
    servers: list[Server],
    *,
    fail_fast: bool = False,
    stoppable: bool = True,
    step: Step | None = None,
) -> list[ServerResult]:
    on_server = step or operation.on_server

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        return on_server(run, server, report)

    return fan_out(
        servers,
        work,
        parallel=run.settings.parallel,
        events=run.events,
        fail_fast=fail_fast,
        brake=run.brake,
        brake_stops=stoppable,
    )


class _Effects:
    """A strategy's effects on a run's real servers."""

    def __init__(self, run: Run, operation: Operation, servers: dict[str, Server]) -> None:
        self.run = run
        self.operation = operation
        self.servers = servers

    def apply(self, names: list[str]) -> list[ServerResult]:
        chosen = [self.servers[n] for n in names]
        return _fan_out(self.run, self.operation, chosen, fail_fast=self.run.settings.fail_fast)

    @property
    def two_phase(self) -> bool:
        return isinstance(self.operation, TwoPhase)

    def _phase(self, names: list[str], step: Step, *, stoppable: bool) -> list[ServerResult]:
        chosen = [self.servers[n] for n in names]
        return _fan_out(self.run, self.operation, chosen, stoppable=stoppable, step=step)

    @property
    def _steps(self) -> TwoPhase:
        return cast(TwoPhase, self.operation)

    def prepare(self, names: list[str]) -> list[ServerResult]:
        """Every server of the batch ready, or why not. A server's lock held by another run
        is not waited for while this run holds others (two runs could each hold part of a
        batch and wait for the rest forever): the ready ones give their locks back, and the
        batch tries again after a random pause, until --lock-wait is over."""
        deadline = time.monotonic() + self.run.settings.lock_wait
        done: dict[str, ServerResult] = {}
        todo, tries = list(names), 0
        while True:
            for r in self._phase(todo, self._steps.prepare_on, stoppable=True):
                done[r.server] = r
            busy = [n for n in todo if done[n].details.get("lock_held_by")]
            left = deadline - time.monotonic()
            if not busy or left <= 0 or self.run.brake.pulled:
                return [done[n] for n in names]
            ready = [n for n in todo if ready_to_switch(done[n])]
            if ready:
                self.abort(ready)
            todo, tries = busy + ready, tries + 1
            for name in busy:
                self.run.events(Output(name, f"waiting for the deploy lock: {done[name].message}"))
            self.run.brake.wait(min(left, random.uniform(0.5, 1.5) * min(tries, 4)))  # noqa: S311 - jitter

    def commit(self, names: list[str]) -> list[ServerResult]:
        # Once a batch is ready it switches whole: the brake cannot stop half of it.
        return self._phase(names, self._steps.commit_on, stoppable=False)

    def abort(self, names: list[str]) -> list[ServerResult]:
        return self._phase(names, self._steps.abort_on, stoppable=False)

    def check(self, names: list[str]) -> list[ServerResult]:
        return _fan_out(self.run, Status(), [self.servers[n] for n in names])

    def undo(self, todo: list[tuple[str, str]]) -> list[ServerResult]:
        # An undo is finished even once the brake is pulled: it is what keeps the fleet on one release.
        rollback = Rollback(targets=dict(todo))
        return _fan_out(self.run, rollback, [self.servers[n] for n, _ in todo], stoppable=False)

    def wait(self, seconds: float) -> bool:
        return self.run.brake.wait(seconds)

    def stopping(self) -> bool:
        return self.run.brake.pulled
