"""An install that holds its prepared release (flinger/remote/hold.py), run as flinger runs
the tool: a process of its own, its plan on stdin, the client's word written after its
first answer. The word switches or aborts; a client gone (stdin closed) or silent for
`hold_within` seconds is an abort; every way, the lock is given up."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flinger.protocol.messages import parse_line
from flinger.protocol.plans import InstallPlan, PackageRef
from flinger.protocol.results import InstallResult
from flinger.remote import tarball
from flinger.remote.files import sha256_file
from tests.remote_helpers import REPO, envelope, run_remote


class Host:
    """An install dir, a staging dir and a package of each version, all under tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.install_dir = tmp / "opt" / "app"
        self.runs = tmp / "staging" / "runs" / "opt_app"

    def plan(self, release: str, **changes: Any) -> InstallPlan:
        tree = self.tmp / f"tree-{release}"
        tree.mkdir()
        (tree / "index.html").write_text(release)
        packed = self.tmp / f"app-{release}.tar.gz"
        tarball.pack_tree(str(tree), str(packed))
        run_dir = self.runs / release
        (run_dir / "packages").mkdir(parents=True)
        shutil.copy(packed, run_dir / "packages")  # delivered ahead, as the client does
        plan = InstallPlan(
            install_dir=str(self.install_dir),
            staging_dir=str(run_dir),
            release=release,
            lock_holder=f"run {release}",
            packages=[PackageRef("app", sha256_file(str(packed)), f"packages/{packed.name}")],
            overlay_files={"secrets/token": base64.b64encode(b"s3cret").decode()},
            staging_runs=str(self.runs),
            acquire=True,
            release_lock=True,
        )
        return replace(plan, **changes)

    def current(self) -> str:
        return os.readlink(self.install_dir / "current")

    def locked(self) -> bool:
        return (self.install_dir / ".flinger" / "lock").exists()

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.install_dir / "releases").iterdir())


