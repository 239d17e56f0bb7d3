"""The SSH host pool: one OpenSSH connection master per server for a run, host keys, and bulk
copies, all through the run's one generated config (flinger/ssh/config.py).

`ConnectionPool` hands out `Connection`s by server name (made on first use, reused for every
step of the run, more of them to a host that runs many commands at once), and declares what
the engine may ask of SSH besides commands (flinger/engine/hosts.py): `keys` (trust, and the
known_hosts lines another host needs to reach servers as the client does) and `bulk` (rsync
over OpenSSH: client to host through the host's master, and host to host over the client's
forwarded agent). It is built in one place only, flinger/engine/hosts.py.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flinger.errors import HostKeyError, RemoteCommandError
from flinger.ssh import known_hosts
from flinger.ssh.config import Hop, SshConfig
from flinger.ssh.connection import CONNECTIONS_PER_HOST, CommandResult, Connection, trace
from flinger.ssh.hostkeys import HostKeyTrust, Trusted
from flinger.ssh.openssh import remote_rsync_path, require_local, strict_argv
from flinger.topology.model import Server, SshSettings

RSYNC_IO_TIMEOUT = 120  # seconds without any data before a copy counts as failed (not a hang)


class ConnectionPool:
    """The connections of one run: one per server, made on first use, closed at the end.

    Only the builder's connection forwards the agent (DESIGN.md); servers never get one.
    """

    def __init__(
        self,
        servers: dict[str, Server],
        settings: SshSettings,
        *,
        agent_for: set[str] | None = None,
        deployment: str = "flinger",
    ) -> None:
        require_local("ssh")
        self.servers = servers
        self.deployment = deployment  # names the dir on a host that keeps what this pool writes there
        self.settings = settings
        self.agent_for = agent_for or set()
        self.config = SshConfig(settings)
        self._conns: dict[str, Connection] = {}
        self._extra: dict[str, list[Connection]] = {}  # more connections to a busy host
        self._warming: list[tuple[threading.Thread, Connection]] = []  # connections opened ahead (reserve)
        self._lock = threading.Lock()
        self.keys = SshHostKeys(self)
        self.bulk = OpenSshRsync(self)

    def check_trusted(self, server: Server) -> None:
        """A server (or a jump host on its way) with nothing in known_hosts for the name
        OpenSSH will look up fails before any connection: first use is `flinger trust`."""
        if server.host_key is not None:
            return  # its pin is its trust
        resolved = self.config.resolve(Hop.of(server))
        known = known_hosts.read(*resolved.known_hosts_files)
        if not known.knows(resolved.lookup_name):
            files = ", ".join(str(p) for p in resolved.known_hosts_files) or "no known_hosts file"
            raise HostKeyError(
                f"{server.name}: unknown host key: nothing for {resolved.lookup_name} in {files} (no key, no "
                f"@cert-authority); if the host is right, run: flinger trust --servers {server.name}"
            )
        for jump in self.config.jumps(resolved):
            hop = self.config.resolve(Hop.parse(jump), jump=False)
            if not known_hosts.read(*hop.known_hosts_files).knows(hop.lookup_name):
                raise HostKeyError(
                    f"{server.name}: the jump host {jump} on its way is not in known_hosts ({hop.lookup_name}); "
                    f"run: flinger trust --servers {server.name} (it trusts the hosts on the way too)"
                )

    def get(self, name: str) -> Connection:
        with self._lock:
            if name not in self._conns:
                self._conns[name] = self._new(self.servers[name])
            return self._conns[name]

    def _new(self, server: Server) -> Connection:
        return Connection(server, self.settings, config=self.config, forward_agent=server.name in self.agent_for)

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[Connection]:
        """A connection to `name` for one more command while others run on it (the builder's
        pushes): the first with a free session, else a new one (up to CONNECTIONS_PER_HOST),
        else the least busy, whose next free session the command then waits for (`reserve`
        opens them ahead)."""
        first = self.get(name)
        with self._lock:
            conns = [first, *self._extra.setdefault(name, [])]
            free = [c for c in conns if c.leases < c.sessions.limit]
            if free:
                conn = free[0]
            elif len(conns) < CONNECTIONS_PER_HOST:
                conn = self._another(name)
            else:
                conn = min(conns, key=lambda c: c.leases)
            conn.leases += 1
        try:
            yield conn
        finally:
            with self._lock:
                conn.leases -= 1

    def _another(self, name: str) -> Connection:
        """One more connection to `name` (the caller holds the lock)."""
        first = self._conns[name]
        conn = self._new(first.server)
        conn.sessions.limit = first.sessions.limit  # what the host allows, learned on the first
        self._extra[name].append(conn)
        return conn

    def reserve(self, name: str, commands: int) -> None:
        """Open now, in the background, the connections to `name` that `commands` leased at
        once will need (up to CONNECTIONS_PER_HOST): otherwise the first command to find the
        others full waits for a whole connect."""
        first = self.get(name)
        with self._lock:
            conns = [first, *self._extra.setdefault(name, [])]
            needed = min(CONNECTIONS_PER_HOST, -(-commands // first.sessions.limit))
            spares = [self._another(name) for _ in range(needed - len(conns))]
        for conn in spares:
            self._warm(conn)

    def _warm(self, conn: Connection) -> None:
        """Open `conn` in the background; a failure is left for the command that uses it
        (its open tries again and says why)."""

        def open_it() -> None:
            with contextlib.suppress(Exception):  # said again by the open of its first command
                conn.open()

        thread = threading.Thread(target=open_it, name=f"warm {conn.server.name}", daemon=True)
        self._warming.append((thread, conn))
        thread.start()

    def close(self) -> None:
        """Stop every master, all at once (each is one `ssh -O exit`). A connection still
        being opened ahead is abandoned first (nobody will use it: the run ends, perhaps
        because that host does not answer), not waited for up to its connect limit."""
        for thread, conn in self._warming:
            if thread.is_alive():
                conn.abandon()
            thread.join()
        conns = [*self._conns.values(), *(c for extra in self._extra.values() for c in extra)]
        if conns:
            with ThreadPoolExecutor(max_workers=min(16, len(conns))) as pool:
                list(pool.map(Connection.close, conns))
        self.config.close()


class SshHostKeys:
    """Host keys as the client verifies them (the `keys` capability of the SSH pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._trust = HostKeyTrust(pool.config)

    def trust(self, server: Server, *, replace: bool = False) -> list[Trusted]:
        """Record `server`'s key (and those of the jump hosts on its way) as a connection
        reaches it: `flinger trust`."""
        return self._trust.trust(server, replace=replace)

    def known_hosts_for(self, servers: list[Server]) -> str:
        """The known_hosts lines another host needs to reach `servers` (and the jump host) as
        the client does: only the keys and authorities the client trusts, under the names
        that host will look up (it connects to the address and port OpenSSH resolved here)."""
        config = self.pool.config
        targets = [config.resolve(Hop.of(s)) for s in servers]
        if self.pool.settings.jump:
            targets.insert(0, config.resolve(Hop.parse(self.pool.settings.jump), jump=False))
        lines: list[str] = []
        for resolved in targets:
            known = known_hosts.read(*resolved.known_hosts_files)
            there = known_hosts.host_pattern(resolved.hostname, resolved.port)
            for kind, blob in known.keys_for(resolved.lookup_name).items():
                lines.append(known_hosts.key_line(there, kind, blob))
            for ca in known.authorities_for(resolved.lookup_name):
                lines.append(f"@cert-authority {there} {ca.kind} {ca.blob}")
        return "\n".join(dict.fromkeys(lines)) + "\n"


class OpenSshRsync:
    """Bulk copies over OpenSSH (the `bulk` capability of the SSH pool): rsync from this
    machine to a host (through its connection master), and from one host to another over the
    client's forwarded agent, host keys checked strictly against what the client trusts."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._known_hosts: dict[str, str] = {}  # host -> the known_hosts file written there this run

    def push_argv(self, dest: Server, path: str, options: list[str], source: Path) -> list[str]:
        """rsync's argv, run on this machine, copying the tree `source` into `path` on `dest`."""
        conn = self.pool.get(dest.name)
        rsh = shlex.join([*self.pool.config.base_argv(), *conn.options(), *conn.hop.argv()[:-2]])
        host = dest.addr if ":" not in dest.addr else f"[{dest.addr}]"
        target = remote_rsync_path(path).rstrip("/") + "/"
        argv = ["rsync", *options, "-e", rsh, "--", f"{source}/", f"{host}:{target}"]
        trace.debug("[%s] rsync: %s", dest.name, shlex.join(argv))
        return argv

    def relay(
        self, via: Server, sources: list[str], dest: Server, dest_dir: str, on_line: Callable[[str], None]
    ) -> CommandResult:
        """rsync `sources` (paths on `via`; a `/./` keeps what is below it) into `dest_dir` on
        `dest`, run on `via`, whose connection forwards the client's agent; `via` reaches
        `dest` at the address, port and user OpenSSH resolved on this machine."""
        checked = self._known_hosts_on(via)
        resolved = self.pool.config.resolve(Hop.of(dest))
        rsh = shlex.join(strict_argv(self.pool.settings, checked, resolved.port, resolved.user))
        host = resolved.hostname if ":" not in resolved.hostname else f"[{resolved.hostname}]"
        argv = ["rsync", "--relative", "--times", "--perms", "--chmod=F600,D700", "--partial", "--stats",
                f"--timeout={RSYNC_IO_TIMEOUT}", "-e", rsh, "--", *sources, f"{host}:{dest_dir}/"]  # fmt: skip
        with self.pool.lease(via.name) as conn:
            result = conn.run(shlex.join(argv), on_line=lambda _s, t: on_line(t), check=False)
        if result.exit_code != 0:
            raise RemoteCommandError(f"rsync from {via.name} to {dest.name}", result.exit_code, result.tail)
        return result

    def _known_hosts_on(self, via: Server) -> str:
        """The known_hosts file `via` checks the servers against, written there once per run
        before its first copy (a run that copies nothing never writes it)."""
        with self._lock:
            if via.name not in self._known_hosts:
                from flinger.engine.remote import resolve_remote_path

                conn = self.pool.get(via.name)
                directory = resolve_remote_path(conn, f"$HOME/.flinger/{self.pool.deployment}")
                servers = [s for s in self.pool.servers.values() if s.name != via.name]
                path = f"{directory}/known_hosts"
                there, file = shlex.quote(directory), shlex.quote(path)
                # one round trip: the dir made private, then the file (a failed write leaves none)
                made = f"mkdir -p {there} && chmod 700 {there} && umask 077"
                written = f"cat > {file} && chmod 600 {file}"
                stdin = self.pool.keys.known_hosts_for(servers).encode()
                conn.run(f"{made} && {{ {written}; }} || {{ rm -f -- {file}; exit 1; }}", stdin=stdin)
                self._known_hosts[via.name] = path
            return self._known_hosts[via.name]
