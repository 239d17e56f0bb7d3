"""Which deploy locks flinger may break by itself: only its own machine's runs that have ended."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys

from flinger.actions.deploy import is_dead_local_run

HERE = f"{getpass.getuser()}@{socket.gethostname()} run "


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_of_this_machine_whose_process_is_gone_is_stale() -> None:
    assert is_dead_local_run(f"{HERE}20261121T120000Z-{ended_pid()}")


def test_locks_of_other_machines_live_processes_or_strangers_are_kept() -> None:
    assert not is_dead_local_run(f"someone@elsewhere run 20261121T120000Z-{ended_pid()}")
    assert not is_dead_local_run(f"{HERE}20261121T120000Z-{os.getpid()}")  # this very run
    assert not is_dead_local_run("someone-else")
    assert not is_dead_local_run(f"{HERE}not-a-run-id")
    assert not is_dead_local_run("")
