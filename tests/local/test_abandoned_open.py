"""A connection opened ahead (ConnectionPool.reserve) to a host that does not answer is
abandoned when the run ends, not waited for: real ssh against a silent local listener."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from flinger.errors import UnreachableError
from flinger.ssh.connection import SESSIONS_PER_CONNECTION
from flinger.ssh.pool import ConnectionPool
from flinger.topology.model import Server, SshSettings


@pytest.mark.parametrize("through_jump", [False, True], ids=["direct", "through-jump"])
def test_close_abandons_a_connection_opened_ahead_to_a_host_that_does_not_answer(
    tmp_path: Path, through_jump: bool
) -> None:
    """A builder (or its jump host) that accepts TCP and never sends its banner: the run fails
    on it and ends; the spare connection `reserve` opened ahead must not hold that end for its
    whole connect limit (here 3 x 30 s + 30 s), nor leave its ssh to the jump host behind.
    Real ssh, a silent listener."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    port = silent.getsockname()[1]
    if through_jump:  # the builder behind a jump host that does not answer
        server = Server(name="b", addr="127.0.0.9", user="deploy", port=22)
        jump: str | None = f"deploy@127.0.0.1:{port}"
    else:
        server, jump = Server(name="b", addr="127.0.0.1", user="deploy", port=port), None
    settings = SshSettings(known_hosts=tmp_path / "known_hosts", use_ssh_config=False, connect_timeout=30, jump=jump)
    pool = ConnectionPool({"b": server}, settings, agent_for={"b"})
    pool.reserve("b", SESSIONS_PER_CONNECTION + 1)  # two connections needed: one spare opened ahead
    (spare,) = pool._extra["b"]
    for _ in range(200):  # its ssh is connected and waits for the banner
        if accepted:
            break
        threading.Event().wait(0.05)
    assert accepted
    closing = threading.Thread(target=pool.close, daemon=True)
    closing.start()
    closing.join(timeout=settings.connect_timeout - 10)  # well before ssh's own ConnectTimeout
    assert not closing.is_alive(), "close waited for a connection nobody will use"
    accepted[0].settimeout(10)
    said = b""
    while chunk := accepted[0].recv(4096):  # its banner, then the end: that ssh (or the jump's) is gone
        said += chunk
    assert said.startswith(b"SSH-2.0-")
    with pytest.raises(UnreachableError, match="abandoned"):
        spare.open()  # nothing opens it again after the run ended
    silent.close()
