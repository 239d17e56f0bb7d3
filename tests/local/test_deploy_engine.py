"""The deploy engine on the local transport (flinger/engine/local.py): the real run, operations,
rollout and remote tool (lock, per-run staging, install, rollback), each "server" a home
directory on this machine, no SSH. The SSH path is the integration tests' job.

The store here is the test's own, added to the engine's registry of stores (STORES), and
one test adds a transport of its own to TRANSPORTS: a new store or transport is one entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flinger.engine import hosts as engine_hosts
from flinger.engine.execute import execute
from flinger.engine.fanout import Reporter
from flinger.engine.hosts import HostPool
from flinger.engine.install import Install
from flinger.engine.ledger import read_ledger
from flinger.engine.local import LocalPool, LocalTransport
from flinger.engine.operations import Operation
from flinger.engine.operations import Status as StatusOperation
from flinger.engine.plan import plan_deploy
from flinger.engine.results import ServerResult, Status
from flinger.engine.rollback import FleetRollback
from flinger.engine.run import Settings, open_run
from flinger.engine.stores import STORES, StoreKind, StoreReport
from flinger.engine.strategy import Amount, BatchRollout, RolloutPolicy
from flinger.errors import RemoteCommandError, UnreachableError, UsageError
from flinger.manifest.model import OverlayFile
from flinger.overlay.make import make_overlay
from flinger.progress import Sink, nowhere
from flinger.protocol.codec import encode
from flinger.protocol.plans import PullSpec
from flinger.protocol.results import BuiltPackage
from flinger.remote import files, tarball
from flinger.topology.model import Artifacts, Server, Topology
from tests.state_helpers import overlays
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes, write_template

NODES = ("node1", "node2", "node3")


class CopyStore:
    """A store of the test's own: artifacts built here, delivered by copying (a corrupt copy
    for the servers in `broken`)."""

    wait_step: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broken: set[str] = set()
        self.unreachable = False  # the builder cannot be reached: what was built is unknown
        self.version = ""
        self.delivered: list[str] = []
        self.fail_once: set[str] = set()  # servers whose next delivery fails
        self.expected: list[int] = []  # what each run said may come at once (expect)

    def build(self, version: str) -> None:
        tree = self.root / f"tree-{version}"
        tree.mkdir(parents=True)
        (tree / "VERSION").write_text(version)
        pack = self.root / "packages" / "app.tar.gz"
        pack.parent.mkdir(parents=True, exist_ok=True)
        tarball.pack_tree(str(tree), str(pack))
        self.version = version

    def built(self) -> dict[str, BuiltPackage]:
        if self.unreachable:
            raise UnreachableError("build1: cannot connect: Connection refused")
        pack = self.root / "packages" / "app.tar.gz"
        return {"app": BuiltPackage(sha256=files.sha256_file(str(pack)), file="packages/app.tar.gz")}

    def pull_spec(self) -> PullSpec | None:
        return None  # the servers get packages delivered, as from the builder

    def expect(self, deliveries: int) -> None:
        self.expected.append(deliveries)

    def report(self) -> StoreReport:
        return StoreReport("copy")

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        self.delivered.append(server.name)
        if server.name in self.fail_once:
            self.fail_once.discard(server.name)
            raise RemoteCommandError(f"push to {server.name}", 23, ["rsync: connection unexpectedly closed"])
        os.makedirs(f"{run_dir}/packages", 0o700, exist_ok=True)
        data = (self.root / "packages" / "app.tar.gz").read_bytes()
        if server.name in self.broken:
            data = data[:-10]  # a copy cut short
        Path(f"{run_dir}/packages/app.tar.gz").write_bytes(data)
        return {"bytes_sent": len(data)}


class Fleet:
    def __init__(self, root: Path) -> None:
        write_template(root, "tmpl/app.conf.j2", "name = {{ server.name }}\n")
        base = make_topology(root, nodes(3))
        self.topology: Topology = replace(
            base,
            deployment=replace(base.deployment, install_dir="$HOME/app", keep_releases=3),
            servers={n: replace(s, privilege="none") for n, s in base.servers.items()},
            artifacts=Artifacts(store="copy"),
        )
        self.manifest = make_manifest(root, overlay=[OverlayFile(template="tmpl/app.conf.j2", dest="app.conf")])
        make_overlay(self.topology, self.manifest)
        self.homes = self.topology.state_dir / "local-hosts"  # the local transport's hosts
        self.store = CopyStore(root / "artifacts")
        self.transport = "local"
        self.extra: dict[str, Any] = {}  # what the last run's operation said of the fleet at its end
        self.settings = Settings(parallel=3)

    @property
    def servers(self) -> list[Server]:
        return [self.topology.servers[n] for n in NODES]

    def run(
        self,
        operation: Operation,
        policy: RolloutPolicy | None = None,
        sink: Sink = nowhere,
        only: tuple[str, ...] = NODES,
    ) -> list[ServerResult]:
        chosen = [self.topology.servers[n] for n in only]
        with open_run(self.topology, self.manifest, sink=sink, settings=self.settings,
                      transport=self.transport) as run:  # fmt: skip
            results = execute(run, operation, chosen, BatchRollout(policy) if policy else None)
            self.extra = operation.finish(run, results)
            return results

    def install(
        self, policy: RolloutPolicy | None = None, sink: Sink = nowhere, only: tuple[str, ...] = NODES
    ) -> dict[str, ServerResult]:
        plans = plan_deploy(self.topology, self.manifest, [self.topology.servers[n] for n in only])
        results = self.run(Install(plans, overlays(self.topology)), policy or RolloutPolicy(), sink, only)
        return {r.server: r for r in results}

    def rollback(
        self,
        to: str | None = None,
        policy: RolloutPolicy | None = None,
        sink: Sink = nowhere,
        restore_rotated: bool = False,
    ) -> dict[str, ServerResult]:
        """`deploy rollback` of the fleet, as the CLI drives it."""
        waves = Install(plan_deploy(self.topology, self.manifest, self.servers)).waves(self.servers)
        operation = FleetRollback(to, self.servers, waves, restore_rotated=restore_rotated)
        results = self.run(operation, policy or RolloutPolicy(rollback=False), sink)
        return {r.server: r for r in results}

    def fleet_release(self, node: str) -> str:
        receipt = json.loads((self.homes / node / "app" / ".flinger" / "state.json").read_text())
        return str(receipt["fleet_release"])

    def version(self, node: str) -> str:
        current = self.homes / node / "app" / "current"
        return (current / "app" / "VERSION").read_text() if current.exists() else ""

    def staging_left(self, node: str) -> list[str]:
        runs = self.homes / node / "flinger-staging" / "runs"
        return sorted(str(p.relative_to(runs)) for p in runs.glob("*/*")) if runs.exists() else []


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[CopyStore]:
    """The test's store, registered in the engine's STORES for the test's length."""
    store = CopyStore(tmp_path / "artifacts")
    STORES["copy"] = StoreKind(lambda _topology, _hosts: store, forwards_agent=False)
    try:
        yield store
    finally:
        del STORES["copy"]


