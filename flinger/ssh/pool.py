"""The SSH host pool: one connection per server for a run, host keys, and bulk copies.

`ConnectionPool` hands out `Connection`s by server name (made on first use, reused for every
step of the run, more of them to a host that runs many commands at once), honours jump hosts
from the topology or ~/.ssh/config, and declares what the engine may ask of SSH besides
commands (flinger/engine/hosts.py): `keys` (a host's key, and the known_hosts lines another
host needs to reach servers as the client does) and `bulk` (rsync over OpenSSH: client to
host, and host to host over the client's forwarded agent). It is built in one place only,
flinger/engine/hosts.py.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import fabric
import paramiko

from flinger.errors import HostKeyError, RemoteCommandError
from flinger.ssh import known_hosts
from flinger.ssh.connection import CONNECTIONS_PER_HOST, SESSIONS_PER_CONNECTION, CommandResult, Connection
from flinger.ssh.hostkeys import fetch_host_key
from flinger.ssh.openssh import remote_rsync_path, rsync_rsh
from flinger.topology.model import Server, SshSettings

RSYNC_IO_TIMEOUT = 120  # seconds without any data before a copy counts as failed (not a hang)

SSH_CONFIG_FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")


def _proxy_command(server: Server) -> str | None:
    """The ProxyCommand ssh_config gives `server`, its %h, %p and %r expanded with the
    topology's address, port and user (a first Host block says them: first value wins)."""
    texts = []
    for name in SSH_CONFIG_FILES:
        with contextlib.suppress(OSError):
            texts.append(Path(name).expanduser().read_text(errors="replace"))
    ours = [f"Host {server.addr}"]
    if server.port:
        ours.append(f"    Port {server.port}")
    if server.user:
        ours.append(f"    User {server.user}")
    config = paramiko.SSHConfig.from_text("\n".join([*ours, "", *texts]))
    command = config.lookup(server.addr).get("proxycommand")
    if not command or command.lower() == "none":
        return None
    return str(command)


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
        self.servers = servers
        self.deployment = deployment  # names the dir on a host that keeps what this pool writes there
        self.settings = settings
        self.agent_for = agent_for or set()
        self._conns: dict[str, Connection] = {}
        self._extra: dict[str, list[Connection]] = {}  # more connections to a busy host
        self._lock = threading.Lock()
        self._jump: Connection | None = None
        self.keys = SshHostKeys(self)
        self.bulk = OpenSshRsync(self)

    def jump_connection(self) -> Connection | None:
        if self.settings.jump is None:
            return None
        if self._jump is None:
            target = self.settings.jump
            user, _, hostport = target.rpartition("@")
            host, _, port = hostport.partition(":")
            jump = Server(name=f"jump:{host}", addr=host, user=user or None, port=int(port) if port else None)
            self._jump = Connection(jump, self.settings)
        return self._jump

    def check_trusted(self, server: Server) -> None:
        """A server whose key is not in known_hosts fails before any connection: first use is
        an explicit `flinger trust`."""
        if not known_hosts.read(self.settings.known_hosts).lookup(server.addr, server.port or 22):
            raise HostKeyError(
                f"{server.name}: host key not in {self.settings.known_hosts}; "
                f"run: flinger trust --servers {server.name}"
            )

    def get(self, name: str) -> Connection:
        with self._lock:
            if name not in self._conns:
                server = self.servers[name]
                gateway = self.jump_connection()
                proxy_command = None
                if gateway is None:
                    gateway, proxy_command = self._proxy_from_ssh_config(server)
                self._conns[name] = Connection(
                    server,
                    self.settings,
                    forward_agent=name in self.agent_for,
                    gateway=gateway,
                    proxy_command=proxy_command,
                )
            return self._conns[name]

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[Connection]:
        """A connection to `name` for one more command while others run on it (the builder's
        pushes): the first with a free session, else a new one (up to CONNECTIONS_PER_HOST),
        else the least busy, whose next free session the command then waits for."""
        first = self.get(name)
        with self._lock:
            conns = [first, *self._extra.setdefault(name, [])]
            free = [c for c in conns if c.leases < SESSIONS_PER_CONNECTION]
            if free:
                conn = free[0]
            elif len(conns) < CONNECTIONS_PER_HOST:
                conn = Connection(
                    first.server,
                    self.settings,
                    forward_agent=first.forward_agent,
                    gateway=first.gateway,
                    proxy_command=first.proxy_command,
                )
                self._extra[name].append(conn)
            else:
                conn = min(conns, key=lambda c: c.leases)
            conn.leases += 1
        try:
            yield conn
        finally:
            with self._lock:
                conn.leases -= 1

    def _proxy_from_ssh_config(self, server: Server) -> tuple[Connection | None, str | None]:
        """ProxyJump hops (each checked with the strict policy), else a ProxyCommand, from
        ~/.ssh/config: honoured, never silently ignored."""
        if not self.settings.use_ssh_config:
            return None, None
        probe = fabric.Connection(server.addr, config=fabric.Config(), gateway=False)
        hops = probe.ssh_config.get("proxyjump")
        if not hops or hops.lower() == "none":
            return None, _proxy_command(server)
        gateway: Connection | None = None
        for hop in hops.split(","):
            user, _, hostport = hop.strip().rpartition("@")
            host, _, port = hostport.partition(":")
            hop_server = Server(name=f"jump:{host}", addr=host, user=user or None, port=int(port) if port else None)
            gateway = Connection(hop_server, self.settings, gateway=gateway)
        return gateway, None

    def close(self) -> None:
        for conn in [*self._conns.values(), *(c for extra in self._extra.values() for c in extra)]:
            conn.close()
        if self._jump is not None:
            self._jump.close()


