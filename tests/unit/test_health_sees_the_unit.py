"""Health sees the unit: what each service manager says is read as running, broken or still
starting, and the health wait fails at once when the unit stops or restarts, even while its
probe passes (another process may answer it); it passes only after the unit has run, with
its probe passing, for the whole settle window. A fake clock: no process, no sleep. And
`check` warns of a probe that another server may answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flinger.protocol.plans import HealthSpec
from flinger.remote import health
from flinger.remote.services import UnitView, runit_view, smf_view, systemd_view


@pytest.mark.parametrize(
    ("text", "running", "broken", "pid"),
    [
        ("ActiveState=active\nSubState=running\nMainPID=812\n", True, False, 812),
        ("ActiveState=activating\nSubState=auto-restart\nMainPID=0\n", False, True, None),
        ("ActiveState=failed\nSubState=failed\nMainPID=0\n", False, True, None),
        ("ActiveState=inactive\nSubState=dead\nMainPID=0\n", False, True, None),
        ("ActiveState=activating\nSubState=start\nMainPID=77\n", False, False, 77),
    ],
)
def test_systemd_says(text: str, running: bool, broken: bool, pid: int | None) -> None:
    view = systemd_view(text)
    assert (view.running, view.broken, view.pid) == (running, broken, pid)


@pytest.mark.parametrize(
    ("text", "running", "broken", "pid"),
    [
        ("run: /etc/sv/hello: (pid 1234) 3s; run: log: (pid 99) 40s", True, False, 1234),
        ("down: /etc/sv/hello: 1s, normally up; run: log: (pid 99) 40s", False, True, None),
        ("down: /etc/sv/hello: 0s, normally up, want up", False, False, None),
        ("finish: /etc/sv/hello: (pid 55) 0s, normally up", False, True, 55),
        ("warning: /etc/sv/hello: unable to open supervise/ok", False, False, None),
    ],
)
def test_runit_says(text: str, running: bool, broken: bool, pid: int | None) -> None:
    view = runit_view(text)
    assert (view.running, view.broken, view.pid) == (running, broken, pid)


def test_smf_says() -> None:
    assert smf_view("online 120") == UnitView(True, False, 120, "online")
    assert smf_view("maintenance -").broken and not smf_view("offline -").broken


class Clock:
    """time.monotonic and time.sleep of the health module, without waiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(health.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(health.time, "sleep", self.sleep)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def waited(self) -> float:
        return self.now - 1000.0


def unit_of(views: list[UnitView]) -> Iterator[UnitView]:
    yield from views
    while True:
        yield views[-1]


RUN = UnitView(True, False, 10, "active (running)")
PROBE = HealthSpec(command="true", timeout=20.0, interval=0.5)


def test_a_crash_looping_unit_fails_at_once_although_its_probe_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    monkeypatch.setattr(health, "check_once", lambda *_: (True, "GET http://10.0.0.1:8080/: HTTP 200"))
    looks = unit_of([RUN, UnitView(True, False, 11, "active (running)")])  # a new process: it was restarted
    passed, seen = health.wait_healthy(PROBE, unit=lambda: next(looks))
    assert not passed and "restarted" in seen and "10" in seen and "11" in seen
    assert clock.waited() < PROBE.timeout / 10


def test_a_unit_its_manager_says_is_restarting_fails_with_the_managers_words(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    monkeypatch.setattr(health, "check_once", lambda *_: (True, "HTTP 200"))
    looks = unit_of([RUN, UnitView(False, True, None, "activating (auto-restart)")])
    passed, seen = health.wait_healthy(PROBE, unit=lambda: next(looks))
    assert not passed and "activating (auto-restart)" in seen
    assert clock.waited() < PROBE.timeout / 10


def test_healthy_only_after_the_whole_settle_window_and_the_board_hears_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    probes = iter([(False, "connection refused")] * 6 + [(True, "HTTP 200")] * 100)
    monkeypatch.setattr(health, "check_once", lambda *_: next(probes))
    starting = UnitView(False, False, 10, "activating (start)")
    looks = unit_of([starting] * 4 + [RUN])
    said: list[str] = []
    passed, seen = health.wait_healthy(PROBE, unit=lambda: next(looks), say=said.append)
    assert passed and seen == "HTTP 200"
    assert clock.waited() >= health.SETTLE
    assert said[0] == "waiting, 1 s of 20 s" and said == sorted(set(said), key=said.index)


def test_without_a_probe_the_unit_must_still_run_and_one_that_never_does_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(monkeypatch)
    assert health.wait_healthy(None, unit=lambda: RUN) == (True, "running")
    assert clock.waited() >= health.SETTLE
    starting = UnitView(False, False, None, "down: 0s, normally up, want up")
    passed, seen = health.wait_healthy(None, unit=lambda: starting)
    assert not passed and "want up" in seen
    assert health.wait_healthy(None) == (True, "no health check")


def test_a_probe_that_fails_during_the_settle_window_starts_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    probes = iter([(True, "HTTP 200"), (False, "HTTP 503")] + [(True, "HTTP 200")] * 100)
    monkeypatch.setattr(health, "check_once", lambda *_: next(probes))
    passed, _ = health.wait_healthy(PROBE, unit=lambda: RUN)
    assert passed and clock.waited() >= health.SETTLE + PROBE.interval


def test_check_warns_of_a_localhost_probe_on_servers_that_share_one_network(tmp_path: Path) -> None:
    from flinger.actions.check import run_check
    from flinger.manifest import load_manifest
    from flinger.topology import load_topology
    from tests.unit.test_sealed_state import project

    config = project(tmp_path)
    manifest = tmp_path / "src" / "packaging" / "package-manifest.toml"
    service = '[packages.app.service]\ncommand = "/bin/app"\n[packages.app.service.health]\nurl = "URL"\n'
    for url, addrs, warned in [
        ("http://localhost:8080/health", "127.77.0.", True),  # the sandbox: one machine's loopbacks
        ("http://127.0.0.1:8080/health", "127.77.0.", True),
        ("http://{{ server.addr }}:8080/health", "127.77.0.", False),
        ("http://localhost:8080/health", "10.0.0.", False),  # real servers: localhost is each one's own
    ]:
        manifest.write_text(manifest.read_text().split("[packages.app.service]")[0] + service.replace("URL", url))
        config.write_text(config.read_text().replace('addr = "10.0.0.', f'addr = "{addrs}'))
        topology = load_topology(config)
        warnings = run_check(topology, load_manifest(topology.manifest_path)).warnings
        config.write_text(config.read_text().replace(f'addr = "{addrs}', 'addr = "10.0.0.'))
        if warned:
            assert len(warnings) == 1, (url, warnings)
            assert "packages.app.service.health.url" in warnings[0] and "node1, node2, node3" in warnings[0]
            assert "{{ server.addr }}" in warnings[0]
        else:
            assert warnings == [], (url, addrs, warnings)