@pytest.fixture
def fleet(tmp_path: Path, registered: CopyStore) -> Fleet:
    fleet = Fleet(tmp_path)
    fleet.store = registered
    fleet.store.build("v1")
    results = fleet.install()
    assert all(r.status is Status.OK for r in results.values()), results
    return fleet


def test_one_run_is_one_fleet_release_on_every_server_and_status_fails_on_a_split_role(fleet: Fleet) -> None:
    known = read_ledger(fleet.topology.state_dir)
    (first,) = known.releases.values()
    assert first.state == "completed" and known.running == dict.fromkeys(NODES, first.id)
    assert fleet.extra["fleet_release"] == first.id and fleet.extra["fleet"]["skew"] == {}
    status = fleet.run(StatusOperation())
    assert {r.details["fleet_release"] for r in status} == {first.id} and "fleet_problem" not in fleet.extra
    fleet.install()  # nothing new: no new release
    assert list(read_ledger(fleet.topology.state_dir).releases) == [first.id]
    fleet.store.build("v2")
    second = fleet.install(only=("node1",))["node1"]
    assert second.details["fleet_release"] == fleet.extra["fleet_release"] != first.id
    assert fleet.extra["release_state"] == "partial"
    status = fleet.run(StatusOperation())
    assert all(r.status is Status.OK for r in status)  # every server is well: the fleet is not
    assert fleet.extra["fleet_problem"] == (
        f"servers of one role run different releases: role node: {second.details['fleet_release']} on node1; "
        f"{first.id} on node2, node3"
    )
    fleet.install()  # the others follow: the same release, now completed
    known = read_ledger(fleet.topology.state_dir)
    assert list(known.releases) == [first.id, second.details["fleet_release"]]
    assert known.releases[second.details["fleet_release"]].state == "completed"
    for node in NODES:  # and the servers' own receipts agree
        receipt = json.loads((fleet.homes / node / "app" / ".flinger" / "state.json").read_text())
        assert receipt["fleet_release"] == second.details["fleet_release"], node


