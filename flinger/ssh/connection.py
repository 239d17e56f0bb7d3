"""One SSH connection per server: strict host keys, ~/.ssh/config, jump hosts, retries.

Built on fabric's `Connection` (it resolves User/Port/IdentityFile from ~/.ssh/config and
forwards the agent); flinger replaces its host-key policy and its gateway with strict ones.
Commands run on raw paramiko channels so stdin can be closed and output streamed by line.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fabric
import paramiko
from paramiko.agent import AgentClientProxy

from flinger.errors import HostKeyError, RemoteCommandError, UnreachableError
from flinger.ssh import known_hosts
from flinger.ssh.hostkeys import StrictHostKeyPolicy, fingerprint
from flinger.topology.model import Server, SshSettings

LineSink = Callable[[str, str], None]  # (stream "out" | "err", line)
TAIL_LINES = 20
TIMED_OUT = 124  # the exit status reported for a command flinger stopped waiting for (as timeout(1))
# A stock sshd allows 10 sessions (commands, SFTP) per connection (MaxSessions): stay under it,
# with room for the SFTP session a connection keeps open.
SESSIONS_PER_CONNECTION = 8
# More commands at once to one host than a connection may carry open more connections, up to:
CONNECTIONS_PER_HOST = 8
# An SSH keepalive this often; a peer that does not acknowledge what we sent for
# TCP_ACK_TIMEOUT_MS (its network is gone) drops the connection instead of hanging on it.
KEEPALIVE_SECONDS = 15
TCP_ACK_TIMEOUT_MS = 60_000


@dataclass
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def privileged(command: str, privilege: str) -> str:
    """Wrap a command line for the server's privilege tool (sudo, pfexec or none)."""
    if privilege == "sudo":
        return f"sudo -n -- sh -c {shlex.quote(command)}"
    if privilege == "pfexec":
        return f"pfexec sh -c {shlex.quote(command)}"
    return command


def _is_connect_error(exc: BaseException) -> bool:
    if isinstance(exc, paramiko.AuthenticationException | HostKeyError | paramiko.BadHostKeyException):
        return False
    return isinstance(exc, OSError | socket.timeout | paramiko.SSHException | EOFError)


class AgentForwarder:
    """Relays each agent channel a server opens back to the local agent (SSH_AUTH_SOCK).

    A paramiko transport keeps ONE agent-forwarding callback, so all channels of a connection
    share one forwarder that lives as long as the connection. A handler per command (as
    fabric's sessions have) would, once its command ended, close the agent connections of
    other commands still running side by side: they hang or fail to authenticate.
    """

    def __init__(self) -> None:
        self._proxies: list[AgentClientProxy] = []
        self._lock = threading.Lock()

    def __call__(self, channel: paramiko.Channel) -> None:
        proxy = AgentClientProxy(channel)
        with self._lock:
            self._proxies.append(proxy)

    def close(self) -> None:
        with self._lock:
            proxies, self._proxies = self._proxies, []
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.close()


