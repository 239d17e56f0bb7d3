"""The rollout strategy (flinger/engine/strategy.py) on fake servers: batches, gates, the
allowance of failures, fleet rollback order, canaries, interrupts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flinger.engine.results import ServerResult, Status, Switch, exit_status
from flinger.engine.strategy import Amount, BatchRollout, RolloutPolicy, parse_amount, plan_batches
from flinger.errors import ExitStatus, UsageError


class Fleet:
    """Fake servers, the strategy's effects: each installs ok (switching from `old` to `new`)
    unless told to fail."""

    def __init__(self, failing: set[str] = frozenset(), first_install: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.failing = set(failing)
        self.first_install = set(first_install)
        self.installed: list[list[str]] = []
        self.rolled_back: list[list[tuple[str, str]]] = []
        self.checked: list[list[str]] = []
        self.unhealthy_later: set[str] = set()
        self.rollback_fails: set[str] = set()
        self.interrupt_at: str | None = None
        self.brake = False  # the operator's Ctrl-C, as the brake says it (flinger/engine/brake.py)
        self.brake_after: str | None = None  # pulled while this server installs: it finishes
        self.brake_in_wait = False
        self.waits: list[float] = []

    two_phase = False

    def apply(self, names: list[str]) -> list[ServerResult]:
        self.installed.append(names)
        out = []
        for n in names:
            if n == self.interrupt_at:
                out.append(ServerResult(n, Status.INTERRUPTED, message="not started: interrupted"))
                continue
            if n == self.brake_after:
                self.brake = True
            if n in self.failing:
                out.append(ServerResult(n, Status.FAILED, step="health:svc", message="svc is not healthy"))
            else:
                prev = None if n in self.first_install else "old"
                details = {"summary": "release new"}
                out.append(ServerResult(n, Status.OK, details=details, switch=Switch("new", prev, switched=True)))
        return out

    def check(self, names: list[str]) -> list[ServerResult]:
        self.checked.append(names)
        down = ServerResult("", Status.FAILED, message="svc is down")
        return [replace(down, server=n) if n in self.unhealthy_later else ServerResult(n, Status.OK) for n in names]

    def undo(self, todo: list[tuple[str, str]]) -> list[ServerResult]:
        self.rolled_back.append(todo)
        return [
            ServerResult(n, Status.FAILED, step="health:svc", message="svc is not healthy")
            if n in self.rollback_fails
            else ServerResult(n, Status.OK)
            for n, _ in todo
        ]

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.brake_in_wait:
            self.brake = True
        return not self.brake

    def stopping(self) -> bool:
        return self.brake

    def run(self, waves: list[list[str]], policy: RolloutPolicy) -> dict[str, ServerResult]:
        return BatchRollout(policy).run(plan_batches(waves, policy), self)


ONE = RolloutPolicy(batch=Amount(1))
NODES = [["a", "b", "c"]]


def statuses(results: dict[str, ServerResult]) -> dict[str, str]:
    return {name: r.status.value for name, r in results.items()}


def test_batches_cut_waves_by_count_percent_and_canary() -> None:
    sizes = [len(b.servers) for b in plan_batches([list("abcde")], RolloutPolicy(batch=Amount(2)))]
    assert sizes == [2, 2, 1]
    sizes = [len(b.servers) for b in plan_batches([list("abcde")], RolloutPolicy(batch=Amount(40, percent=True)))]
    assert sizes == [2, 2, 1]
    batches = plan_batches([list("abcde")], RolloutPolicy(batch=Amount(2), canary=1))
    assert [b.servers for b in batches] == [("a",), ("b", "c"), ("d", "e")] and batches[0].canary
    batches = plan_batches([["a", "b"], ["c"]], ONE)
    assert [(b.number, b.wave, b.servers, b.last_of_wave) for b in batches] == [
        (1, 0, ("a",), False), (2, 0, ("b",), True), (3, 1, ("c",), True)
    ]  # fmt: skip
    assert [b.servers for b in plan_batches([list("abc")], RolloutPolicy())] == [("a", "b", "c")]


def test_a_crash_in_the_first_batch_touches_no_other_server() -> None:
    fleet = Fleet(failing={"a"})
    results = fleet.run(NODES, ONE)
    assert fleet.installed == [["a"]] and fleet.rolled_back == []
    assert statuses(results) == {"a": "failed", "b": "skipped", "c": "skipped"}
    assert results["b"].message == "not started: batch 1 failed (a)"


def test_a_failure_in_batch_two_rolls_batch_one_back() -> None:
    fleet = Fleet(failing={"b"})
    results = fleet.run(NODES, ONE)
    assert fleet.installed == [["a"], ["b"]] and fleet.rolled_back == [[("a", "old")]]
    assert statuses(results) == {"a": "rolled back", "b": "failed", "c": "skipped"}
    assert results["a"].message == "installed new, then rolled back to old, healthy: batch 2 failed (b)"
    assert results["a"].details["rolled_back_to"] == "old"


def test_rollback_goes_batch_by_batch_in_reverse_order() -> None:
    fleet = Fleet(failing={"e"})
    fleet.run([list("abcde")], RolloutPolicy(batch=Amount(2)))
    assert fleet.rolled_back == [[("c", "old"), ("d", "old")], [("a", "old"), ("b", "old")]]


def test_failures_within_the_allowance_go_on_and_one_more_stops() -> None:
    fleet = Fleet(failing={"b"})
    results = fleet.run([list("abcd")], RolloutPolicy(batch=Amount(1), max_failures=Amount(1)))
    assert statuses(results) == {"a": "ok", "b": "failed", "c": "ok", "d": "ok"} and fleet.rolled_back == []
    fleet = Fleet(failing={"b", "c"})
    results = fleet.run([list("abcd")], RolloutPolicy(batch=Amount(1), max_failures=Amount(25, percent=True)))
    assert statuses(results) == {"a": "rolled back", "b": "failed", "c": "failed", "d": "skipped"}


def test_no_rollback_leaves_switched_servers_and_still_stops() -> None:
    fleet = Fleet(failing={"b"})
    results = fleet.run(NODES, RolloutPolicy(batch=Amount(1), rollback=False))
    assert statuses(results) == {"a": "ok", "b": "failed", "c": "skipped"} and fleet.rolled_back == []


def test_all_at_once_by_default_and_a_failure_rolls_the_others_back() -> None:
    fleet = Fleet(failing={"b"})
    results = fleet.run(NODES, RolloutPolicy())
    assert fleet.installed == [["a", "b", "c"]]
    assert fleet.rolled_back == [[("a", "old"), ("c", "old")]]
    assert statuses(results) == {"a": "rolled back", "b": "failed", "c": "rolled back"}


def test_ctrl_c_stops_the_rollout_and_undoes_nothing() -> None:
    fleet = Fleet()
    fleet.interrupt_at = "b"
    results = fleet.run(NODES, ONE)
    assert statuses(results) == {"a": "ok", "b": "interrupted", "c": "interrupted"} and fleet.rolled_back == []


def test_the_brake_pulled_while_a_batch_installs_lets_it_finish_and_starts_no_other() -> None:
    """Every server of the batch was already at work (none left to mark interrupted by the
    fan-out): the rollout stops all the same."""
    fleet = Fleet()
    fleet.brake_after = "a"
    results = fleet.run(NODES, ONE)
    assert fleet.installed == [["a"]] and fleet.rolled_back == []
    assert statuses(results) == {"a": "ok", "b": "interrupted", "c": "interrupted"}
    assert results["b"].message == "not started: interrupted"


def test_the_brake_in_a_canary_wait_stops_there() -> None:
    fleet = Fleet()
    fleet.brake_in_wait = True
    results = fleet.run(NODES, RolloutPolicy(batch=Amount(2), canary=1, canary_wait=300))
    assert fleet.installed == [["a"]] and fleet.checked == [] and fleet.rolled_back == []
    assert statuses(results) == {"a": "ok", "b": "interrupted", "c": "interrupted"}


def test_the_brake_in_a_wave_stops_the_later_waves() -> None:
    fleet = Fleet()
    fleet.brake_after = "b"
    results = fleet.run([["a", "b"], ["c"]], RolloutPolicy())
    assert fleet.installed == [["a", "b"]]
    assert statuses(results) == {"a": "ok", "b": "ok", "c": "interrupted"}


def test_a_canary_that_sickens_during_its_wait_stops_and_rolls_back() -> None:
    fleet = Fleet()
    fleet.unhealthy_later = {"a"}
    policy = RolloutPolicy(batch=Amount(2), canary=1, canary_wait=30)
    results = fleet.run(NODES, policy)
    assert fleet.waits == [30] and fleet.checked == [["a"]]
    assert statuses(results) == {"a": "rolled back", "b": "skipped", "c": "skipped"}
    assert results["b"].message == "not started: the canary failed (a)"
    fleet = Fleet()
    assert statuses(fleet.run(NODES, policy)) == {"a": "ok", "b": "ok", "c": "ok"}
    assert fleet.installed == [["a"], ["b", "c"]]


def test_a_first_install_has_nothing_to_go_back_to_and_says_so() -> None:
    fleet = Fleet(failing={"b"}, first_install={"a"})
    results = fleet.run(NODES, ONE)
    assert fleet.rolled_back == [] and results["a"].status is Status.OK
    assert "nothing to roll back to (batch 2 failed (b))" in results["a"].details["summary"]


def test_a_rollback_that_fails_is_a_failure_of_that_server() -> None:
    fleet = Fleet(failing={"c"})
    fleet.rollback_fails = {"a"}
    results = fleet.run(NODES, ONE)
    assert statuses(results) == {"a": "failed", "b": "rolled back", "c": "failed"}
    assert results["a"].step == "health:svc" and "rolling back to old (batch 3 failed (c)) failed" in str(
        results["a"].message
    )


def test_a_failed_wave_stops_the_waves_after_it_whatever_the_allowance() -> None:
    fleet = Fleet(failing={"a"})
    results = fleet.run([["a", "b"], ["c"]], RolloutPolicy(max_failures=Amount(5)))
    assert statuses(results) == {"a": "failed", "b": "rolled back", "c": "skipped"}
    assert results["c"].message == "not started: wave 1 failed and later waves start after it"


@pytest.mark.parametrize(
    ("text", "minimum", "expected"),
    [("2", 1, Amount(2)), ("25%", 1, Amount(25, True)), ("0", 0, Amount(0)), ("0%", 0, Amount(0, True))],
)
def test_amounts(text: str, minimum: int, expected: Amount) -> None:
    assert parse_amount(text, "--batch", minimum=minimum) == expected


@pytest.mark.parametrize("text", ["0", "-1", "x", "120%", "0%", "1.5", ""])
def test_bad_batch_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--batch"):
        parse_amount(text, "--batch", minimum=1)


class TwoPhaseFleet(Fleet):
    """Servers that get ready first and switch only when told to (install's two phases)."""

    two_phase = True

    def __init__(self, unreachable: set[str] = frozenset(), **kw: set[str]) -> None:  # type: ignore[assignment]
        super().__init__(**kw)
        self.unreachable = set(unreachable)
        self.prepared: list[list[str]] = []
        self.committed: list[list[str]] = []
        self.aborted: list[list[str]] = []
        self.brake_in_prepare = False

    def prepare(self, names: list[str]) -> list[ServerResult]:
        self.prepared.append(names)
        if self.brake_in_prepare:
            self.brake = True
        return [
            ServerResult(n, Status.UNREACHABLE, step="connect", message="cannot connect")
            if n in self.unreachable
            else ServerResult(n, Status.OK, details={"prepared": "new"})
            for n in names
        ]

    def commit(self, names: list[str]) -> list[ServerResult]:
        self.committed.append(names)
        return Fleet.apply(self, names)

    def abort(self, names: list[str]) -> list[ServerResult]:
        self.aborted.append(names)
        return [ServerResult(n, Status.OK) for n in names]


def test_a_batch_switches_only_once_every_server_of_it_is_ready() -> None:
    fleet = TwoPhaseFleet(unreachable={"b"})
    results = fleet.run(NODES, RolloutPolicy())
    assert fleet.prepared == [["a", "b", "c"]] and fleet.committed == [] and fleet.aborted == [["a", "c"]]
    assert results["b"].status is Status.UNREACHABLE
    for name in ("a", "c"):
        assert results[name].status is Status.NOT_SWITCHED, results[name]
        assert results[name].message == "ready, not switched: b failed before switching (b: connect)"
    assert exit_status(results.values()) is ExitStatus.UNREACHABLE  # nobody else failed


def test_within_the_allowance_the_ready_servers_switch() -> None:
    fleet = TwoPhaseFleet(unreachable={"b"})
    results = fleet.run(NODES, RolloutPolicy(max_failures=Amount(1)))
    assert fleet.committed == [["a", "c"]] and fleet.aborted == []
    assert results["a"].status is Status.OK and results["a"].switch == Switch("new", "old", switched=True)
    assert results["b"].status is Status.UNREACHABLE


def test_the_brake_during_prepare_switches_none_of_the_batch() -> None:
    fleet = TwoPhaseFleet()
    fleet.brake_in_prepare = True
    results = fleet.run([["a", "b"], ["c"]], RolloutPolicy())
    assert fleet.aborted == [["a", "b"]] and fleet.committed == [] and fleet.installed == []
    assert {n: r.status for n, r in results.items()} == dict.fromkeys("abc", Status.INTERRUPTED)
    assert results["a"].message == "ready, not switched: interrupted"
    assert exit_status(results.values()) is ExitStatus.INTERRUPTED


def test_a_failure_before_switching_in_a_later_batch_rolls_back_the_earlier_ones_only() -> None:
    fleet = TwoPhaseFleet(unreachable={"d"})
    results = fleet.run([["a", "b", "c", "d"]], RolloutPolicy(batch=Amount(2)))
    assert fleet.committed == [["a", "b"]] and fleet.aborted == [["c"]]
    assert fleet.rolled_back == [[("a", "old"), ("b", "old")]]
    assert results["c"].status is Status.NOT_SWITCHED and results["a"].status is Status.ROLLED_BACK


def test_a_batch_of_one_goes_in_one_step() -> None:
    fleet = TwoPhaseFleet()
    fleet.run(NODES, ONE)
    assert fleet.prepared == [] and fleet.installed == [["a"], ["b"], ["c"]]


def test_an_operation_that_changes_servers_starts_on_none_while_one_is_untrusted() -> None:
    from types import SimpleNamespace

    from flinger.engine.execute import execute
    from flinger.engine.operations import Status
    from flinger.errors import HostKeyError
    from flinger.topology.model import Server

    class Hosts:
        def check_trusted(self, server: Server) -> None:
            if server.name != "a":
                raise HostKeyError(f"{server.name}: unknown host key; run: flinger trust --servers {server.name}")

    class Changes(Status):
        changes_servers = True

        def start(self, run: object, at_once: int) -> None:
            raise AssertionError("started although a server is untrusted")

    run = SimpleNamespace(hosts=Hosts(), settings=SimpleNamespace(parallel=16))
    servers = [Server(name=n, addr=f"10.0.0.{i}") for i, n in enumerate("abc", 1)]
    with pytest.raises(HostKeyError) as refused:
        execute(run, Changes(), servers)  # type: ignore[arg-type]
    assert refused.value.message == (
        "b: unknown host key; run: flinger trust --servers b (and 1 more: c); no server was touched"
    )