class SshHostKeys:
    """Host keys as the client verifies them (the `keys` capability of the SSH pool)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def fetch(self, server: Server) -> paramiko.PKey:
        """Ask `server` for its host key (key exchange only), through the jump host if any."""
        port = server.port or 22
        jump = self.pool.jump_connection()
        sock = jump.direct_channel(server.addr, port) if jump is not None else None
        return fetch_host_key(server.addr, port, self.pool.settings.connect_timeout, sock)

    def known_hosts_for(self, servers: list[Server]) -> str:
        """The known_hosts lines another host needs to reach `servers` (and the jump host) as
        the client does: only the keys the client verified, never learned anew."""
        settings = self.pool.settings
        known = known_hosts.read(settings.known_hosts)
        targets = [(s.addr, s.port or 22) for s in servers]
        jump = self.pool.jump_connection()
        if jump is not None:  # the other host's copies go through it too, checked as strictly
            targets.insert(0, (jump.server.addr, jump.server.port or 22))
        lines = [
            known_hosts.key_line(addr, port, key) for addr, port in targets for key in known.lookup(addr, port).values()
        ]
        return "\n".join(lines) + "\n"


class OpenSshRsync:
    """Bulk copies over OpenSSH (the `bulk` capability of the SSH pool): rsync from this
    machine to a host, and from one host to another over the client's forwarded agent, host
    keys checked strictly against what the client verified."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()
        self._known_hosts: dict[str, str] = {}  # host -> the known_hosts file written there this run

    def push_argv(self, dest: Server, path: str, options: list[str], source: Path) -> list[str]:
        """rsync's argv, run on this machine, copying the tree `source` into `path` on `dest`."""
        host = dest.addr if ":" not in dest.addr else f"[{dest.addr}]"
        target = remote_rsync_path(path).rstrip("/") + "/"
        return ["rsync", *options, "-e", rsync_rsh(dest, self.pool.settings), "--", f"{source}/", f"{host}:{target}"]

    def relay(
        self, via: Server, sources: list[str], dest: Server, dest_dir: str, on_line: Callable[[str], None]
    ) -> CommandResult:
        """rsync `sources` (paths on `via`; a `/./` keeps what is below it) into `dest_dir` on
        `dest`, run on `via`, whose connection forwards the client's agent."""
        checked = self._known_hosts_on(via)
        rsh = rsync_rsh(dest, self.pool.settings, known_hosts=checked)
        host = dest.addr if ":" not in dest.addr else f"[{dest.addr}]"
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
                conn.run(f"mkdir -p {shlex.quote(directory)} && chmod 700 {shlex.quote(directory)}")
                servers = [s for s in self.pool.servers.values() if s.name != via.name]
                path = f"{directory}/known_hosts"
                conn.put_bytes(self.pool.keys.known_hosts_for(servers).encode(), path, mode=0o600)
                self._known_hosts[via.name] = path
            return self._known_hosts[via.name]