class Connection:
    """A connection to one server, opened on first use and reused for every step of a run."""

    _conn: fabric.Connection

    def __init__(
        self,
        server: Server,
        settings: SshSettings,
        *,
        forward_agent: bool = False,
        gateway: Connection | None = None,
        proxy_command: str | None = None,
    ) -> None:
        self.server = server
        self.settings = settings
        self.forward_agent = forward_agent
        self.gateway = gateway
        self.proxy_command = proxy_command
        self._lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(SESSIONS_PER_CONNECTION)
        self.leases = 0  # commands ConnectionPool.lease handed this connection, running now
        self._agent: AgentForwarder | None = None
        self.home: str | None = None  # the login user's $HOME there, once asked (remote_tool)
        if settings.use_ssh_config:
            config = fabric.Config()
        else:
            config = fabric.Config(ssh_config=paramiko.SSHConfig())
        self._conn = fabric.Connection(
            server.addr,
            user=server.user,
            port=server.port,
            config=config,
            forward_agent=forward_agent,
            connect_timeout=max(1, int(settings.connect_timeout)),
            gateway=gateway._conn if gateway is not None else False,
        )
        # Proxies: an explicit [ssh] jump wins; else ProxyJump from ~/.ssh/config. Both are
        # built here, so every hop is checked with the same strict policy.
        self._client: paramiko.SSHClient = self._conn.client
        known = known_hosts.read(settings.known_hosts)
        self._client.set_missing_host_key_policy(
            StrictHostKeyPolicy(server.name, server.host_key, settings.known_hosts, known.revoked)
        )
        trusted = self._client.get_host_keys()
        for name in known.keys:
            for kind, key in known.keys[name].items():
                trusted.add(name, kind, key)

    @property
    def port(self) -> int:
        return int(self._conn.port)

    @property
    def user(self) -> str:
        return str(self._conn.user)

    @property
    def ssh_config(self) -> dict[str, Any]:
        return dict(self._conn.ssh_config)

    def open(self) -> None:
        """Connect (once), retrying connection errors only, with backoff."""
        with self._lock:
            if self._conn.is_connected:
                return
            attempts = self.settings.retries + 1
            for attempt in range(attempts):
                try:
                    if self.proxy_command is not None:
                        # A fresh proxy process per attempt; the target's host key is still
                        # checked here, through it, with the strict policy.
                        self._conn.connect_kwargs["sock"] = paramiko.ProxyCommand(self.proxy_command)
                    self._conn.open()
                    break
                except HostKeyError:
                    raise
                except paramiko.BadHostKeyException as exc:
                    raise HostKeyError(
                        f"{self.server.name}: host key CHANGED: got {fingerprint(exc.key)}, "
                        f"known_hosts has {fingerprint(exc.expected_key)}; refusing to connect. If the "
                        f"server was really re-keyed, run: flinger trust --servers {self.server.name}"
                    ) from None
                except paramiko.AuthenticationException as exc:
                    raise UnreachableError(
                        f"{self.server.name}: authentication failed as {self._conn.user}: {exc}"
                    ) from None
                except Exception as exc:  # noqa: BLE001 - classified just below
                    if not _is_connect_error(exc) or attempt == attempts - 1:
                        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                        raise UnreachableError(
                            f"{self.server.name}: cannot connect to {self.server.addr}:{self.port}: {reason}"
                        ) from None
                    time.sleep(min(0.5 * 2**attempt, 4.0))
            self._check_pin()
            self._keep_alive()

    def _keep_alive(self) -> None:
        transport = self._client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_SECONDS)
        sock = transport.sock
        if isinstance(sock, socket.socket) and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_ACK_TIMEOUT_MS)

    def _check_pin(self) -> None:
        if self.server.host_key is None:
            return
        transport = self._client.get_transport()
        assert transport is not None
        seen = fingerprint(transport.get_remote_server_key())
        if seen != self.server.host_key:
            self._conn.close()
            raise HostKeyError(
                f"{self.server.name}: host key {seen} does not match the pinned host_key "
                f"{self.server.host_key}; refusing to connect"
            )

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineSink | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command line (already quoted by the caller) and collect its output.

        At most SESSIONS_PER_CONNECTION commands run at once on one connection; more wait.
        One that runs longer than `timeout` (default: [ssh] command_timeout) is abandoned
        with a RemoteCommandError naming it, with its last output lines.
        """
        self.open()
        try:
            with self._sessions:
                result = self._run_session(command, stdin, on_line, timeout or self.settings.command_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise UnreachableError(f"{self.server.name}: connection lost: {exc or type(exc).__name__}") from None
        if check and result.exit_code != 0:
            raise RemoteCommandError(command, result.exit_code, result.tail)
        return result

    def _run_session(
        self, command: str, stdin: bytes | None, on_line: LineSink | None, timeout: float | None
    ) -> CommandResult:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("not connected")
        channel = transport.open_session()
        if self.forward_agent:
            self._forward_agent_on(channel)
        channel.exec_command(command)
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        return _collect(channel, command, on_line, timeout)

    def _forward_agent_on(self, channel: paramiko.Channel) -> None:
        """Forward the agent on this channel, to this connection's one forwarder."""
        with self._lock:
            if self._agent is None:
                self._agent = AgentForwarder()
        channel.request_forward_agent(self._agent)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        """Write a file over SFTP; the caller makes its directory private first."""
        self.open()
        sftp = self._conn.sftp()
        with sftp.open(remote_path, "wb") as handle:
            handle.chmod(mode)
            handle.write(data)

    def put_file(self, local: Path, remote_path: str, mode: int = 0o600) -> None:
        self.put_bytes(local.read_bytes(), remote_path, mode)

    def sftp_mkdir(self, remote_path: str, mode: int = 0o700) -> None:
        self.open()
        self._conn.sftp().mkdir(remote_path, mode)

    def sftp_rename(self, source: str, dest: str) -> None:
        """Rename over SFTP, replacing `dest` atomically (OpenSSH's posix-rename): no shell."""
        self.open()
        self._conn.sftp().posix_rename(source, dest)

    def direct_channel(self, addr: str, port: int) -> paramiko.Channel:
        """A TCP channel through this server to addr:port (for fetching keys behind a jump)."""
        self.open()
        transport = self._client.get_transport()
        assert transport is not None
        return transport.open_channel("direct-tcpip", (addr, port), ("", 0))

    def close(self) -> None:
        # Closing a dead connection must not mask the results of the run.
        with contextlib.suppress(Exception):
            self._conn.close()
        if self._agent is not None:
            self._agent.close()
            self._agent = None


def _collect(channel: paramiko.Channel, command: str, on_line: LineSink | None, timeout: float | None) -> CommandResult:
    out: list[bytes] = []
    err: list[bytes] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    partial = {"out": b"", "err": b""}
    deadline = None if timeout is None else time.monotonic() + timeout

    def feed(stream: str, data: bytes) -> None:
        buf = partial[stream] + data
        *lines, partial[stream] = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            tail.append(line)
            if on_line is not None:
                on_line(stream, line)

    channel.settimeout(0.2)
    while True:
        got = False
        while channel.recv_ready():
            data = channel.recv(65536)
            out.append(data)
            feed("out", data)
            got = True
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(65536)
            err.append(data)
            feed("err", data)
            got = True
        # sshd may send the exit status before the last output it still has to read from the
        # command's pipe: output is complete only at the channel's EOF (or close).
        complete = channel.closed or (channel.eof_received and channel.exit_status_ready())
        if complete and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            error = RemoteCommandError(command, TIMED_OUT, list(tail))
            error.message = f"`{command}` did not finish within {timeout:.0f}s (no exit status; stopped waiting)"
            raise error
        if not got:
            time.sleep(0.02)
    for stream in ("out", "err"):
        if partial[stream]:
            feed(stream, b"\n")
    code = channel.recv_exit_status()
    channel.close()
    return CommandResult(
        command=command,
        exit_code=code,
        stdout=b"".join(out).decode("utf-8", "replace"),
        stderr=b"".join(err).decode("utf-8", "replace"),
        tail=list(tail),
    )