def test_a_builder_that_cannot_be_reached_fails_each_server_at_builder_not_lock(fleet: Fleet) -> None:
    before = {node: fleet.version(node) for node in NODES}
    fleet.store.build("v2")
    fleet.store.unreachable = True
    results = fleet.install()
    for node in NODES:
        assert results[node].status is not Status.OK and results[node].step == "builder", results[node]
        assert "build1" in (results[node].message or ""), results[node]
        assert fleet.version(node) == before[node]  # nothing switched
        assert not (fleet.homes / node / "app" / ".flinger" / "lock").exists()  # nor kept locked


def test_install_locks_stages_per_run_and_cleans_up(fleet: Fleet) -> None:
    for node in NODES:
        assert fleet.version(node) == "v1"
        assert fleet.staging_left(node) == []  # the run's dir (and its overlay) is gone
        assert not (fleet.homes / node / "app" / ".flinger" / "lock").exists()  # released
        conf = fleet.homes / node / "app" / "current" / "overlay" / "files" / "app.conf"
        assert conf.read_text() == f"name = {node}\n"
    again = fleet.install()
    assert {n: r.details["packages_sent"] for n, r in again.items()} == {n: [] for n in NODES}
    assert all(r.details["changed"] is False for r in again.values())


def test_a_failure_in_batch_two_rolls_batch_one_back_to_its_release(fleet: Fleet) -> None:
    fleet.store.build("v2")
    fleet.store.broken = {"node2"}
    results = fleet.install(RolloutPolicy(batch=Amount(1)))
    assert [results[n].status for n in NODES] == [Status.ROLLED_BACK, Status.FAILED, Status.SKIPPED]
    assert results["node2"].step == "unpack" and "does not match" in str(results["node2"].message)
    message = str(results["node1"].message)
    assert "rolled back to" in message and "batch 2 failed (node2)" in message, message
    assert [fleet.version(n) for n in NODES] == ["v1", "v1", "v1"]  # the whole fleet as it was
    assert fleet.store.delivered[-2:] == ["node1", "node2"]  # node3 never started
    history = json.loads((fleet.homes / "node1" / "app" / ".flinger" / "state.json").read_text())
    assert history["previous_release"] is not None and len(history["releases"]) == 2

    fleet.store.broken = set()
    results = fleet.install(RolloutPolicy(batch=Amount(1)))  # the re-run finishes the job
    assert all(r.status is Status.OK for r in results.values()) and [fleet.version(n) for n in NODES] == ["v2"] * 3


def test_no_rollback_leaves_the_first_batch_on_the_new_release(fleet: Fleet) -> None:
    fleet.store.build("v2")
    fleet.store.broken = {"node2"}
    results = fleet.install(RolloutPolicy(batch=Amount(1), rollback=False))
    assert [results[n].status for n in NODES] == [Status.OK, Status.FAILED, Status.SKIPPED]
    assert [fleet.version(n) for n in NODES] == ["v2", "v1", "v1"]


