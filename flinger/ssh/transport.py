"""The transport seam: what the deploy engine needs of a host, and a local implementation.

`Transport` is what deploy steps use of a host: run a command line, put bytes or a file,
make a directory and rename over the file channel. `flinger.ssh.connection.Connection` is the
SSH implementation. `LocalTransport` runs the very same command lines with /bin/sh on this
machine, each "host" with its own $HOME, so the engine (locks, staging, rollouts, rollbacks,
with the real remote tool) runs in unit tests without SSH. A `HostPool` hands out transports
by server name; `LocalPool` is the local one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from flinger.errors import RemoteCommandError
from flinger.ssh.connection import CommandResult, LineSink
from flinger.topology.model import Server


class Transport(Protocol):
    server: Server
    home: str | None  # the login user's $HOME there, once asked

    def open(self) -> None: ...

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineSink | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult: ...

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None: ...

    def put_file(self, local: Path, remote_path: str, mode: int = 0o600) -> None: ...

    def sftp_mkdir(self, remote_path: str, mode: int = 0o700) -> None: ...

    def sftp_rename(self, source: str, dest: str) -> None: ...

    def close(self) -> None: ...


class HostPool(Protocol):
    def get(self, name: str) -> Transport: ...

    def lease(self, name: str) -> AbstractContextManager[Transport]: ...

    def check_trusted(self, server: Server) -> None:
        """Raise HostKeyError when the server's host key is not known (first use is `trust`)."""
        ...

    def close(self) -> None: ...


class LocalTransport:
    """A "host" that is this machine: commands run with /bin/sh, HOME set to `home`."""

    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.home: str | None = None
        self._home = home

    def open(self) -> None:
        self._home.mkdir(parents=True, exist_ok=True)

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        on_line: LineSink | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> CommandResult:
        self.open()
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env={**os.environ, "HOME": str(self._home)},
            cwd=self._home,
            timeout=timeout,
            check=False,
        )
        tail: list[str] = []
        for stream, data in (("out", done.stdout), ("err", done.stderr)):
            for line in data.decode("utf-8", "replace").splitlines():
                tail.append(line)
                if on_line is not None:
                    on_line(stream, line)
        result = CommandResult(
            command=command,
            exit_code=done.returncode,
            stdout=done.stdout.decode("utf-8", "replace"),
            stderr=done.stderr.decode("utf-8", "replace"),
            tail=tail[-20:],
        )
        if check and result.exit_code != 0:
            raise RemoteCommandError(command, result.exit_code, result.tail)
        return result

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        fd = os.open(remote_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(remote_path, mode)

    def put_file(self, local: Path, remote_path: str, mode: int = 0o600) -> None:
        self.put_bytes(local.read_bytes(), remote_path, mode)

    def sftp_mkdir(self, remote_path: str, mode: int = 0o700) -> None:
        os.mkdir(remote_path, mode)
        os.chmod(remote_path, mode)

    def sftp_rename(self, source: str, dest: str) -> None:
        os.replace(source, dest)

    def close(self) -> None:
        pass


class LocalPool:
    """LocalTransports by server name, each with its own home under `root`."""

    def __init__(self, servers: dict[str, Server], root: Path) -> None:
        self._hosts = {name: LocalTransport(server, root / name) for name, server in servers.items()}

    def get(self, name: str) -> Transport:
        return self._hosts[name]

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[Transport]:
        yield self._hosts[name]

    def check_trusted(self, server: Server) -> None:
        pass  # no host keys: this machine

    def close(self) -> None:
        pass
