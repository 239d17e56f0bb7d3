"""runit services for real: a private runsvdir supervises a temp service dir; `activate`
makes a service run under it and `deactivate` stops and removes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("runsvdir") is None or os.geteuid() != 0, reason="needs runit and root")


def run_remote(command: str, plan: dict[str, Any]) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "flinger.remote", command],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines and lines[-1]["event"] == "result", proc.stderr
    return proc.returncode, lines


@pytest.fixture
def runit_roots(tmp_path: Path) -> Iterator[dict[str, str]]:
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
        yield {"sv_dir": str(tmp_path / "etc" / "sv"), "service_dir": str(service_dir)}
    finally:
        sv_dir = tmp_path / "etc" / "sv"
        for directory in sorted(sv_dir.glob("*")) if sv_dir.exists() else []:
            subprocess.run(["sv", "force-stop", str(directory)], capture_output=True)
            subprocess.run(["sv", "exit", str(directory)], capture_output=True)
        os.killpg(runsvdir.pid, signal.SIGTERM)
        runsvdir.wait()


def sleeper(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "manager": "runit",
        "package": "p",
        "files": {"run": "#!/bin/sh\nexec 2>&1\nexec sleep 600\n"},
        "health": {"command": f"sv status {{sv}}/{name} | grep -q '^run:'", "timeout": 20},
    }


def sv_status(path: str) -> str:
    return subprocess.run(["sv", "status", path], capture_output=True, text=True).stdout


def test_activate_runs_the_service_and_deactivate_removes_it(
    runit_roots: dict[str, str],
) -> None:
    service = sleeper("sleeper")
    service["health"]["command"] = service["health"]["command"].replace("{sv}", runit_roots["sv_dir"])
    service["files"]["log/run"] = "#!/bin/sh\nexec cat >/dev/null\n"
    plan = {**runit_roots, "services": [service]}
    status, lines = run_remote("activate", plan)
    assert status == 0, lines
    directory = os.path.join(runit_roots["sv_dir"], "sleeper")
    assert os.readlink(os.path.join(runit_roots["service_dir"], "sleeper")) == directory
    assert os.stat(os.path.join(directory, "run")).st_mode & 0o777 == 0o755
    state = sv_status(directory)
    assert state.startswith("run:"), state
    pid = int(state.split("(pid ")[1].split(")")[0])
    os.kill(pid, 0)  # alive
    kinds = {entry["path"]: entry["kind"] for entry in lines[-1]["paths"]}
    assert kinds[runit_roots["sv_dir"]] == "dir" and kinds[directory] == "tree"

    status, lines = run_remote("deactivate", plan)
    assert status == 0, lines
    assert not os.path.exists(directory)
    assert not os.path.lexists(os.path.join(runit_roots["service_dir"], "sleeper"))
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # the service's process is gone once runsv stopped it
            os.kill(pid, 0)
            subprocess.run(["sleep", "0.1"])


def test_failing_health_check_fails_activate(runit_roots: dict[str, str]) -> None:
    service = sleeper("sick")
    service["health"] = {"command": "exit 1", "timeout": 0.5, "interval": 0.1}
    status, lines = run_remote("activate", {**runit_roots, "services": [service]})
    assert status == 1 and lines[-1]["step"] == "health:sick"
    run_remote("deactivate", {**runit_roots, "services": [service]})


def test_a_generated_service_without_log_file_keeps_its_output_for_the_failure_report(
    runit_roots: dict[str, str], tmp_path: Path
) -> None:
    """runsvdir's own output goes nowhere a report can read: a generated runit service gets a
    svlogd log service, whose lines a failed health check then shows (as the journal does)."""
    from flinger.manifest.model import Service
    from flinger.remote.services import Runit
    from flinger.service_render import render_service

    service = Service(command="/bin/sh -c 'echo crash-marker-4711 >&2; exit 3'", working_dir=str(tmp_path))
    files = render_service(service, "crashy", "runit", {"server": {"addr": "127.0.0.1"}})
    assert "log/run" in files
    plan = {"name": "crashy", "manager": "runit", "package": "p", "files": files,
            "health": {"command": "exit 1", "timeout": 1.5, "interval": 0.2}}  # fmt: skip
    status, lines = run_remote("activate", {**runit_roots, "services": [plan]})
    assert status == 1 and lines[-1]["step"] == "health:crashy"
    tail = Runit(runit_roots).log_tail(plan)
    assert any(line.endswith("crash-marker-4711") for line in tail), tail
    status, _ = run_remote("deactivate", {**runit_roots, "services": [plan]})
    assert status == 0 and not (Path(runit_roots["sv_dir"]) / "crashy").exists()


def test_a_log_service_added_to_a_running_service_is_picked_up(runit_roots: dict[str, str]) -> None:
    """An upgrade: the service ran without log/ (runsv looks for it only when it starts)."""
    service = sleeper("grows-a-log")
    service["health"]["command"] = service["health"]["command"].replace("{sv}", runit_roots["sv_dir"])
    assert run_remote("activate", {**runit_roots, "services": [service]})[0] == 0
    with_log = {**service, "files": {**service["files"], "log/run": "#!/bin/sh\nmkdir -p main\nexec svlogd main\n"}}
    status, lines = run_remote("activate", {**runit_roots, "services": [with_log]})
    assert status == 0, lines
    directory = Path(runit_roots["sv_dir"]) / "grows-a-log"
    assert sv_status(str(directory)).startswith("run:") and sv_status(str(directory / "log")).startswith("run:")
    assert run_remote("deactivate", {**runit_roots, "services": [with_log]})[0] == 0