def test_a_rollback_after_a_rolled_back_rollout_lands_every_server_on_one_earlier_release(fleet: Fleet) -> None:
    """v1 (the fixture's), v2, then v3 fails in batch 2 and is undone: a plain rollback goes
    to v1, the last completed release before the one running, never forward to v3."""
    first = fleet.fleet_release("node1")
    fleet.store.build("v2")
    assert all(r.status is Status.OK for r in fleet.install().values())
    second = fleet.fleet_release("node1")
    fleet.store.build("v3")
    fleet.store.broken = {"node2"}
    rolled = fleet.install(RolloutPolicy(batch=Amount(1)))
    assert rolled["node1"].status is Status.ROLLED_BACK and fleet.extra["release_state"] == "rolled back"
    third = fleet.extra["fleet_release"]
    fleet.store.broken = set()
    results = fleet.rollback()
    assert all(r.status is Status.OK for r in results.values()), results
    assert [fleet.version(n) for n in NODES] == ["v1"] * 3
    assert {fleet.fleet_release(n) for n in NODES} == {first} and fleet.extra["fleet_release"] == first
    known = read_ledger(fleet.topology.state_dir)
    assert (known.releases[second].state, known.releases[third].state) == ("rolled back", "rolled back")
    assert known.running == dict.fromkeys(NODES, first)
    with pytest.raises(UsageError, match=f"no completed fleet release before {first}"):
        fleet.rollback()  # nothing completed before the first release: refused
    assert [fleet.version(n) for n in NODES] == ["v1"] * 3
    forward = fleet.rollback(to=second)  # going forward again is the operator's explicit choice
    assert all(r.status is Status.OK for r in forward.values()) and [fleet.version(n) for n in NODES] == ["v2"] * 3


def test_a_rotation_is_not_undone_by_a_rollback_and_its_old_secrets_go_once_the_fleet_completes_it(
    fleet: Fleet,
) -> None:
    first = fleet.fleet_release("node1")
    old_key = (fleet.homes / "node1" / "app" / "current" / "overlay" / "tls" / "key.pem").read_bytes()
    make_overlay(fleet.topology, fleet.manifest, rotate=True)
    fleet.install(only=("node1",))  # the rotation reaches node1 only: not completed
    assert fleet.extra["release_state"] == "partial" and "forgot" not in fleet.extra
    with pytest.raises(UsageError, match="predates the rotation of the deployment CA key"):
        fleet.rollback()
    assert fleet.fleet_release("node1") != first  # refused: nothing changed
    back = fleet.rollback(restore_rotated=True)  # the operator's explicit choice, while it is not complete
    assert all(r.status is Status.OK for r in back.values()) and {fleet.fleet_release(n) for n in NODES} == {first}
    assert fleet.extra["restored_rotated"][0] == "the deployment CA key"

    fleet.install()  # the rotation again, now to the whole fleet: completed, and the old secrets go
    rotated = fleet.extra["fleet_release"]
    assert fleet.extra["release_state"] == "completed"
    assert fleet.extra["forgot"] == {key: [first] for key in NODES} and "fleet_problem" not in fleet.extra
    for node in NODES:
        kept = fleet.homes / node / "app" / "releases" / first
        assert kept.is_dir() and not (kept / "overlay").exists(), node  # its packages stay, its secrets do not
        assert old_key not in b"".join(p.read_bytes() for p in (fleet.homes / node / "app").rglob("*.pem"))
    with pytest.raises(UsageError, match="lost its overlay once the fleet completed a rotation"):
        fleet.rollback(to=first, restore_rotated=True)
    assert {fleet.fleet_release(n) for n in NODES} == {rotated}
    fleet.install()  # nothing left to forget: no second round
    assert "forgot" not in fleet.extra


def test_history_and_rollback_to_an_earlier_release(fleet: Fleet) -> None:
    fleet.store.build("v2")
    assert all(r.status is Status.OK for r in fleet.install().values())
    results = fleet.rollback()
    assert all(r.status is Status.OK for r in results.values()), results
    assert [fleet.version(n) for n in NODES] == ["v1"] * 3
    back = fleet.rollback(to=str(results["node1"].details["previous_release"]))
    assert all(r.status is Status.OK for r in back.values()) and fleet.version("node1") == "v2"


