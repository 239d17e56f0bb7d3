"""The per-server deploy lock (flinger/remote/lock.py) tells the truth: stale only when no
process of its holder is left on the server, written whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flinger.remote import layout, lock


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def result_of(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return lines[-1], lines[:-1]


def write_record(install_dir: Path, record: dict[str, Any]) -> None:
    layout.ensure_install_dir(str(install_dir))
    Path(layout.lock_file(str(install_dir))).write_text(json.dumps(record))


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_lock_whose_session_process_lives_is_held_and_named(
    tmp_path: Path, live_process: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    ref = lock.process_ref(live_process.pid, "ssh session")
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": ref})
    assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 1
    result, progress = result_of(capsys)
    assert "alice run 1" in result["error"]
    assert f"its ssh session (pid {live_process.pid}) is still running here" in result["error"]
    assert progress[0]["event"] == "held"
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "alice run 1"


def test_a_lock_whose_processes_are_all_gone_is_broken_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = {"pid": ended_pid(), "start": 1, "what": "ssh session"}
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": gone})
    assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 0
    result, progress = result_of(capsys)
    assert result["broke_stale"] == "alice run 1"
    assert progress[0]["event"] == "stale" and progress[0]["holder"] == "alice run 1"
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "bob run 2"


def test_a_reused_pid_is_not_the_holder(tmp_path: Path, live_process: subprocess.Popen[bytes]) -> None:
    ref = lock.process_ref(live_process.pid, "ssh session")
    assert ref is not None
    ref["start"] -= 1  # same pid, another process (started at another time)
    assert lock.why_live({"holder": "x", "boot_id": lock._boot_id(), "session": ref}) is None


def test_after_a_reboot_no_process_of_the_holder_is_left(tmp_path: Path, live_process: subprocess.Popen[bytes]) -> None:
    ref = lock.process_ref(live_process.pid, "ssh session")
    assert lock.why_live({"holder": "x", "boot_id": "another-boot", "session": ref}) is None


def test_a_running_install_keeps_the_lock_after_its_session_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = {"pid": ended_pid(), "start": 1, "what": "ssh session"}
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": gone})
    # The killed run's install, still working on the server: it claims the lock as its worker.
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flinger.remote import lock; "
         "print(lock.claim_for_worker(sys.argv[1], 'alice run 1'), flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "None"
        assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 1
        result, _ = result_of(capsys)
        assert f"its install (pid {worker.pid}) is still running here" in result["error"]
    finally:
        worker.kill()
        worker.wait()
    assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 0  # the install ended: stale now
    assert result_of(capsys)[0]["broke_stale"] == "alice run 1"


def test_the_install_refuses_a_lock_it_no_longer_holds(tmp_path: Path) -> None:
    assert lock.try_acquire(str(tmp_path), "bob run 2")
    assert lock.claim_for_worker(str(tmp_path), "alice run 1") == "the deploy lock is held by bob run 2"


def test_a_lock_of_an_older_flinger_is_never_judged_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_record(tmp_path, {"holder": "old run", "pid": ended_pid(), "since": "then"})
    assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 1
    assert "an older flinger wrote it" in result_of(capsys)[0]["error"]


def test_an_empty_lock_file_left_by_a_failed_write_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout.ensure_install_dir(str(tmp_path))
    Path(layout.lock_file(str(tmp_path))).write_bytes(b"")  # what older versions left on a full disk
    assert lock.acquire(str(tmp_path), "bob run 2", wait=0) == 0
    _, progress = result_of(capsys)
    assert progress[0]["reason"] == "an unreadable lock file"
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "bob run 2"


def test_waiting_takes_the_lock_once_its_holder_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    ref = lock.process_ref(holder.pid, "ssh session")
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": ref})
    killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    started = time.monotonic()
    try:
        assert lock.acquire(str(tmp_path), "bob run 2", wait=30) == 0
    finally:
        holder.kill()
        holder.wait()
        killer.wait()
    assert time.monotonic() - started < 30
    result, progress = result_of(capsys)
    assert [e["event"] for e in progress] == ["held", "stale"] and result["broke_stale"] == "alice run 1"


def test_release_and_break(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lock.try_acquire(str(tmp_path), "alice")
    assert lock.release(str(tmp_path), "bob") == 1
    assert lock.release(str(tmp_path), "alice") == 0
    assert not os.path.exists(layout.lock_file(str(tmp_path)))
    assert lock.try_acquire(str(tmp_path), "alice")
    assert lock.break_lock(str(tmp_path)) == 0
    assert result_of(capsys)[0]["holder"] == "alice"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no space left: a 256 KiB tmpfs, filled (needs root, as CI is)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        layout.ensure_install_dir(str(mount / "install"))
        with open(mount / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield mount / "install"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_lock_that_cannot_be_written_fails_with_its_cause_and_leaves_no_file(
    full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lock.acquire(str(full_disk), "bob run 2", wait=0) == 1
    result, _ = result_of(capsys)
    assert result["step"] == "lock" and "No space left on device" in result["error"], result
    state = Path(layout.state_dir(str(full_disk)))
    assert not (state / "lock").exists()
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    (full_disk.parent / "filler").unlink()  # space again: the next run takes the lock
    assert lock.acquire(str(full_disk), "bob run 2", wait=0) == 0
