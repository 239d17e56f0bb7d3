"""Generated service definitions checked by the real tools: systemd-analyze verify, and runit scripts run by sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from flinger.service_render import render_service
from tests.unit.test_service_render import CONTEXT, quorum_service


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"), reason="systemd-analyze is not installed"
)
@pytest.mark.parametrize("restart", ["always", "on-failure", "no"])
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path, restart: str) -> None:
    # "nobody" draws a warning of its own from verify: use an ordinary system user
    service = quorum_service(tmp_path, restart=restart, after=(), user="daemon", group="daemon")
    unit = render_service(service, "quorum", "systemd", CONTEXT)["unit"]
    path = tmp_path / "quorum.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if "quorum.service" in line]
    assert done.returncode == 0 and not problems, done.stderr


def test_systemd_unit_with_bad_setting_fails_verify(tmp_path: Path) -> None:
    """The verify test above can fail: a unit whose ExecStart does not exist is refused."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = render_service(quorum_service(tmp_path, command="/nonexistent/prog"), "q", "systemd", CONTEXT)["unit"]
    path = tmp_path / "q.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True)
    assert done.returncode != 0


def test_runit_run_script_runs_with_env_and_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    service = quorum_service(
        tmp_path,
        user=None,
        group=None,
        working_dir=str(work),
        log_file=None,
        limits={},
        command="""/bin/sh -c 'pwd; echo "$QUORUM_NODE"; echo "$TRICKY"' """,
    )
    files = render_service(service, "quorum", "runit", CONTEXT)
    # finish: restart_sec 2.5 > runsv's own 1 s pause; log/run: no log_file, so svlogd keeps it
    assert set(files) == {"run", "finish", "log/run"}
    assert files["log/run"].rstrip().endswith("exec svlogd -tt ./main")
    script = tmp_path / "run"
    script.write_text(files["run"])
    script.chmod(0o755)
    out = subprocess.run([str(script)], capture_output=True, text=True, env={"PATH": "/bin:/usr/bin"})
    assert out.stdout.splitlines() == [str(work), "node1", 'a "b" 100% $x']


def test_runit_run_script_uses_chpst_and_log_file(tmp_path: Path) -> None:
    files = render_service(quorum_service(tmp_path), "quorum", "runit", CONTEXT)
    run = files["run"]
    assert run.startswith("#!/bin/sh\n")
    assert f"exec >>{tmp_path}/quorum.log 2>&1\n" in run
    assert run.rstrip().endswith("exec chpst -u nobody:nogroup -o 65536 -p 512 /bin/sleep 1000 --addr 10.0.0.11")
    assert subprocess.run(["sh", "-n"], input=run, text=True).returncode == 0


def test_runit_log_file_gets_stdout_and_stderr(tmp_path: Path) -> None:
    """Redirecting stderr before stdout went to the file used to leave stderr on runsv's output."""
    log = tmp_path / "svc.log"
    service = quorum_service(
        tmp_path,
        command="/bin/sh -c 'echo to-stdout; echo to-stderr >&2'",
        user=None,
        group=None,
        limits={},
        log_file=str(log),
    )
    script = tmp_path / "run"
    script.write_text(render_service(service, "svc", "runit", CONTEXT)["run"])
    script.chmod(0o755)
    out = subprocess.run([str(script)], capture_output=True, text=True, env={"PATH": "/bin:/usr/bin"})
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert log.read_text().splitlines() == ["to-stdout", "to-stderr"]


def test_runit_finish_follows_restart_policy(tmp_path: Path) -> None:
    never = render_service(quorum_service(tmp_path, restart="no", restart_sec=1), "q", "runit", CONTEXT)
    assert "exec sv down ." in never["finish"]
    always = render_service(quorum_service(tmp_path, restart="always", restart_sec=1), "q", "runit", CONTEXT)
    assert "finish" not in always
    on_failure = render_service(quorum_service(tmp_path, restart="on-failure", restart_sec=1), "q", "runit", CONTEXT)[
        "finish"
    ]
    finish = tmp_path / "finish"
    finish.write_text(on_failure.replace("exec sv down .", "echo down"))
    finish.chmod(0o755)
    assert subprocess.run([str(finish), "0"], capture_output=True, text=True).stdout == "down\n"
    assert subprocess.run([str(finish), "3"], capture_output=True, text=True).stdout == ""
