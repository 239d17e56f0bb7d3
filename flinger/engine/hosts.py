"""The hosts of a run: what the engine needs of a host, and the one place host pools are made.

A `HostPool` hands out a `Transport` per server (run a command line, put bytes or a file,
make a directory, rename a file), checks that a server may be trusted
before anything connects, and declares what else its transport can do:
- `keys`: the hosts' keys as the client verified them (SSH; None where there are none);
- `bulk`: bulk copies with rsync, from this machine to a host and from one host to another
  (None where the transport has no such path: then a store that needs one says so).

`open_hosts` builds the pool of a command, every command (deploy, build, install-prereqs,
exec, trust, sync) through it, from the registry `TRANSPORTS`: a new transport is a module
with its pool and one entry here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from flinger.errors import UsageError
from flinger.topology.model import Server, Topology

if TYPE_CHECKING:
    from flinger.ssh.connection import CommandResult, Feed, LineSink
    from flinger.ssh.hostkeys import Trusted


class Transport(Protocol):
    server: Server
    home: str | None  # the login user's $HOME there, once asked

    def open(self, first: str = "") -> str | None:
        """Connect (once); `first`, a command to run with the connection's start: its
        output if it ran then and ended with status 0, else None (the caller runs it)."""

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineSink | None = None,
        check: bool = True,
        timeout: float | None = None,
        stop: threading.Event | None = None,
        feed: Feed | None = None,
    ) -> CommandResult:
        """Run a command line; with `feed`, its stdin stays open for what is put there
        (None closes it)."""

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None: ...

    def put_file(self, local: Path, remote_path: str, mode: int = 0o600) -> None: ...

    def make_dir(self, remote_path: str, mode: int = 0o700, *, exist_ok: bool = False) -> None:
        """Make a directory (its parent must exist); with `exist_ok`, one already there (not
        a symlink) will do."""

    def rename(self, source: str, dest: str) -> None: ...

    def close(self) -> None: ...


class HostKeys(Protocol):
    """Hosts' keys, as the client verifies them."""

    def trust(self, server: Server, *, replace: bool = False) -> list[Trusted]:
        """Record the server's key as a connection reaches it (the hosts on the way first):
        what `flinger trust` shows; the server's own outcome is last."""
        ...

    def known_hosts_for(self, servers: list[Server]) -> str:
        """known_hosts lines another host needs to reach `servers` as the client does."""
        ...


class BulkCopy(Protocol):
    """rsync between two places of the run."""

    def push_argv(self, dest: Server, path: str, options: list[str], source: Path) -> list[str]:
        """The rsync command line, run on this machine, that copies the tree `source` into
        `path` on `dest` (a plan: `flinger sync` shows and runs it)."""
        ...

    def relay(
        self, via: Server, sources: list[str], dest: Server, dest_dir: str, on_line: Callable[[str], None]
    ) -> CommandResult:
        """Copy `sources` (paths on `via`) into `dest_dir` on `dest`, run on `via`; rsync's
        --stats are in the result's output."""
        ...


class HostPool(Protocol):
    @property
    def keys(self) -> HostKeys | None:
        """The hosts' keys (None: this transport has none to trust)."""
        ...

    @property
    def bulk(self) -> BulkCopy | None:
        """Bulk copies (None: this transport has no way to copy between its hosts)."""
        ...

    def get(self, name: str) -> Transport: ...

    def lease(self, name: str) -> AbstractContextManager[Transport]:
        """A transport to `name` for one more command while others run to it (the builder's
        pushes): another connection when one is full."""
        ...

    def reserve(self, name: str, commands: int) -> None:
        """Up to `commands` will run to `name` at the same time (through `lease`): open the
        connections they need now, in the background."""
        ...

    def check_trusted(self, server: Server) -> None:
        """Raise HostKeyError when the server's host key is not known (first use is `trust`)."""
        ...

    def close(self) -> None: ...


PoolFactory = Callable[[Topology, frozenset[str]], HostPool]  # (topology, servers given the agent)


def _ssh(topology: Topology, agent_for: frozenset[str]) -> HostPool:
    from flinger.ssh.pool import ConnectionPool

    return ConnectionPool(topology.servers, topology.ssh, agent_for=set(agent_for), deployment=topology.name)


def _local(topology: Topology, agent_for: frozenset[str]) -> HostPool:
    from flinger.engine.local import LocalPool

    return LocalPool(topology.servers, topology.state_dir / "local-hosts")


# Every transport a run can use, by name: "ssh" for real hosts; "local" runs the very same
# command lines on this machine, each host a home directory of its own (the engine's tests).
TRANSPORTS: dict[str, PoolFactory] = {"ssh": _ssh, "local": _local}


def open_hosts(topology: Topology, *, transport: str = "ssh", agent_for: Iterable[str] = ()) -> HostPool:
    """The host pool of one command. Only the servers in `agent_for` get the client's agent
    forwarded (the builder, when it pushes packages to the servers); no other ever does."""
    if transport not in TRANSPORTS:
        raise UsageError(f"no transport named {transport!r} (known: {', '.join(sorted(TRANSPORTS))})")
    return TRANSPORTS[transport](topology, frozenset(agent_for))