def _hold_lock(fleet: Fleet, node: str) -> None:
    lock = fleet.homes / node / "app" / ".flinger" / "lock"
    # another run holds it, and a process of it (this test) still runs on the "server"
    from flinger.remote import lock as remote_lock

    record = {"holder": "someone", "since": "now", "boot_id": remote_lock._boot_id(),
              "session": encode(remote_lock.process_ref(os.getpid(), "ssh session"))}  # fmt: skip
    lock.write_text(json.dumps(record))


def test_a_held_lock_fails_that_server_before_anything_is_staged_and_the_batch_does_not_switch(fleet: Fleet) -> None:
    _hold_lock(fleet, "node3")
    before = {n: sorted(p.name for p in (fleet.homes / n / "app" / "releases").iterdir()) for n in NODES}
    fleet.store.build("v2")
    results = fleet.install()
    assert results["node3"].status is Status.FAILED and results["node3"].step == "lock"
    assert "held by someone" in str(results["node3"].message)
    assert "push" not in results["node3"].details and fleet.staging_left("node3") == []
    for node in ("node1", "node2"):  # ready, then held back: as they were, lock and staging gone
        assert results[node].status is Status.NOT_SWITCHED, results[node]
        assert results[node].message == "ready, not switched: node3 failed before switching (node3: lock)"
        assert [s["step"] for s in results[node].steps][-1] == "install: abort"
        assert sorted(p.name for p in (fleet.homes / node / "app" / "releases").iterdir()) == before[node]
        assert not (fleet.homes / node / "app" / ".flinger" / "lock").exists()
        assert fleet.staging_left(node) == []
    assert [fleet.version(n) for n in NODES] == ["v1"] * 3


def test_a_batch_gives_its_locks_back_while_another_run_holds_one_and_then_goes(fleet: Fleet) -> None:
    import threading

    _hold_lock(fleet, "node3")  # another run holds node3 for a while; this one must not sit on node1, node2
    lock = fleet.homes / "node3" / "app" / ".flinger" / "lock"

    def other_run() -> None:
        import time

        time.sleep(2)
        lock.unlink()

    fleet.settings = replace(fleet.settings, lock_wait=30)
    fleet.store.build("v2")
    events: list[Any] = []
    other = threading.Thread(target=other_run)
    other.start()
    results = fleet.install(sink=events.append)
    other.join()
    assert all(r.status is Status.OK for r in results.values()), results
    assert [fleet.version(n) for n in NODES] == ["v2"] * 3
    gave_back = [e for e in events if getattr(e, "name", "") == "node1" and getattr(e, "step", "") == "install: abort"]
    assert gave_back, "node1 was ready and kept its lock while node3's was held"
    waits = [
        e.text
        for e in events
        if getattr(e, "name", "") == "node3" and "waiting for the deploy lock" in str(getattr(e, "text", ""))
    ]
    assert waits and "held by someone" in waits[0], waits


def test_within_the_allowance_a_held_lock_costs_the_others_nothing(fleet: Fleet) -> None:
    _hold_lock(fleet, "node3")
    fleet.store.build("v2")
    results = fleet.install(RolloutPolicy(max_failures=Amount(1)))
    assert results["node3"].status is Status.FAILED and results["node3"].step == "lock"
    assert [results[n].status for n in ("node1", "node2")] == [Status.OK, Status.OK]
    steps = [s["step"] for s in results["node1"].steps]
    assert steps.index("install: ready") < steps.index("install: switch"), (
        steps
    )  # one batch: ready first, then switched
    assert [fleet.version(n) for n in NODES] == ["v2", "v2", "v1"]


