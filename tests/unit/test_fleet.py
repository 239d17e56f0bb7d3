"""Fleet releases on the client: the ledger (engine/ledger.py) and the decisions made from it
(engine/fleet.py): which release a run installs, what each server's outcome means, the
fleet view of `deploy status` and the fleet's history."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flinger.engine import ledger
from flinger.engine.brake import Brake
from flinger.engine.fleet import InstallRecord, content_of, fleet_history, fleet_view, server_state
from flinger.engine.fleet import observe as fleet_observe
from flinger.engine.results import ServerResult, Status, Switch
from flinger.protocol.results import BuiltPackage, HistoryResult, ReleaseInfo
from flinger.topology.model import Topology
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes

DIGEST = "ab" * 32


def fake_run(topology: Topology, run_id: str, digest: str = DIGEST) -> Any:
    """What InstallRecord reads of a run: its topology, manifest, id, holder, build and brake."""
    built = {"app": BuiltPackage(sha256=digest, file="app.tar.gz")}
    return SimpleNamespace(
        topology=topology,
        manifest=make_manifest(topology.config_path.parent),
        run_id=run_id,
        holder=f"alice@laptop run {run_id}",
        store=SimpleNamespace(built=lambda: built),
        brake=Brake(),
    )


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    return make_topology(tmp_path, nodes(3))


def ok(server: str, switched: bool = True) -> ServerResult:
    return ServerResult(server, Status.OK, switch=Switch("R", "P", switched))


def install(topology: Topology, run_id: str, results: list[ServerResult], **kw: Any) -> tuple[str, str | None]:
    """One install run as the Install operation drives its record: decide, servers, finish."""
    run = fake_run(topology, run_id, **kw)
    record = InstallRecord(topology.state_dir, [r.server for r in results])
    release = record.release_for(run)
    for r in results:
        if r.status is Status.OK:
            record.server_ran(run, r.server, release, bool(r.switch and r.switch.switched))
    return release, record.finish(run, results, stopped=False)


def test_the_first_run_makes_a_release_a_rerun_of_the_same_content_continues_it(topology: Topology) -> None:
    first, state = install(topology, "run-1", [ok("node1"), ServerResult("node2", Status.INTERRUPTED),
                                               ServerResult("node3", Status.INTERRUPTED)])  # fmt: skip
    assert (first, state) == ("run-1", "failed")
    again, state = install(topology, "run-2", [ok("node1", switched=False), ok("node2"), ok("node3")])
    assert (again, state) == ("run-1", "completed")  # the same content: the rollout is finished under its id
    known = ledger.read_ledger(topology.state_dir)
    assert list(known.releases) == ["run-1"] and known.releases["run-1"].runs == ["run-1", "run-2"]
    assert known.running == {"node1": "run-1", "node2": "run-1", "node3": "run-1"}
    nothing_new, _ = install(topology, "run-3", [ok(n, switched=False) for n in ("node1", "node2", "node3")])
    assert nothing_new == "run-1"  # no new release for a run with nothing new
    newer, state = install(topology, "run-4", [ok("node1")], digest="cd" * 32)
    assert (newer, state) == ("run-4", "partial")  # a new build; only node1 chosen
    assert ledger.read_ledger(topology.state_dir).releases["run-4"].note == "not yet on node2, node3"


def test_a_rolled_back_release_is_never_continued(topology: Topology) -> None:
    rolled = ServerResult("node1", Status.ROLLED_BACK, switch=Switch("run-1", "old", True))
    release, state = install(topology, "run-1", [rolled, ServerResult("node2", Status.FAILED)])
    assert (release, state) == ("run-1", "rolled back")
    known = ledger.read_ledger(topology.state_dir)
    assert known.releases["run-1"].servers["node1"].state == "rolled back"
    again, _ = install(topology, "run-2", [ok("node1")])
    assert again == "run-2"  # the same content, but that release was undone: a new one


def test_a_run_whose_client_died_reads_as_interrupted_and_servers_as_unknown(topology: Topology) -> None:
    ledger.append(topology.state_dir,
        {"event": "release", "id": "F", "content": "c", "generation": 1, "packages": {}, "by": "me"},
        {"event": "run", "id": "F", "run": "F", "kind": "install", "servers": ["node1", "node2"],
         "pid": 0, "host": "", "start": None},
        {"event": "server", "id": "F", "run": "F", "server": "node1", "state": "switched", "release": "F"},
    )  # fmt: skip
    with open(ledger.ledger_path(topology.state_dir), "a") as torn:
        torn.write('{"event": "server", "id": "F", "ser')  # killed mid-write
    known = ledger.read_ledger(topology.state_dir)
    assert known.releases["F"].state == "interrupted" and "client of run F was lost" in known.releases["F"].note
    assert known.running == {"node1": "F", "node2": None}
    ledger.append(topology.state_dir, {"event": "observed", "run": "G", "server": "node2", "id": "E"})
    assert ledger.read_ledger(topology.state_dir).running["node2"] == "E"  # what the server said, next time


def test_a_live_run_reads_as_installing(topology: Topology) -> None:
    ledger.append(topology.state_dir,
        {"event": "release", "id": "F", "content": "c"},
        {"event": "run", "id": "F", "run": "F", "kind": "install", "servers": ["node1"], **ledger.this_process()},
    )  # fmt: skip
    assert ledger.read_ledger(topology.state_dir).releases["F"].state == "installing"


def test_the_ledger_is_private_and_holds_no_overlay_content(topology: Topology) -> None:
    install(topology, "run-1", [ok("node1")])
    path = ledger.ledger_path(topology.state_dir)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert all(set(json.loads(line)) <= {"event", "id", "run", "server", "state", "release", "previous", "at",
               "content", "generation", "packages", "by", "kind", "servers", "pid", "host", "start", "note"}
               for line in path.read_text().splitlines())  # fmt: skip


def test_content_changes_with_the_build_the_services_or_the_overlay_generation(tmp_path: Path) -> None:
    topology = make_topology(tmp_path, nodes(2))
    manifest = make_manifest(tmp_path)
    built = {"app": BuiltPackage(sha256=DIGEST, file="app.tar.gz")}
    base, packages = content_of(topology, manifest, built, 1)
    assert packages == {"app": DIGEST}
    assert content_of(topology, manifest, built, 1)[0] == base
    assert content_of(topology, manifest, built, 2)[0] != base
    rebuilt = {"app": BuiltPackage(sha256="cd" * 32, file="app.tar.gz")}
    assert content_of(topology, manifest, rebuilt, 1)[0] != base


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (ok("n"), "switched"),
        (ok("n", switched=False), "unchanged"),
        (ServerResult("n", Status.FAILED), "failed"),
        (ServerResult("n", Status.FAILED, switch=Switch("F", "E", True)), "switched"),  # its undo failed
        (ServerResult("n", Status.ROLLED_BACK, switch=Switch("F", "E", True)), "rolled back"),
        (ServerResult("n", Status.INTERRUPTED), "interrupted"),
        (ServerResult("n", Status.UNREACHABLE), "unreachable"),
    ],
)
def test_what_a_servers_result_means_for_the_release_it_runs(result: ServerResult, state: str) -> None:
    assert server_state(result) == state


def test_the_fleet_view_names_who_runs_what_in_a_role_that_is_split(tmp_path: Path) -> None:
    topology = make_topology(tmp_path, {**nodes(3), "db1": ("10.0.9.1", ("db",))})
    view = fleet_view(topology, {"node1": "F", "node2": "E", "node3": "F", "db1": "E"})
    assert view.skew == {"node": {"F": ["node1", "node3"], "E": ["node2"]}}
    assert view.problem() == "servers of one role run different releases: role node: F on node1, node3; E on node2"
    assert view.releases == {"F": ["node1", "node3"], "E": ["node2", "db1"]}
    assert fleet_view(topology, {"node1": "F", "node2": "F", "db1": "E"}).problem() is None


def test_the_fleet_history_lists_releases_newest_first_with_where_they_run_and_are_kept(topology: Topology) -> None:
    install(topology, "run-1", [ok("node1"), ok("node2"), ok("node3")])
    install(topology, "run-2", [ok("node1")], digest="cd" * 32)

    def history(current: str, *kept: tuple[str, list[str]]) -> HistoryResult:
        infos = [ReleaseInfo(name, current=name == current, fleet_releases=served) for name, served in kept]
        return HistoryResult(installed=True, current=current, releases=infos)

    answered = {
        "node1": history("run-2", ("run-1", ["run-1"]), ("run-2", ["run-2"])),
        "node2": history("old", ("old", ["old"]), ("run-1", ["run-1"])),
    }
    running = {"node1": "run-2", "node2": "old"}
    rows = fleet_history(ledger.read_ledger(topology.state_dir), answered, running)
    assert [(r["id"], r["state"], r["running"], r["kept"]) for r in rows] == [
        ("run-2", "partial", ["node1"], ["node1"]),
        ("run-1", "completed", [], ["node1", "node2"]),
        ("old", "unknown", ["node2"], ["node2"]),
    ]
    assert rows[2]["note"] == "not in this client's ledger"


def test_two_runs_decide_one_after_the_other(topology: Topology) -> None:
    """The second run of the same content, deciding while the first is still at work, joins it."""
    first = InstallRecord(topology.state_dir, ["node1"])
    second = InstallRecord(topology.state_dir, ["node2"])
    assert first.release_for(fake_run(topology, "run-1")) == "run-1"
    assert second.release_for(fake_run(topology, "run-2")) == "run-1"
    assert os.path.exists(ledger.ledger_path(topology.state_dir).parent / "ledger.lock")


# -- choosing the release a rollback goes back to ------------------------------------------


def ledger_of(tmp: Path, *releases: tuple[str, str, int]) -> ledger.Ledger:
    """A ledger of releases (id, state, generation), oldest first."""
    events: list[dict[str, Any]] = []
    for rid, state, generation in releases:
        events += [
            {"event": "release", "id": rid, "content": rid, "generation": generation},
            {"event": "end", "id": rid, "run": rid, "state": state},
        ]
    ledger.append(tmp, *events)
    return ledger.read_ledger(tmp)


def keeps(current: str, *others: str, removed: tuple[str, ...] = ()) -> HistoryResult:
    infos = [ReleaseInfo(r, can_roll_back_to=r not in removed, fleet_releases=[r], overlay_removed=r in removed)
             for r in others]  # fmt: skip
    return HistoryResult(
        installed=True, current=current, releases=[*infos, ReleaseInfo(current, current=True, fleet_releases=[current])]
    )


def test_a_plain_rollback_goes_to_the_last_completed_release_never_to_an_undone_one(tmp_path: Path) -> None:
    from flinger.engine.rollback import choose_rollback
    from flinger.overlay.generation import Generations

    known = ledger_of(tmp_path, ("Z", "completed", 1), ("A", "completed", 1), ("B", "rolled back", 1))
    histories = {"node1": keeps("A", "Z", "B"), "node2": keeps("A", "Z", "B")}
    choice = choose_rollback(known, histories, None, Generations(1))
    assert choice.release == "Z" and choice.targets == {"node1": "Z", "node2": "Z"}


def test_a_split_fleet_goes_back_to_the_release_before_the_newest_it_runs(tmp_path: Path) -> None:
    from flinger.engine.rollback import choose_rollback
    from flinger.overlay.generation import Generations

    known = ledger_of(tmp_path, ("A", "completed", 1), ("B", "interrupted", 1))
    choice = choose_rollback(known, {"node1": keeps("B", "A"), "node2": keeps("A")}, None, Generations(1))
    assert choice.release == "A" and choice.targets == {"node1": "A", "node2": "A"}
    assert choice.leaving == {"node1": "B", "node2": "A"}


@pytest.mark.parametrize(
    ("histories", "to", "message"),
    [
        (
            {"node1": keeps("B", "A"), "node2": keeps("B")},
            None,
            "release A is not kept on every chosen server (node2 keeps B): no common release",
        ),
        (
            {"node1": keeps("B", "A", removed=("A",))},
            "A",
            "node1 keeps B; its copy lost its overlay once the fleet completed a rotation",
        ),
        ({"node1": keeps("X", "A")}, None, "this client's fleet ledger does not know release X (run by node1)"),
        ({"node1": keeps("A")}, None, "no completed fleet release before A in this client's ledger"),
        ({"node1": HistoryResult(installed=False)}, None, "nothing is installed on node1"),
    ],
)
def test_a_rollback_with_no_common_release_is_refused_saying_why(
    tmp_path: Path, histories: dict[str, HistoryResult], to: str | None, message: str
) -> None:
    from flinger.engine.rollback import choose_rollback
    from flinger.errors import UsageError
    from flinger.overlay.generation import Generations

    known = ledger_of(tmp_path, ("A", "completed", 1), ("B", "completed", 1))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        choose_rollback(known, histories, to, Generations(1))
    assert refused.value.exit_status == 2 and "nothing was changed" in refused.value.message


def test_a_rollback_across_a_rotation_is_refused_naming_the_secrets_unless_asked(tmp_path: Path) -> None:
    from flinger.engine.rollback import choose_rollback
    from flinger.errors import UsageError
    from flinger.overlay.generation import Generations

    known = ledger_of(tmp_path, ("A", "completed", 1), ("B", "completed", 2))
    generations = Generations(2, {2: ("secret redis_password", "the deployment secret")})
    histories = {"node1": keeps("B", "A")}
    with pytest.raises(UsageError, match="predates the rotation of secret redis_password, the deployment secret"):
        choose_rollback(known, histories, None, generations)
    choice = choose_rollback(known, histories, None, generations, restore_rotated=True)
    assert choice.release == "A" and choice.rotated == ["secret redis_password", "the deployment secret"]
    assert choose_rollback(known, {"node1": keeps("A", "B")}, "B", generations).rotated == []  # forward: nothing back


def _guess(topology: Topology, run_id: str, digest: str) -> dict[str, list[str]]:
    """What a run of a build with `digest` guesses each server lacks, to deliver it ahead
    (a run that stops there: its servers are then on an unknown release)."""
    record = InstallRecord(topology.state_dir, ["node1", "node2", "node3"])
    record.release_for(fake_run(topology, run_id, digest=digest))
    return {n: record.likely_lacks(n, {"app": digest}) for n in ("node1", "node2", "node3")}


def test_what_a_run_guesses_each_server_lacks_comes_from_the_release_the_ledger_saw_it_run(
    topology: Topology,
) -> None:
    everyone = ("node1", "node2", "node3")
    assert _guess(topology, "run-0", DIGEST) == {n: ["app"] for n in everyone}  # never seen
    install(topology, "run-1", [ok(n) for n in everyone])
    assert _guess(topology, "run-2", DIGEST) == {n: [] for n in everyone}  # they run it
    install(topology, "run-3", [ok(n) for n in everyone])
    assert _guess(topology, "run-4", "cd" * 32) == {n: ["app"] for n in everyone}  # a new build
    # run-4 stopped there: its servers are on an unknown release, and nothing is guessed
    assert _guess(topology, "run-5", "cd" * 32) == {n: [] for n in everyone}
    # uninstalled (or seen running nothing): all of it
    fleet_observe(topology.state_dir, "run-6", {"node2": None})
    assert ledger.read_ledger(topology.state_dir).bare == {"node2"}
    assert _guess(topology, "run-7", "cd" * 32) == {"node1": [], "node2": ["app"], "node3": []}
    fleet_observe(topology.state_dir, "run-8", {"node2": "run-1"})
    assert ledger.read_ledger(topology.state_dir).bare == set()
