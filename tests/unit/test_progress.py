"""Typed progress events (flinger/progress.py): fan_out's events per server, the sinks that
keep them (run log, events.jsonl, timeline), and the live board as one more sink."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from flinger.engine.brake import Brake
from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.results import Status
from flinger.errors import FlingerError
from flinger.progress import Event, Events, Finished, Info, Output, RunLog, Started, Step, Timeline, as_record
from flinger.topology.model import Server
from flinger.ui import UI


def servers(*names: str) -> list[Server]:
    return [Server(name=n, addr="127.0.0.1") for n in names]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, name: str) -> list[dict[str, str]]:
        return [as_record(e) for e in self.events if e.name == name]


def test_fan_out_reports_each_server_as_events_and_its_result_carries_the_steps() -> None:
    seen = Recorder()

    def work(server: Server, report: Reporter) -> dict[str, str]:
        report.step("connect")
        report.info("connected")
        report.step("install")
        report.line(f"hello from {server.name}")
        if server.name == "b":
            raise FlingerError("b broke")
        return {}

    results = fan_out(servers("a", "b"), work, parallel=2, events=seen)
    assert seen.of("a") == [
        {"event": "started", "name": "a"},
        {"event": "step", "name": "a", "step": "connect"},
        {"event": "info", "name": "a", "text": "connected"},
        {"event": "step", "name": "a", "step": "install"},
        {"event": "output", "name": "a", "text": "hello from a"},
        {"event": "finished", "name": "a", "state": "ok"},
    ]
    assert seen.of("b")[-1] == {"event": "finished", "name": "b", "state": "failed"}
    a, b = results
    assert [s["step"] for s in a.steps] == ["connect", "install"]
    assert all(isinstance(s["seconds"], float) and s["seconds"] >= 0 for s in a.steps)
    assert b.status is Status.FAILED and b.step == "install" and b.tail == ["hello from b"]
    assert b.as_json()["steps"] == b.steps


def test_servers_never_started_are_finished_as_skipped_with_fail_fast() -> None:
    seen = Recorder()

    def work(server: Server, report: Reporter) -> None:
        raise FlingerError("no")

    results = fan_out(servers("a", "b", "c"), work, parallel=1, events=seen, fail_fast=True)
    assert [r.status for r in results] == [Status.FAILED, Status.SKIPPED, Status.SKIPPED]
    assert seen.of("c") == [{"event": "finished", "name": "c", "state": "skipped"}]  # never started


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_server_works_lets_it_finish_and_starts_no_other(signum: int) -> None:
    """The brake (flinger/engine/brake.py): the server at work finishes its step, the
    others are interrupted, and a second signal changes nothing."""
    seen = Recorder()
    brake = Brake()

    def work(server: Server, report: Reporter) -> dict[str, str]:
        report.step("install")
        os.kill(os.getpid(), signum)  # the operator's Ctrl-C, to this very process
        os.kill(os.getpid(), signum)  # and an impatient second one
        time.sleep(0.2)  # the signal is handled in the main thread meanwhile
        return {"done": server.name}

    before = signal.getsignal(signum)
    results = fan_out(servers("a", "b", "c"), work, parallel=1, events=seen, brake=brake)
    assert [r.status for r in results] == [Status.OK, Status.INTERRUPTED, Status.INTERRUPTED]
    assert results[0].details == {"done": "a"}
    assert brake.pulled and brake.by == signal.Signals(signum).name
    assert results[1].message == f"not started: interrupted ({brake.by})"
    assert seen.of("b") == [{"event": "finished", "name": "b", "state": "interrupted"}]  # never started
    assert signal.getsignal(signum) is before  # the handler is put back


def test_a_brake_held_twice_is_installed_once_and_released_by_the_outer_hold() -> None:
    brake = Brake()
    before = signal.getsignal(signal.SIGINT)
    with brake.held():
        mine = signal.getsignal(signal.SIGINT)
        with brake.held():
            assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGINT) is mine  # still held by the outer one
        os.kill(os.getpid(), signal.SIGINT)
        assert not brake.wait(5)  # returns at once: pulled
    assert signal.getsignal(signal.SIGINT) is before and brake.by == "SIGINT"


def test_the_run_log_keeps_a_log_per_server_and_every_event_as_json(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run")
    bus = Events([log])
    for event in (Started("a"), Step("a", "push"), Info("a", "1,024 bytes pushed"), Output("a", "x=1"),
                  Started("b"), Finished("a", "ok"), Finished("b", "failed")):  # fmt: skip
        bus(event)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    lines = [ln.split(" ", 1)[1] for ln in (tmp_path / "run" / "a.log").read_text().splitlines()]
    assert lines == ["state: running", "step: push", "x=1", "state: ok"]  # the passing note is not
    records = [json.loads(ln) for ln in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [(r["event"], r["name"]) for r in records] == [
        ("started", "a"), ("step", "a"), ("info", "a"), ("output", "a"), ("started", "b"), ("finished", "a"),
        ("finished", "b"),
    ]  # fmt: skip
    assert records[2]["text"] == "1,024 bytes pushed" and all("time" in r for r in records)


def test_the_timeline_times_each_step_until_the_next_or_the_end() -> None:
    timeline = Timeline()
    for event in (Step("a", "connect", at=10.0), Step("a", "lock", at=10.5), Finished("a", "ok", at=12.0)):
        timeline(event)
    assert timeline.of("a") == [{"step": "connect", "seconds": 0.5}, {"step": "lock", "seconds": 1.5}]
    assert timeline.of("b") == []


def test_the_board_is_a_sink_and_names_the_server_of_every_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    ui = UI(verbose=True, stdout=out, stderr=err)
    board = ui.board(["a", "b"], "deploy install")
    with board.running():  # not a terminal: no live view, lines and states as text
        board(Started("a"))
        board(Step("a", "push"))
        board(Output("b", "from b"))
        board(Output("a", "from a"))
        board(Finished("a", "ok"))
    assert out.getvalue().splitlines() == ["[b] from b", "[a] from a"]
    assert "a: running" in err.getvalue() and "a: ok" in err.getvalue()
    assert board.rows["a"].state == "ok" and board.rows["a"].step == "push"
    assert board.rows["b"].state == "waiting"


def test_json_mode_prints_no_progress_lines() -> None:
    out = io.StringIO()
    board = UI(json_mode=True, stdout=out, stderr=io.StringIO()).board(["a"], "t")
    board(Output("a", "secret-free but still not JSON"))
    assert out.getvalue() == ""


def test_as_record_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError):
        as_record("step")  # type: ignore[arg-type]


def test_without_a_terminal_no_line_is_wrapped_and_no_token_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from flinger.engine.results import ServerResult, Status
    from flinger.ui import UI

    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    ui = UI(stdout=out, stderr=io.StringIO())
    fingerprint = "SHA256:" + "A" * 43
    url = "https://registry.example.net:5000/v2/quorum/manifests/" + "f" * 64
    ui.table("keys", ("server", "fingerprint", "url"), [("node1", fingerprint, url)])
    ui.summary("deploy install", [ServerResult("node1", Status.FAILED, message=f"could not reach {url}")])
    text = out.getvalue()
    assert fingerprint in text and url in text
    assert all(url in line for line in text.splitlines() if "manifests" in line)
