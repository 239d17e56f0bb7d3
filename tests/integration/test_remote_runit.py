"""runit services for real (runit, as root): a private runsvdir supervises a temp service
dir; the runit driver makes a service run under it (switch.activate_service, then its
health check) and `deactivate` stops and removes it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from flinger.protocol.plans import HealthSpec, PathRecord, ServiceRoots, ServiceSpec
from flinger.remote import services, switch

pytestmark = pytest.mark.integration


def activate(service: ServiceSpec, roots: ServiceRoots) -> list[PathRecord]:
    """What an install does with each service: write it, (re)start it, wait for its health."""
    paths = switch.activate_service(service, roots)
    switch.wait_healthy(service, roots)
    return paths


def deactivate(service: ServiceSpec, roots: ServiceRoots) -> None:
    services.manager_for(service, roots).deactivate(service)


@pytest.fixture
def runit_roots(tmp_path: Path) -> Iterator[ServiceRoots]:
    """A private runsvdir on tmp/etc/service; /etc/sv is tmp/etc/sv (not created yet)."""
    service_dir = tmp_path / "etc" / "service"
    service_dir.mkdir(parents=True)
    runsvdir = subprocess.Popen(
        ["runsvdir", "-P", str(service_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield ServiceRoots(sv_dir=str(tmp_path / "etc" / "sv"), service_dir=str(service_dir))
    finally:
        sv_dir = tmp_path / "etc" / "sv"
        for directory in sorted(sv_dir.glob("*")) if sv_dir.exists() else []:
            subprocess.run(["sv", "force-stop", str(directory)], capture_output=True)
            subprocess.run(["sv", "exit", str(directory)], capture_output=True)
        os.killpg(runsvdir.pid, signal.SIGTERM)
        runsvdir.wait()


def sleeper(name: str, roots: ServiceRoots) -> ServiceSpec:
    return ServiceSpec(
        name,
        "runit",
        {"run": "#!/bin/sh\nexec 2>&1\nexec sleep 600\n"},
        package="p",
        health=HealthSpec(command=f"sv status {roots.sv_dir}/{name} | grep -q '^run:'", timeout=20),
    )


def sv_status(path: str) -> str:
    return subprocess.run(["sv", "status", path], capture_output=True, text=True).stdout


def test_activate_runs_the_service_and_deactivate_removes_it(runit_roots: ServiceRoots) -> None:
    service = sleeper("sleeper", runit_roots)
    service.files["log/run"] = "#!/bin/sh\nexec cat >/dev/null\n"
    paths = activate(service, runit_roots)
    directory = os.path.join(runit_roots.sv_dir, "sleeper")
    assert os.readlink(os.path.join(runit_roots.service_dir, "sleeper")) == directory
    assert os.stat(os.path.join(directory, "run")).st_mode & 0o777 == 0o755
    state = sv_status(directory)
    assert state.startswith("run:"), state
    pid = int(state.split("(pid ")[1].split(")")[0])
    os.kill(pid, 0)  # alive
    kinds = {entry.path: entry.kind for entry in paths}
    assert kinds[runit_roots.sv_dir] == "dir" and kinds[directory] == "tree"

    deactivate(service, runit_roots)
    assert not os.path.exists(directory)
    assert not os.path.lexists(os.path.join(runit_roots.service_dir, "sleeper"))
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the service's process is gone once runsv stopped it
            os.kill(pid, 0)
            subprocess.run(["sleep", "0.1"])


def test_failing_health_check_fails_activate(runit_roots: ServiceRoots) -> None:
    service = replace(sleeper("sick", runit_roots), health=HealthSpec(command="exit 1", timeout=0.5, interval=0.1))
    with pytest.raises(switch.StepFailed) as failed:
        activate(service, runit_roots)
    assert failed.value.step == "health:sick"
    deactivate(service, runit_roots)


def test_a_generated_service_without_log_file_keeps_its_output_for_the_failure_report(
    runit_roots: ServiceRoots, tmp_path: Path
) -> None:
    """runsvdir's own output goes nowhere a report can read: a generated runit service gets a
    svlogd log service, whose lines a failed health check then shows (as the journal does)."""
    from flinger.manifest.model import Service
    from flinger.service_render import render_service

    service = Service(command="/bin/sh -c 'echo crash-marker-4711 >&2; exit 3'", working_dir=str(tmp_path))
    files = render_service(service, "crashy", "runit", {"server": {"addr": "127.0.0.1"}})
    assert "log/run" in files
    spec = ServiceSpec("crashy", "runit", files, package="p", health=HealthSpec(command="exit 1", timeout=1.5,
                                                                                 interval=0.2))  # fmt: skip
    with pytest.raises(switch.StepFailed) as failed:
        activate(spec, runit_roots)
    assert failed.value.step == "health:crashy"
    tail = services.Runit(runit_roots).log_tail(spec)
    assert any(line.endswith("crash-marker-4711") for line in tail), tail
    deactivate(spec, runit_roots)
    assert not (Path(runit_roots.sv_dir) / "crashy").exists()


def test_a_log_service_added_to_a_running_service_is_picked_up(runit_roots: ServiceRoots) -> None:
    """An upgrade: the service ran without log/ (runsv looks for it only when it starts)."""
    service = sleeper("grows-a-log", runit_roots)
    activate(service, runit_roots)
    with_log = replace(service, files={**service.files, "log/run": "#!/bin/sh\nmkdir -p main\nexec svlogd main\n"})
    activate(with_log, runit_roots)
    directory = Path(runit_roots.sv_dir) / "grows-a-log"
    assert sv_status(str(directory)).startswith("run:") and sv_status(str(directory / "log")).startswith("run:")
    deactivate(with_log, runit_roots)
