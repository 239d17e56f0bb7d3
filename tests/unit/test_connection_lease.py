"""ConnectionPool.lease, reserve and the session cap: more commands at once to one host than its
sshd lets one connection carry; a command's output by line; what the master's first session says."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from flinger.ssh.connection import (
    CONNECTIONS_PER_HOST,
    SESSIONS_PER_CONNECTION,
    Connection,
    SessionCap,
    _Collected,
    _home_from,
)
from flinger.ssh.pool import ConnectionPool
from flinger.topology.model import Server, SshSettings


def _pool(tmp_path: Path) -> ConnectionPool:
    server = Server(name="b", addr="127.0.0.1", user="deploy", port=2222)
    settings = SshSettings(known_hosts=tmp_path / "known_hosts", use_ssh_config=False)
    return ConnectionPool({"b": server}, settings, agent_for={"b"})


def test_leases_fill_a_connection_then_open_more_then_share_the_least_busy(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(pool.lease("b")) for _ in range(SESSIONS_PER_CONNECTION * CONNECTIONS_PER_HOST)]
        conns = list(dict.fromkeys(held))  # distinct, in order of first use
        assert len(conns) == CONNECTIONS_PER_HOST
        assert conns[0] is pool.get("b")
        assert all(held.count(c) == SESSIONS_PER_CONNECTION for c in conns)
        assert all(c.forward_agent for c in conns)  # every builder connection forwards the agent
        # all full: one more goes to a connection already open, never a ninth
        with pool.lease("b") as extra:
            assert extra in conns and extra.leases == SESSIONS_PER_CONNECTION + 1
    assert all(c.leases == 0 for c in conns)
    # once free again, the first connection is used first
    with pool.lease("b") as again:
        assert again is conns[0]
    pool.close()


def test_a_connection_never_runs_more_sessions_than_the_cap_and_a_refusal_lowers_it() -> None:
    cap = SessionCap()
    held = [cap.__enter__() for _ in range(SESSIONS_PER_CONNECTION)]
    assert held == list(range(1, SESSIONS_PER_CONNECTION + 1)) and cap.active == SESSIONS_PER_CONNECTION
    assert SESSIONS_PER_CONNECTION < 10  # sshd's default MaxSessions
    cap.refused(3)  # the host said no to the third session at once (MaxSessions 2)
    assert cap.limit == 2
    for _ in held:
        cap.__exit__(None, None, None)
    cap.refused(1)
    assert cap.limit == 1  # never below one


def test_a_refused_lease_goes_to_another_connection(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    first = pool.get("b")
    first.sessions.refused(3)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(pool.lease("b")) for _ in range(4)]
        assert held[0] is held[1] is first and held[2] is held[3] is not first
    pool.close()


def test_output_keeps_the_last_line_without_newline_and_drops_ssh_mux_lines() -> None:
    seen: list[tuple[str, str]] = []
    collected = _Collected(lambda stream, line: seen.append((stream, line)))
    collected.feed("out", b"one\ntw")
    collected.feed("err", b"mux_client_request_session: session request failed: Session open refused by peer\n")
    collected.feed("err", b"real error\n")
    collected.feed("out", b"o")
    collected.finish()
    result = collected.result("cmd", 0)
    assert result.stdout == "one\ntwo" and result.stderr == "real error\n"
    assert seen == [("out", "one"), ("err", "real error"), ("out", "two")]
    assert collected.ssh_lines == ["mux_client_request_session: session request failed: Session open refused by peer"]


def test_reserve_opens_ahead_the_connections_that_many_commands_at_once_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Connection] = []
    monkeypatch.setattr(Connection, "open", lambda self, first="": opened.append(self))
    pool = _pool(tmp_path)
    pool.reserve("b", 2 * SESSIONS_PER_CONNECTION + 1)  # three connections' worth
    pool.close()  # waits for those opened ahead, then stops them
    first = pool.get("b")
    assert len(opened) == 2 and first not in opened  # the first opens with its own first command
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(pool.lease("b")) for _ in range(2 * SESSIONS_PER_CONNECTION + 1)]
        assert list(dict.fromkeys(held)) == [first, *opened]  # the leases use them, no more are made
    pool.reserve("b", 1)  # nothing more needed
    pool.reserve("b", 100 * SESSIONS_PER_CONNECTION)  # never more than CONNECTIONS_PER_HOST
    pool.close()
    assert len(opened) == CONNECTIONS_PER_HOST - 1


def test_the_masters_first_session_says_home_then_what_the_first_command_printed() -> None:
    assert _home_from("home=/home/deploy\n") == ("/home/deploy", "")
    assert _home_from("home=/home/deploy\nabc  /x/flinger-remote.pyz\n") == (
        "/home/deploy",
        "abc  /x/flinger-remote.pyz\n",
    )
    # a forced command's words, or a torn answer: not ours, asked again
    for said in ("welcome\nhome=/x\n", "home=relative\n", "home=/x", "", "home=/a\x00b\n"):
        assert _home_from(said) == (None, ""), said
