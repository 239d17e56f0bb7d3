"""ConnectionPool.lease: more commands at once to one host than a stock sshd lets one connection carry."""

from __future__ import annotations

import contextlib
from pathlib import Path

from flinger.ssh.connection import CONNECTIONS_PER_HOST, SESSIONS_PER_CONNECTION, Connection
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


def test_a_connection_never_runs_more_sessions_than_the_cap(tmp_path: Path) -> None:
    conn = Connection(Server(name="x", addr="127.0.0.1"), SshSettings(known_hosts=tmp_path / "kh"))
    for _ in range(SESSIONS_PER_CONNECTION):
        assert conn._sessions.acquire(blocking=False)
    assert not conn._sessions.acquire(blocking=False)
    assert SESSIONS_PER_CONNECTION < 10  # sshd's default MaxSessions, with room for SFTP


class _LateOutputChannel:
    """A channel whose exit status arrives before the last output (sshd sends the status when
    the command exits, and may read the rest of its pipe afterwards), then EOF."""

    def __init__(self) -> None:
        self.polls = 0
        self.data = b""
        self.closed = False
        self.eof_received = False

    def settimeout(self, _timeout: float) -> None:
        pass

    def _tick(self) -> None:
        self.polls += 1
        if self.polls == 3:
            self.data += b"/home/deploy"
        if self.polls == 5:
            self.eof_received = True

    def recv_ready(self) -> bool:
        self._tick()
        return bool(self.data)

    def recv(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def recv_stderr_ready(self) -> bool:
        return False

    def recv_stderr(self, n: int) -> bytes:
        return b""

    def exit_status_ready(self) -> bool:
        return True  # from the start

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_output_after_the_exit_status_is_not_lost() -> None:
    from flinger.ssh.connection import _collect

    result = _collect(_LateOutputChannel(), 'printf %s "$HOME"', None, 5.0)  # type: ignore[arg-type]
    assert result.stdout == "/home/deploy" and result.exit_code == 0
