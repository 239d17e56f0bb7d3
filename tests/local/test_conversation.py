"""`Conversation` (flinger/engine/remote.py), the client's side of a tool command that
answers more than once, over the local transport with a stand-in tool: the first answer
handed over while the command waits, `wait` said while it does, the word's answer, and a
command that ends without answering its word."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flinger.engine.local import LocalTransport
from flinger.engine.remote import Conversation
from flinger.errors import RemoteCommandError
from flinger.protocol.plans import InstallPlan
from flinger.protocol.results import InstallResult, Outcome
from flinger.topology.model import Server

# Answers `prepared`, then counts the `wait`s it hears; on `switch` answers once more
# (unless told to vanish: then it ends without a word).
STAND_IN = r"""
import json, sys
sys.stdin.readline()
def answer(**fields):
    print(json.dumps({"event": "result", "version": 2, **fields}), flush=True)
answer(ok=True, prepared="r2")
waits = 0
for line in sys.stdin:
    word = line.strip()
    if word == "wait":
        waits += 1
    elif word == "switch":
        if VANISH:
            sys.exit(0)
        answer(ok=True, changed=True, release="r2", lock_released=True, error="heard %d waits" % waits)
        sys.exit(0)
"""


class Report:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.details: dict[str, object] = {}

    def step(self, name: str) -> None:
        self.said.append(f"step {name}")

    def info(self, text: str) -> None:
        self.said.append(text)

    def line(self, text: str) -> None:
        self.said.append(text)


def _talk(tmp_path: Path, vanish: bool, beat: float) -> Conversation:
    tool = tmp_path / "tool.py"
    tool.write_text(STAND_IN.replace("VANISH", str(vanish)))
    conn = LocalTransport(Server(name="s1", addr="127.0.0.1"), tmp_path / "home")
    plan = InstallPlan(install_dir="/opt/app", staging_dir="/x", release="r2", lock_holder="t")
    return Conversation(conn, str(tool), "install", plan, Report(), beat=beat)  # type: ignore[arg-type]


def _waits(answer: Outcome) -> bool:
    return isinstance(answer, InstallResult) and bool(answer.prepared)


def test_the_first_answer_comes_while_the_command_waits_and_is_told_the_client_is_there(tmp_path: Path) -> None:
    talk = _talk(tmp_path, vanish=False, beat=0.1)
    ready = talk.first(_waits)
    assert isinstance(ready, InstallResult) and ready.prepared == "r2" and talk.holding
    time.sleep(0.6)  # a few beats
    done = talk.say("switch", Report())  # type: ignore[arg-type]
    assert isinstance(done, InstallResult) and done.changed and not talk.holding
    heard = int((done.error or "heard 0").split()[1])
    assert heard >= 2, done.error


def test_a_command_that_ends_without_answering_its_word_is_an_error_not_its_old_answer(tmp_path: Path) -> None:
    talk = _talk(tmp_path, vanish=True, beat=30)
    assert talk.first(_waits).ok
    with pytest.raises(RemoteCommandError) as failed:
        talk.say("switch", Report())  # type: ignore[arg-type]
    assert "ended without an answer" in failed.value.message


def test_an_answer_the_command_does_not_wait_after_is_its_end(tmp_path: Path) -> None:
    talk = _talk(tmp_path, vanish=False, beat=30)
    ended = threading.Event()

    def never(_answer: Outcome) -> bool:
        ended.set()
        return False

    closer = threading.Timer(0.5, lambda: talk.feed.put(b"switch\n"))  # it ends only once told
    closer.start()
    done = talk.first(never)  # not waited after: first() returns the command's end
    closer.join()
    assert ended.is_set() and isinstance(done, InstallResult) and done.changed and not talk.holding


def test_a_fed_command_times_out_only_after_it_was_last_fed(tmp_path: Path) -> None:
    import queue

    from flinger.ssh.connection import TIMED_OUT, run_process

    script = "while read word; do test $word = end && break; done; echo done"
    feed: queue.Queue[bytes | None] = queue.Queue()

    def keep_feeding() -> None:
        for _ in range(6):  # 1.8 s in all, never 1 s without a line
            time.sleep(0.3)
            feed.put(b"wait\n")
        feed.put(b"end\n")

    feeder = threading.Thread(target=keep_feeding)
    feeder.start()
    result, _ = run_process(["/bin/sh", "-c", script], "fed", b"", None, 1.0, None, feed)
    feeder.join()
    assert result.exit_code == 0 and result.stdout == "done\n"

    with pytest.raises(RemoteCommandError) as stopped:  # fed once, then nothing: its timeout runs out
        run_process(["/bin/sh", "-c", script], "starved", b"wait\n", None, 1.0, None, queue.Queue())
    assert stopped.value.exit_code == TIMED_OUT