def test_one_stream_of_events_feeds_the_watcher_the_run_log_and_the_results(fleet: Fleet) -> None:
    from flinger.progress import Event, as_record

    seen: list[Event] = []
    fleet.store.build("v2")
    results = list(fleet.install(sink=seen.append).values())
    assert all(r.status is Status.OK for r in results)
    logs = sorted((fleet.topology.state_dir / "logs").iterdir())[-1]
    kept = [json.loads(ln) for ln in (logs / "events.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in kept] == [as_record(e) for e in seen]
    for result in results:
        mine = [as_record(e) for e in seen if e.name == result.server]
        steps = [r["step"] for r in mine if r["event"] == "step"]
        assert mine[0]["event"] == "started" and mine[-1] == {"event": "finished", "name": result.server, "state": "ok"}
        # a new build: delivered ahead (the ledger says the server has v1 only), then one install
        assert steps[:6] == ["connect", "tool", "builder", "push", "lock", "install: compare: changed"], steps
        assert "install: switch" in steps, steps
        assert [s["step"] for s in result.steps] == steps  # --json carries the same steps, timed


def test_a_rollback_with_a_canary_checks_it_again_before_the_others_go_back(fleet: Fleet) -> None:
    from flinger.progress import Event, Started, Step

    fleet.store.build("v2")
    assert all(r.status is Status.OK for r in fleet.install().values())
    seen: list[Event] = []
    policy = RolloutPolicy(canary=1, canary_wait=0.01, rollback=False)
    results = fleet.rollback(policy=policy, sink=seen.append).values()
    assert all(r.status is Status.OK for r in results) and [fleet.version(n) for n in NODES] == ["v1"] * 3
    order = [(type(e).__name__, e.name, getattr(e, "step", "")) for e in seen if isinstance(e, (Started, Step))]
    asked = order.index(("Step", "node1", "rollback"))  # every server said what it keeps: then the rollback
    assert {name for _kind, name, step in order[:asked] if step == "history"} == set(NODES)
    gate = order.index(("Step", "node1", "status"))  # the canary's second look
    assert all(name == "node1" for _kind, name, _step in order[asked:gate]), order
    assert {name for _kind, name, _step in order[gate:]} == {"node1", "node2", "node3"}


class CountingPool(LocalPool):
    """A transport of the test's own: the local one, counting the command lines each host runs."""

    commands: ClassVar[list[tuple[str, str]]] = []

    def get(self, name: str) -> LocalTransport:
        host = super().get(name)
        if not isinstance(host, _Counting):
            host = self._hosts[name] = _Counting(host.server, host.home_dir)
        return host


class _Counting(LocalTransport):
    riding = False  # running the command that rides the connection's start: counted as that

    def open(self, first: str = "") -> str | None:
        if not first or self._opened:
            return super().open(first)
        CountingPool.commands.append((self.server.name, f"(with the connection) {first}"))
        self.riding = True
        try:
            return super().open(first)
        finally:
            self.riding = False

    def run(self, command: str, **kw: Any) -> Any:
        if not self.riding:
            CountingPool.commands.append((self.server.name, command))
        return super().run(command, **kw)


@pytest.fixture
def counting() -> Iterator[list[tuple[str, str]]]:
    """The test's transport, registered in the engine's TRANSPORTS for the test's length."""

    def make(topology: Topology, _agent_for: frozenset[str]) -> HostPool:
        return CountingPool(topology.servers, topology.state_dir / "local-hosts")

    engine_hosts.TRANSPORTS["counting"] = make
    CountingPool.commands = []
    try:
        yield CountingPool.commands
    finally:
        del engine_hosts.TRANSPORTS["counting"]


def test_a_run_with_nothing_to_deliver_is_one_remote_command_per_server(
    fleet: Fleet, counting: list[tuple[str, str]]
) -> None:
    fleet.transport = "counting"
    results = list(fleet.install().values())
    assert all(r.status is Status.OK and r.details["changed"] is False for r in results)
    for node in NODES:
        tool_runs = [c for n, c in counting if n == node and "flinger-remote.pyz" in c and "sha256sum" not in c]
        assert len(tool_runs) == 1 and " install" in tool_runs[0], tool_runs  # no lock, no unlock of its own
        assert not (fleet.homes / node / "app" / ".flinger" / "lock").exists()
        # two round trips: the tool's check (its dirs made) rides the connection's start; the install
        asked = [c for n, c in counting if n == node]
        assert len(asked) == 2 and asked[0].startswith("(with the connection) mkdir -p"), asked
        assert "sha256sum" in asked[0] and asked[1] == tool_runs[0]
    assert fleet.store.delivered.count("node1") == 1  # the fixture's first install only

    # a new build, which the ledger says no server has: delivered ahead, then one install up
    # to ready (the lock taken) that waits for the word, switches, and takes the confirmation
    # (which unlocks): one start of the tool
    fleet.store.build("v2")
    counting.clear()
    results = list(fleet.install().values())
    assert all(r.status is Status.OK and r.details["packages_sent"] == ["app"] for r in results)
    for node in NODES:
        tool_runs = [c for n, c in counting if n == node and "flinger-remote.pyz" in c and "sha256sum" not in c]
        assert len(tool_runs) == 1 and tool_runs[0].endswith(" install"), tool_runs
        # the run's staging dir came with the connection's start too: no mkdir of its own
        asked = [c for n, c in counting if n == node]
        assert len(asked) == 2 and asked[0].startswith("(with the connection) mkdir -p"), asked
        assert not (fleet.homes / node / "app" / ".flinger" / "lock").exists()  # confirmed: the lock given up
        assert not (fleet.homes / node / "app" / ".flinger" / "pending.json").exists()  # no watcher waits
        assert fleet.version(node) == "v2"
    assert fleet.store.delivered.count("node1") == 2  # once per build
    assert fleet.store.expected[-1] == len(NODES)  # told before the run that all may come at once


def test_a_server_the_ledger_thinks_has_the_build_but_lacks_it_asks_for_it_under_the_lock(fleet: Fleet) -> None:
    import shutil

    shutil.rmtree(fleet.homes / "node2" / "app")  # wiped behind flinger's back: the ledger still says v1
    fleet.store.delivered.clear()
    results = fleet.install()
    assert all(r.status is Status.OK for r in results.values()), results
    assert fleet.store.delivered == ["node2"] and results["node2"].details["packages_sent"] == ["app"]
    steps = [s["step"] for s in results["node2"].steps]
    assert steps.index("lock") < steps.index("push") < steps.index("install"), steps  # need, then delivered
    assert [results[n].details["changed"] for n in NODES] == [False, True, False]
    assert [fleet.version(n) for n in NODES] == ["v1"] * 3 and fleet.staging_left("node2") == []


def test_a_delivery_ahead_that_fails_is_only_noted_and_the_install_asks_again(fleet: Fleet) -> None:
    fleet.store.build("v2")
    fleet.store.fail_once.add("node3")
    fleet.store.delivered.clear()
    seen: list[Any] = []
    results = fleet.install(sink=seen.append)
    assert all(r.status is Status.OK for r in results.values()), results
    assert fleet.store.delivered.count("node3") == 2 and fleet.version("node3") == "v2"
    said = [str(getattr(e, "text", "")) for e in seen if getattr(e, "name", "") == "node3"]
    assert any("push ahead of the lock failed, the install will ask again" in t for t in said), said
    steps = [s["step"] for s in results["node3"].steps]
    assert steps[3:5] == ["push", "lock"] and steps.count("push") == 2, steps


def test_after_an_uninstall_the_ledger_knows_the_servers_run_nothing_and_delivers_ahead(fleet: Fleet) -> None:
    from flinger.engine.operations import Uninstall

    results = fleet.run(Uninstall())
    assert all(r.status is Status.OK for r in results), results
    assert {n: read_ledger(fleet.topology.state_dir).running.get(n) for n in NODES} == dict.fromkeys(NODES)
    fleet.store.delivered.clear()
    again = fleet.install()
    assert all(r.status is Status.OK and r.details["changed"] for r in again.values()), again
    for node in NODES:
        steps = [s["step"] for s in again[node].steps]
        assert steps.index("push") < steps.index("lock"), steps
    assert sorted(fleet.store.delivered) == sorted(NODES)
