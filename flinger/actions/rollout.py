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
Ctrl-C stops it too, but rolls nothing back: the operator asked to stop, not to undo.

`run_rollout` gets the effects as callables (install a batch, check a batch, roll servers
back, wait), so the orchestration is tested without SSH.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from flinger.errors import UsageError
from flinger.ssh.fanout import ServerResult, Status


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


InstallBatch = Callable[[list[str]], list[ServerResult]]
CheckBatch = Callable[[list[str]], list[ServerResult]]
RollBack = Callable[[list[tuple[str, str]]], list[ServerResult]]  # (server, release to go back to)
Wait = Callable[[float], bool]  # False when interrupted


def interruptible_sleep(seconds: float) -> bool:
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return False
    return True


def run_rollout(
    batches: list[Batch],
    policy: RolloutPolicy,
    install: InstallBatch,
    check: CheckBatch,
    rollback: RollBack,
    wait: Wait = interruptible_sleep,
) -> dict[str, ServerResult]:
    """Run the batches under the policy; every server's result, by name."""
    total = sum(len(b.servers) for b in batches)
    allowed = policy.max_failures.allowance(total)
    last_wave = max((b.wave for b in batches), default=0)
    results: dict[str, ServerResult] = {}
    switched: list[list[str]] = []  # per batch run, the servers this run moved to a new release
    failures = 0
    wave_failed = False
    stop: str | None = None
    interrupted = False
    for batch in batches:
        if stop is not None:
            for name in batch.servers:
                results[name] = ServerResult(
                    name, Status.INTERRUPTED if interrupted else Status.SKIPPED, message=f"not started: {stop}"
                )
            continue
        got = install(list(batch.servers))
        for r in got:
            results[r.server] = r
        switched.append([r.server for r in got if r.status is Status.OK and r.details.get("switched")])
        if any(r.status is Status.INTERRUPTED for r in got):
            stop, interrupted = "interrupted", True
            continue
        bad = [r.server for r in got if r.status is not Status.OK]
        if batch.canary and not bad and policy.canary_wait > 0:
            if not wait(policy.canary_wait):
                stop, interrupted = "interrupted", True
                continue
            for r in check(list(batch.servers)):
                if r.status is not Status.OK:
                    bad.append(r.server)
                    results[r.server] = replace(
                        r,
                        status=Status.FAILED,
                        step="canary",
                        message=f"healthy after the switch, not {policy.canary_wait:g} s later: {r.message}",
                        details={**results[r.server].details, **r.details},
                    )
        failures += len(bad)
        wave_failed = wave_failed or bool(bad)
        if bad and failures > allowed:
            what = "the canary" if batch.canary else f"batch {batch.number}"
            stop = f"{what} failed ({', '.join(bad)})"
        elif batch.last_of_wave and wave_failed and batch.wave < last_wave:
            stop = f"wave {batch.wave + 1} failed and later waves start after it"
        if batch.last_of_wave:
            wave_failed = False
    if stop is not None and not interrupted and policy.rollback:
        _roll_back(switched, results, stop, rollback)
    return results


def _roll_back(switched: list[list[str]], results: dict[str, ServerResult], reason: str, rollback: RollBack) -> None:
    """Every server switched in this run back to the release it had, last batch first."""
    for group in reversed(switched):
        todo: list[tuple[str, str]] = []
        for name in group:
            before = results[name].details.get("previous_release")
            if before:
                todo.append((name, str(before)))
            else:  # its first install: there is nothing to go back to
                results[name].details["summary"] = (
                    f"{results[name].details.get('summary', '')}; kept: its first release, "
                    f"nothing to roll back to ({reason})"
                ).lstrip("; ")
        if not todo:
            continue
        for r in rollback(todo):
            mine = results[r.server]
            installed = mine.details.get("release")
            to = dict(todo)[r.server]
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
