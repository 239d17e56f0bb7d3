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

from flinger.protocol.codec import encode
from flinger.protocol.messages import Event, parse_line
from flinger.protocol.plans import LockPlan
from flinger.remote import layout, lock
from tests.remote_helpers import run_remote


def ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def said(capsys: pytest.CaptureFixture[str]) -> list[Event]:
    """The progress events the lock wrote (a note while it waits, a line when it breaks one)."""
    found = [parse_line("lock", line) for line in capsys.readouterr().out.splitlines()]
    return [e for e in found if isinstance(e, Event)]


def write_record(install_dir: Path, record: dict[str, Any]) -> None:
    layout.ensure_install_dir(str(install_dir))
    Path(layout.lock_file(str(install_dir))).write_text(json.dumps(encode(record)))


def session(pid: int, start: int = 1) -> lock.ProcessRef:
    return lock.ProcessRef(pid, start, "ssh session")


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
    result = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert not result.ok and result.step == "lock" and result.holder == "alice run 1"
    assert "alice run 1" in str(result.error)
    assert f"its ssh session (pid {live_process.pid}) is still running here" in str(result.error)
    assert said(capsys)[0].text.startswith("waiting for the deploy lock: held by alice run 1")
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "alice run 1"


def test_a_lock_whose_processes_are_all_gone_is_broken_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = session(ended_pid())
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": gone})
    result = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert result.ok and result.broke_stale is not None and result.broke_stale.holder == "alice run 1"
    assert "broke a stale deploy lock of alice run 1" in said(capsys)[0].text
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "bob run 2"


def test_a_reused_pid_is_not_the_holder(tmp_path: Path, live_process: subprocess.Popen[bytes]) -> None:
    ref = lock.process_ref(live_process.pid, "ssh session")
    assert ref is not None
    ref.start -= 1  # same pid, another process (started at another time)
    assert lock.why_live(lock.LockRecord("x", boot_id=lock._boot_id(), session=ref)) is None


def test_after_a_reboot_no_process_of_the_holder_is_left(tmp_path: Path, live_process: subprocess.Popen[bytes]) -> None:
    ref = lock.process_ref(live_process.pid, "ssh session")
    assert lock.why_live(lock.LockRecord("x", boot_id="another-boot", session=ref)) is None


def test_a_running_install_keeps_the_lock_after_its_session_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = session(ended_pid())
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": gone})
    # The killed run's install, still working on the server: it claims the lock as its worker.
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flinger.remote import lock; "
         "print(lock.claim_for_worker(sys.argv[1], 'alice run 1'), flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "None"
        result = lock.take(str(tmp_path), "bob run 2", wait=0)
        assert not result.ok and f"its install (pid {worker.pid}) is still running here" in str(result.error)
    finally:
        worker.kill()
        worker.wait()
    result = lock.take(str(tmp_path), "bob run 2", wait=0)  # the install ended: stale now
    assert result.ok and result.broke_stale is not None and result.broke_stale.holder == "alice run 1"


def test_the_install_refuses_a_lock_it_no_longer_holds(tmp_path: Path) -> None:
    assert lock.try_acquire(str(tmp_path), "bob run 2")
    assert lock.claim_for_worker(str(tmp_path), "alice run 1") == "the deploy lock is held by bob run 2"


def test_a_lock_of_an_older_flinger_is_never_judged_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_record(tmp_path, {"holder": "old run", "pid": ended_pid(), "since": "then"})
    result = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert not result.ok and "an older flinger wrote it" in str(result.error)


def test_an_empty_lock_file_left_by_a_failed_write_is_broken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout.ensure_install_dir(str(tmp_path))
    Path(layout.lock_file(str(tmp_path))).write_bytes(b"")  # what older versions left on a full disk
    result = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert result.ok and result.broke_stale is not None and result.broke_stale.reason == "an unreadable lock file"
    assert json.loads(Path(layout.lock_file(str(tmp_path))).read_text())["holder"] == "bob run 2"


def test_waiting_takes_the_lock_once_its_holder_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    ref = lock.process_ref(holder.pid, "ssh session")
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "session": ref})
    killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    started = time.monotonic()
    try:
        result = lock.take(str(tmp_path), "bob run 2", wait=30)
    finally:
        holder.kill()
        holder.wait()
        killer.wait()
    assert result.ok and time.monotonic() - started < 30
    assert [e.text.split(":")[0] for e in said(capsys)] == [
        "waiting for the deploy lock",
        "broke a stale deploy lock of alice run 1 since then",
    ]
    assert result.broke_stale is not None and result.broke_stale.holder == "alice run 1"


def test_release_and_break(tmp_path: Path) -> None:
    assert lock.try_acquire(str(tmp_path), "alice")
    assert lock.let_go(str(tmp_path), "bob") == ("the deploy lock is held by alice, not by bob", False)
    assert lock.let_go(str(tmp_path), "alice") == (None, True)
    assert not os.path.exists(layout.lock_file(str(tmp_path)))
    assert lock.try_acquire(str(tmp_path), "alice")
    broken = lock.break_lock(str(tmp_path))
    assert broken.broken and broken.holder == "alice"


def test_lock_acquire_wait_release_break(tmp_path: Path) -> None:
    install_dir = str(tmp_path / "opt" / "app")
    answer = run_remote("lock", LockPlan("acquire", install_dir, "alice"))  # the `lock` command of the tool
    assert answer.status == 0
    record = json.loads(Path(install_dir, ".flinger", "lock").read_text())
    assert record["holder"] == "alice" and "since" in record and record["session"]["pid"] == os.getpid()
    answer = run_remote("lock", LockPlan("acquire", install_dir, "bob", wait=0.6))
    assert answer.status == 1 and "held by alice" in answer.events[0].text
    assert "alice" in answer.result.error and answer.result.holder == "alice"
    assert run_remote("lock", LockPlan("release", install_dir, "bob")).status == 1
    answer = run_remote("lock", LockPlan("break", install_dir, "bob"))
    assert answer.status == 0 and answer.result.broken and answer.result.holder == "alice"
    assert run_remote("lock", LockPlan("acquire", install_dir, "bob")).status == 0
    answer = run_remote("lock", LockPlan("release", install_dir, "bob"))
    assert answer.status == 0 and answer.result.released is True
    assert not Path(install_dir, ".flinger", "lock").exists()


def test_a_switch_waiting_for_a_lost_clients_confirmation_says_until_when(
    tmp_path: Path, live_process: subprocess.Popen[bytes]
) -> None:
    from flinger.remote import confirm

    # A server cut off in its switch: its watcher holds the lock until it switches back.
    watcher = lock.process_ref(live_process.pid, "install")
    write_record(tmp_path, {"holder": "alice run 1", "since": "then", "boot_id": lock._boot_id(), "worker": watcher})
    pending = confirm.Pending("t0k3n", "r2", "r1", "alice run 1", 30.0, settled_at=time.time() - 10)
    confirm._save(str(tmp_path), pending)
    result = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert not result.ok and result.step == "lock"
    assert "its switch to r2 waits for its client's confirmation" in str(result.error)
    assert "goes back to r1 in 20 s" in str(result.error) or "goes back to r1 in 21 s" in str(result.error)
    assert "--lock-wait" in str(result.error)
    # another run's pending switch is not this holder's: the plain reason
    write_record(tmp_path, {"holder": "carol run 3", "since": "then", "boot_id": lock._boot_id(), "worker": watcher})
    other = lock.take(str(tmp_path), "bob run 2", wait=0)
    assert f"its install (pid {live_process.pid}) is still running here" in str(other.error)
