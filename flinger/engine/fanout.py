"""Fan-out: run one function per server on a bounded pool and collect per-server results.

Each server's function reports through its `Reporter` (typed progress events, the step it
is in, the lines that explain a failure) and its outcome becomes a `ServerResult`
(results.py). One server failing never stops the others unless `fail_fast`; then servers
not yet started are reported as skipped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from flinger.engine.brake import Brake
from flinger.engine.results import ServerResult, Status, Switch
from flinger.errors import FlingerError, RemoteCommandError, StoppedError, UnreachableError
from flinger.progress import Event, Finished, Info, Output, Sink, Started, Step, Timeline, nowhere
from flinger.topology.model import Server


class Reporter:
    """Handed to the per-server function: report the step, output lines and details. Each
    report is a typed event (progress.py) sent to the run's sinks; the step timeline and the
    last lines are also kept here for this server's result."""

    def __init__(self, server: str, emit: Sink) -> None:
        self.server = server
        self._emit = emit
        self.timeline = Timeline()
        self.current_step: str | None = None
        self.details: dict[str, Any] = {}
        self.tail: deque[str] = deque(maxlen=20)
        self.switch: Switch | None = None  # what the work did to the release the server runs

    def emit(self, event: Event) -> None:
        self.timeline(event)
        self._emit(event)

    def step(self, name: str) -> None:
        self.current_step = name
        self.emit(Step(self.server, name))

    def info(self, text: str) -> None:
        self.emit(Info(self.server, text))

    def line(self, text: str) -> None:
        self.tail.append(text)
        self.emit(Output(self.server, text))


Work = Callable[[Server, Reporter], dict[str, Any] | None]


def _run_one(server: Server, work: Work, emit: Sink) -> ServerResult:
    reporter = Reporter(server.name, emit)
    reporter.emit(Started(server.name))
    started = time.monotonic()
    tail: list[str] = []
    code: int | None
    message: str | None
    try:
        details = work(server, reporter) or {}
        status, code, message = Status.OK, 0, None
    except UnreachableError as exc:
        details, status, code, message = reporter.details, Status.UNREACHABLE, None, exc.message
    except StoppedError as exc:
        details, status, code, message = reporter.details, Status.INTERRUPTED, None, exc.message
    except RemoteCommandError as exc:
        details, status, code = reporter.details, Status.FAILED, exc.exit_code
        message, tail = exc.message, exc.tail or list(reporter.tail)
    except FlingerError as exc:
        details, status, code, message = reporter.details, Status.FAILED, None, exc.message
        tail = list(reporter.tail)
    except Exception as exc:  # noqa: BLE001 - one server's bug must not hide the others' results
        details, status, code = reporter.details, Status.FAILED, None
        message, tail = f"internal error: {type(exc).__name__}: {exc}", list(reporter.tail)
    result = ServerResult(
        server=server.name,
        status=status,
        duration=time.monotonic() - started,
        step=reporter.current_step if status is not Status.OK else None,
        exit_code=code,
        message=message,
        tail=tail,
        details={**reporter.details, **details},
        switch=reporter.switch,
    )
    reporter.emit(Finished(server.name, status.value))
    result.steps = reporter.timeline.of(server.name)
    return result


def fan_out(
    servers: Iterable[Server],
    work: Work,
    *,
    parallel: int = 16,
    events: Sink = nowhere,
    fail_fast: bool = False,
    brake: Brake | None = None,
    brake_stops: bool = True,
) -> list[ServerResult]:
    """Run `work` for every server, at most `parallel` at once; results in server order.
    Progress goes to `events` as typed events (progress.py). Once `brake` is pulled (a
    SIGINT or SIGTERM while it is held: brake.py), no server starts; those at work finish
    their step (a safe point on the server) and the others are `interrupted`. With
    `brake_stops=False` (a rollout undoing what it switched) every server is done all the
    same: stopping half-way would leave the fleet on two releases."""
    brake = brake or Brake()
    servers = list(servers)
    results: dict[str, ServerResult] = {}
    stop = threading.Event()
    pending = list(servers)
    with brake.held(), ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="flinger") as pool:
        running: dict[Future[ServerResult], Server] = {}
        while pending or running:
            while pending and len(running) < parallel and not stop.is_set() and not (brake_stops and brake.pulled):
                server = pending.pop(0)
                running[pool.submit(_run_one, server, work, events)] = server
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                server = running.pop(fut)
                result = fut.result()
                results[server.name] = result
                if fail_fast and result.status is not Status.OK:
                    stop.set()
        for server in pending:
            status = Status.INTERRUPTED if brake.pulled else Status.SKIPPED
            why = f"not started: interrupted ({brake.by})" if brake.pulled else "not started (--fail-fast)"
            results[server.name] = ServerResult(server.name, status, message=why)
            events(Finished(server.name, status.value))
    return [results[s.name] for s in servers]
