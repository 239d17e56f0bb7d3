"""Uploads through an SSH connection (flinger/ssh/connection.py) as the remote shell runs them:
written whole or not at all."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flinger.errors import RemoteCommandError
from flinger.ssh.connection import Connection


class Shell:
    """Runs the command Connection sends, as the remote login shell would, with a file size
    limit standing in for a full disk (both fail `cat` half-way)."""

    def run(self, command: str, stdin: bytes | None = None, check: bool = True) -> None:
        done = subprocess.run(["sh", "-c", f"ulimit -f 4; {command}"], input=stdin, capture_output=True)
        if check and done.returncode != 0:
            raise RemoteCommandError(command, done.returncode, done.stderr.decode().splitlines())


def test_an_upload_that_cannot_be_written_whole_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "flinger-remote.pyz.abc.tmp"
    try:
        Connection.put_bytes(Shell(), b"x" * 100_000, str(target))  # type: ignore[arg-type]
    except RemoteCommandError:
        pass
    else:
        raise AssertionError("an upload over the limit succeeded")
    assert not target.exists()
    Connection.put_bytes(Shell(), b"small", str(target))  # type: ignore[arg-type]
    assert target.read_bytes() == b"small" and target.stat().st_mode & 0o777 == 0o600
