"""The local transport: every "host" is this machine, each with a home directory of its own.

`LocalTransport` runs the very same command lines as SSH would, with /bin/sh and HOME set to
the host's own directory, so the engine (locks, staging, rollouts, rollbacks, with the real
remote tool) runs on one machine without SSH. `LocalPool` hands them out by server name; it
has no host keys, and copies between its hosts with a local rsync.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from flinger.errors import RemoteCommandError
from flinger.ssh.connection import CommandResult, Feed, LineSink, run_process
from flinger.ssh.openssh import remote_rsync_path
from flinger.topology.model import Server


class LocalTransport:
    """A "host" that is this machine: commands run with /bin/sh, HOME set to `home`."""

    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.home: str | None = None
        self.home_dir = home
        self._opened = False

    def open(self, first: str = "") -> str | None:
        """As the SSH transport: $HOME known from the first open, and `first` run with it,
        its output kept if it ended with status 0."""
        self.home_dir.mkdir(parents=True, exist_ok=True)
        self.home = str(self.home_dir)
        opened, self._opened = self._opened, True
        if opened or not first:
            return None
        result = self.run(first, check=False)
        return result.stdout if result.exit_code == 0 else None

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
        """As the SSH transport runs it (flinger/ssh/connection.py): output by line as it
        comes, `stop` and `feed` on its stdin, a timeout a RemoteCommandError."""
        self.home_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(self.home_dir)}
        result, _ = run_process(["/bin/sh", "-c", command], command, stdin, on_line, timeout, stop, feed,
                          env=env, cwd=self.home_dir)  # fmt: skip
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

    def make_dir(self, remote_path: str, mode: int = 0o700, *, exist_ok: bool = False) -> None:
        try:
            os.mkdir(remote_path, mode)
        except FileExistsError:
            if not (exist_ok and os.path.isdir(remote_path) and not os.path.islink(remote_path)):
                raise
            return
        os.chmod(remote_path, mode)

    def rename(self, source: str, dest: str) -> None:
        os.replace(source, dest)

    def close(self) -> None:
        pass


class LocalPool:
    """LocalTransports by server name, each with its own home under `root`."""

    keys = None  # no host keys: this machine

    def __init__(self, servers: dict[str, Server], root: Path) -> None:
        self.root = root
        self._hosts = {name: LocalTransport(server, root / name) for name, server in servers.items()}
        self.bulk = LocalRsync(self)

    def get(self, name: str) -> LocalTransport:
        return self._hosts[name]

    def home_of(self, name: str) -> Path:
        return self._hosts[name].home_dir

    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[LocalTransport]:
        yield self._hosts[name]

    def reserve(self, name: str, commands: int) -> None:
        """Nothing to open ahead: a local "connection" costs nothing."""

    def check_trusted(self, server: Server) -> None:
        pass  # no host keys: this machine

    def close(self) -> None:
        pass


class LocalRsync:
    """Bulk copies between the local hosts' directories, with a local rsync."""

    def __init__(self, pool: LocalPool) -> None:
        self.pool = pool

    def push_argv(self, dest: Server, path: str, options: list[str], source: Path) -> list[str]:
        home = self.pool.home_of(dest.name)
        relative = remote_rsync_path(path)
        target = Path(relative) if relative.startswith("/") else home / relative
        return ["rsync", *options, "--", f"{source}/", f"{target}/"]

    def relay(
        self, via: Server, sources: list[str], dest: Server, dest_dir: str, on_line: Callable[[str], None]
    ) -> CommandResult:
        argv = ["rsync", "--relative", "--times", "--perms", "--chmod=F600,D700", "--stats", "--", *sources,
                f"{dest_dir}/"]  # fmt: skip
        result = self.pool.get(via.name).run(shlex.join(argv), on_line=lambda _s, t: on_line(t), check=False)
        if result.exit_code != 0:
            raise RemoteCommandError(f"rsync from {via.name} to {dest.name}", result.exit_code, result.tail)
        return result