class Held:
    """The tool, started on a plan that holds; its answers as they come."""

    def __init__(self, plan: InstallPlan) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flinger.remote", "install"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(envelope("install", plan).encode())
        self.proc.stdin.flush()
        self.lines: list[str] = []

    def answer(self) -> InstallResult:
        """The next result the tool writes."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline().decode()
            assert line, f"the tool ended without another result: {self.lines} {self.stderr()}"
            self.lines.append(line)
            message = parse_line("install", line.rstrip("\n"))
            if isinstance(message, InstallResult):
                return message

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def hang_up(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def stderr(self) -> str:
        return "" if self.proc.poll() is None or self.proc.stderr is None else self.proc.stderr.read().decode()

    def exit_status(self) -> int:
        return self.proc.wait(timeout=30)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host = Host(tmp_path)
    first = run_remote("install", host.plan("r1"))
    assert first.status == 0 and first.result.changed, first.stdout + first.stderr
    yield host


def _ready(host: Host, plan: InstallPlan) -> Held:
    held = Held(plan)
    ready = held.answer()
    assert ready.ok and ready.prepared == "r2", held.lines
    assert host.current() == "releases/r1" and "r2" in host.releases() and host.locked()
    return held


def test_the_word_switch_switches_in_the_process_that_made_the_release_ready(host: Host) -> None:
    held = _ready(host, host.plan("r2", phase="prepare", hold_within=30))
    held.say("wait")  # the client is still there: nothing happens
    time.sleep(0.3)
    assert host.current() == "releases/r1" and held.proc.poll() is None
    held.say("switch")
    done = held.answer()
    assert done.ok and done.changed and done.release == "r2" and done.previous_release == "r1"
    assert done.lock_released and not host.locked() and host.current() == "releases/r2"
    assert held.exit_status() == 0
    assert not (host.runs / "r2").exists()  # the staged overlay is gone


def test_the_word_abort_removes_the_release_and_gives_the_lock_up(host: Host) -> None:
    held = _ready(host, host.plan("r2", phase="prepare", hold_within=30))
    held.say("abort")
    done = held.answer()
    assert done.ok and not done.changed and done.release == "r1" and done.lock_released
    assert host.current() == "releases/r1" and host.releases() == ["r1"] and not host.locked()
    assert held.exit_status() == 0


def test_a_client_that_goes_away_while_its_server_waits_leaves_it_as_it_was(host: Host) -> None:
    held = _ready(host, host.plan("r2", phase="prepare", hold_within=30))
    held.hang_up()  # what a lost ssh is to the tool: its stdin closes
    assert held.exit_status() == 0
    assert host.current() == "releases/r1" and host.releases() == ["r1"] and not host.locked()
    # the client is gone: what the tool said from then on is in the install's events.log
    log = (host.install_dir / ".flinger" / "events.log").read_text().splitlines()
    assert any("no word from the client (its stdin closed)" in line for line in log), log
    done = parse_line("install", next(line for line in reversed(log) if '"event": "result"' in line))
    assert isinstance(done, InstallResult) and done.ok and done.release == "r1" and done.lock_released


def test_a_silent_client_is_given_up_after_hold_within_and_that_is_a_failure(host: Host) -> None:
    held = _ready(host, host.plan("r2", phase="prepare", hold_within=1))
    done = held.answer()  # nothing said, stdin still open
    assert not done.ok and done.step == "switch" and done.lock_released
    assert done.error is not None and "no word from the client within 1 s" in done.error
    assert host.current() == "releases/r1" and host.releases() == ["r1"] and not host.locked()
    assert held.exit_status() == 1


def test_without_hold_within_a_prepared_install_ends_at_ready_as_before(host: Host) -> None:
    answer = run_remote("install", host.plan("r2", phase="prepare"))
    assert answer.status == 0 and answer.result.prepared == "r2"
    assert [json.loads(line)["event"] for line in answer.stdout.splitlines()].count("result") == 1
    assert host.locked() and host.current() == "releases/r1"  # kept for a switch or abort to come


def test_a_switch_awaiting_confirmation_is_confirmed_by_a_word_to_the_same_process(host: Host) -> None:
    held = Held(host.plan("r2", hold_within=30, confirm_within=30))  # phase all: to the switch in one go
    switched = held.answer()
    assert switched.ok and switched.changed and switched.awaiting_confirmation and not switched.lock_released
    assert host.current() == "releases/r2" and host.locked()
    assert (host.install_dir / ".flinger" / "pending.json").exists()  # armed: its watcher waits
    held.say("confirm")
    confirmed = held.answer()
    assert confirmed.ok and confirmed.lock_released and not host.locked(), held.lines
    assert held.exit_status() == 0
    assert not (host.install_dir / ".flinger" / "pending.json").exists()  # the watcher disarmed
    time.sleep(1.5)
    assert host.current() == "releases/r2"  # no watcher left to switch it back


def test_a_client_gone_before_it_confirms_leaves_the_switch_to_its_watcher(host: Host) -> None:
    held = _ready(host, host.plan("r2", phase="prepare", hold_within=30, confirm_within=1))
    held.say("switch")
    switched = held.answer()
    assert switched.ok and switched.awaiting_confirmation and host.current() == "releases/r2"
    held.hang_up()
    assert held.exit_status() == 1  # its last answer: no confirmation
    deadline = time.monotonic() + 30
    while host.current() != "releases/r1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host.current() == "releases/r1"  # switched back by the watcher, 1 s after the install ended
    assert eventually_unlocked(host)


def eventually_unlocked(host: Host, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while host.locked() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not host.locked()


def test_stdin_lines_come_whole_across_reads_a_big_plan_included_and_silence_is_a_timeout() -> None:
    from flinger.remote.hold import Stdin

    read_end, write_end = os.pipe()
    try:
        stdin = Stdin(read_end)
        with pytest.raises(TimeoutError):
            stdin.line(0.2)  # nothing yet
        os.write(write_end, b"swi")
        with pytest.raises(TimeoutError):
            stdin.line(0.2)  # half a word is no word
        os.write(write_end, b"tch\nwait\nab")
        assert stdin.line(1) == b"switch" and stdin.line(1) == b"wait"
        os.write(write_end, b"ort\n")
        assert stdin.line(1) == b"abort"
    finally:
        os.close(write_end)
        assert stdin.line(1) is None  # closed: the client is gone
        os.close(read_end)
    big = b'{"plan": "' + b"x" * (5 << 20) + b'"}\nswitch\nlast without newline'
    given = Stdin.given(big)
    assert given.line() == big.split(b"\n")[0] and given.line() == b"switch"
    assert given.line() == b"last without newline" and given.line() is None
