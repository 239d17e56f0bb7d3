"""Rolling deploys: which servers go next, whether to go on, and which to roll back.

The strategy of `deploy install`, apart from how a server is installed: each dependency wave
is cut into batches (`--batch N|P%`, the first wave's first batch optionally a `--canary N`
that must stay healthy for `--canary-wait` seconds). Batches run one after another; the
servers of a batch run (and restart) together. A batch passes when none of its servers
failed. More failures than `--max-failures` (a count or a percentage of the servers,
default 0) stop the rollout: no later batch starts, and every server this run switched to a
new release is switched back to the release it had, batch by batch in reverse order, and
health-checked (unless rollback is off), so the fleet never runs a mix nobody asked for.
A failure in a wave that later waves depend on stops the rollout whatever the allowance.
Ctrl-C (or SIGTERM) stops it too, in every mode: no batch or canary wait goes on once the
brake is pulled, and nothing is rolled back: the operator asked to stop, not to undo.

`BatchRollout` is the default `Strategy`; it gets its effects as an object (apply the
operation to a batch, check a batch, roll servers back, wait), so the orchestration is
tested without any host, and a new rollout kind is one more class with the same two methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

from flinger.engine.results import ServerResult, Status
from flinger.errors import UsageError


@dataclass(frozen=True)
class Amount:
    """A number of servers, absolute (`3`) or a percentage of them (`25%`)."""

    value: float
    percent: bool = False

    def batch_size(self, total: int) -> int:
        return max(1, math.ceil(total * self.value / 100) if self.percent else int(self.value))

    def allowance(self, total: int) -> int:
        return math.floor(total * self.value / 100) if self.percent else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


def parse_amount(text: str, option: str, *, minimum: int) -> Amount:
    """`N` or `P%` as given to --batch / --max-failures; a UsageError naming the option."""
    raw = text.strip()
    percent = raw.endswith("%")
    number = raw[:-1] if percent else raw
    try:
        value = float(number) if percent else int(number)
    except ValueError:
        raise UsageError(
            f"{option}: expected a number of servers or a percentage (like 2 or 25%), got {text!r}"
        ) from None
    if (percent and not 0 <= value <= 100) or (not percent and value < minimum):
        raise UsageError(f"{option}: {text!r} is out of range")
    if percent and minimum > 0 and value == 0:
        raise UsageError(f"{option}: {text!r} is out of range")
    return Amount(value, percent)


@dataclass(frozen=True)
class RolloutPolicy:
    batch: Amount | None = None  # None: a whole wave at once
    canary: int = 0  # servers in the first batch, checked again after canary_wait
    canary_wait: float = 0.0
    max_failures: Amount = field(default_factory=lambda: Amount(0))
    rollback: bool = True


@dataclass(frozen=True)
class Batch:
    number: int  # from 1
    wave: int
    servers: tuple[str, ...]
    canary: bool = False
    last_of_wave: bool = False


def plan_batches(waves: list[list[str]], policy: RolloutPolicy) -> list[Batch]:
    """The batches, in order: each wave cut by the canary (first wave only) and the batch size."""
    total = sum(len(w) for w in waves)
    size = policy.batch.batch_size(total) if policy.batch is not None else None
    batches: list[Batch] = []
    for index, wave in enumerate(waves):
        rest = list(wave)
        groups: list[tuple[list[str], bool]] = []
        if index == 0 and policy.canary > 0 and rest:
            groups.append((rest[: policy.canary], True))
            rest = rest[policy.canary :]
        while rest:
            take = size or len(rest)
            groups.append((rest[:take], False))
            rest = rest[take:]
        for i, (servers, canary) in enumerate(groups):
            batches.append(Batch(len(batches) + 1, index, tuple(servers), canary, i == len(groups) - 1))
    return batches


class Effects(Protocol):
    """What a strategy may do to the servers (execute.py gives it a run's real ones; the
    strategy's tests give it fakes)."""

    def apply(self, names: list[str]) -> list[ServerResult]:
        """Run the operation on these servers, together."""
        ...

    @property
    def two_phase(self) -> bool:
        """The operation can stop each server just before its switch (prepare, then commit
        or abort)."""
        ...

    def prepare(self, names: list[str]) -> list[ServerResult]:
        """Everything before the switch; a result with `prepared` in its details waits."""
        ...

    def commit(self, names: list[str]) -> list[ServerResult]:
        """Switch servers that are prepared."""
        ...

    def abort(self, names: list[str]) -> list[ServerResult]:
        """Leave prepared servers as they were."""
        ...

    def check(self, names: list[str]) -> list[ServerResult]:
        """A gate: is each of these servers' services running and healthy?"""
        ...

    def undo(self, todo: list[tuple[str, str]]) -> list[ServerResult]:
        """Switch each (server, release) back to that release."""
        ...

    def wait(self, seconds: float) -> bool:
        """Sleep; False when interrupted."""
        ...

    def stopping(self) -> bool:
        """The operator asked the command to stop (the brake: flinger/engine/brake.py)."""
        ...


class Strategy(Protocol):
    """Which servers go next and whether to go on: a new rollout kind implements this."""

    def batches(self, waves: list[list[str]]) -> list[Batch]: ...

    def run(self, batches: list[Batch], effects: Effects) -> dict[str, ServerResult]: ...


@dataclass
class _Progress:
    """Where a rollout stands: every server's result so far, what it switched, why it stops."""

    results: dict[str, ServerResult] = field(default_factory=dict)
    switched: list[list[str]] = field(default_factory=list)  # per batch run, the servers moved to a new release
    failures: int = 0
    wave_failed: bool = False
    stop: str | None = None
    interrupted: bool = False


class BatchRollout:
    """The default strategy (see the module docstring): batches within dependency waves, an
    optional canary, an allowance of failures, and the fleet rolled back when it stops."""

    def __init__(self, policy: RolloutPolicy) -> None:
        self.policy = policy

    def batches(self, waves: list[list[str]]) -> list[Batch]:
        return plan_batches(waves, self.policy)

    def run(self, batches: list[Batch], effects: Effects) -> dict[str, ServerResult]:
        """Run the batches under the policy; every server's result, by name."""
        total = sum(len(b.servers) for b in batches)
        allowed = self.policy.max_failures.allowance(total)
        last_wave = max((b.wave for b in batches), default=0)
        state = _Progress()
        for batch in batches:
            if state.stop is None and effects.stopping():
                state.stop, state.interrupted = "interrupted", True
            if state.stop is not None:
                status = Status.INTERRUPTED if state.interrupted else Status.SKIPPED
                for name in batch.servers:
                    state.results[name] = ServerResult(name, status, message=f"not started: {state.stop}")
                continue
            bad = self._run_batch(batch, effects, state, allowed)
            if bad is None:  # interrupted
                continue
            state.failures += len(bad)
            state.wave_failed = state.wave_failed or bool(bad)
            if bad and state.failures > allowed:
                what = "the canary" if batch.canary else f"batch {batch.number}"
                state.stop = f"{what} failed ({', '.join(bad)})"
            elif batch.last_of_wave and state.wave_failed and batch.wave < last_wave:
                state.stop = f"wave {batch.wave + 1} failed and later waves start after it"
            if batch.last_of_wave:
                state.wave_failed = False
        if state.stop is not None and not state.interrupted and self.policy.rollback:
            _roll_back(state.switched, state.results, state.stop, effects)
        return state.results

    def _run_batch(self, batch: Batch, effects: Effects, state: _Progress, allowed: int) -> list[str] | None:
        """One batch, and its canary gate: the servers that failed (None: interrupted)."""
        got = _apply(list(batch.servers), effects, state.failures, allowed)
        for r in got:
            state.results[r.server] = r
        state.switched.append([r.server for r in got if r.status is Status.OK and r.switch and r.switch.switched])
        if effects.stopping() or any(r.status is Status.INTERRUPTED for r in got):
            state.stop, state.interrupted = "interrupted", True
            return None
        bad = [r.server for r in got if r.status not in (Status.OK, Status.NOT_SWITCHED)]
        if batch.canary and not bad and self.policy.canary_wait > 0:
            if not effects.wait(self.policy.canary_wait):
                state.stop, state.interrupted = "interrupted", True
                return None
            bad += self._canary_gate(batch, effects, state)
        return bad

    def _canary_gate(self, batch: Batch, effects: Effects, state: _Progress) -> list[str]:
        sick = []
        for r in effects.check(list(batch.servers)):
            if r.status is not Status.OK:
                sick.append(r.server)
                state.results[r.server] = replace(
                    r,
                    status=Status.FAILED,
                    step="canary",
                    message=f"healthy after the switch, not {self.policy.canary_wait:g} s later: {r.message}",
                    details={**state.results[r.server].details, **r.details},
                    switch=state.results[r.server].switch,
                )
        return sick


def ready_to_switch(result: ServerResult) -> bool:
    """A server of a two-phase batch that got ready and waits for its switch (or abort)."""
    return result.status is Status.OK and bool(result.details.get("prepared"))


def _apply(names: list[str], effects: Effects, failures: int, allowed: int) -> list[ServerResult]:
    """The operation on one batch. A batch of two or more, when the operation can, goes in two
    phases: every server gets ready (connect, lock, push, unpack, validate), and only when
    no more than the allowance failed do the ready ones switch; else (or once the brake is
    pulled) none of them does, and each says it is `not switched`."""
    if len(names) < 2 or not effects.two_phase:
        return effects.apply(names)
    results = {r.server: r for r in effects.prepare(names)}
    ready = [n for n in names if ready_to_switch(results[n])]
    failed = [n for n in names if results[n].status not in (Status.OK, Status.INTERRUPTED)]
    stopped = effects.stopping() or any(r.status is Status.INTERRUPTED for r in results.values())
    if ready and (stopped or failures + len(failed) > allowed):
        why = "interrupted" if stopped else f"{', '.join(failed)} failed before switching ({_steps(failed, results)})"
        for r in effects.abort(ready):
            before = results[r.server]
            note = "" if r.status is Status.OK else f"; leaving it failed: {r.message}"
            results[r.server] = replace(
                before,
                status=Status.INTERRUPTED if stopped else Status.NOT_SWITCHED,
                message=f"ready, not switched: {why}{note}",
                details={**before.details, "summary": f"not switched: {why}"},
                steps=before.steps + r.steps,
            )
    elif ready:
        for r in effects.commit(ready):
            before = results[r.server]
            results[r.server] = replace(r, details={**before.details, **r.details}, steps=before.steps + r.steps,
                                        duration=before.duration + r.duration)  # fmt: skip
    return [results[n] for n in names]


def _steps(failed: list[str], results: dict[str, ServerResult]) -> str:
    return ", ".join(f"{n}: {results[n].step or results[n].status.value}" for n in failed)


def _roll_back(switched: list[list[str]], results: dict[str, ServerResult], reason: str, effects: Effects) -> None:
    """Every server switched in this run back to the release it had, last batch first."""
    for group in reversed(switched):
        todo: list[tuple[str, str]] = []
        for name in group:
            change = results[name].switch
            before = change.previous if change else None
            if before:
                todo.append((name, before))
            else:  # its first install: there is nothing to go back to
                results[name].details["summary"] = (
                    f"{results[name].details.get('summary', '')}; kept: its first release, "
                    f"nothing to roll back to ({reason})"
                ).lstrip("; ")
        if todo:
            _undo(todo, results, reason, effects)


def _undo(todo: list[tuple[str, str]], results: dict[str, ServerResult], reason: str, effects: Effects) -> None:
    targets = dict(todo)
    for r in effects.undo(todo):
        mine = results[r.server]
        installed = mine.switch.release if mine.switch else None
        to = targets[r.server]
        if r.status is Status.OK:
            results[r.server] = replace(
                mine,
                status=Status.ROLLED_BACK,
                step=None,
                message=f"installed {installed}, then rolled back to {to}, healthy: {reason}",
                details={**mine.details, "rolled_back_to": to, "rollback_reason": reason},
            )
        else:
            results[r.server] = replace(
                mine,
                status=Status.FAILED,
                step=r.step or "rollback",
                message=f"installed {installed}; rolling back to {to} ({reason}) failed: {r.message}",
                tail=r.tail,
                details={**mine.details, **r.details, "rollback_reason": reason},
            )
