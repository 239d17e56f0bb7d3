"""SSH keys of the sandbox: host keys, the client key, known_hosts and authorized_keys."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from flinger.errors import FlingerError


def generate_key(path: Path, comment: str) -> None:
    """A new ed25519 key pair without passphrase at `path` (+ .pub), replacing any old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlingerError(f"ssh-keygen could not write {path}: {detail}")
    path.chmod(0o600)


def ensure_key(path: Path, comment: str) -> None:
    """Keep an existing key pair (a later `up` reuses it), else generate one."""
    if not (path.exists() and path.with_name(path.name + ".pub").exists()):
        generate_key(path, comment)


def public_key(private_key: Path) -> tuple[str, str]:
    """(key type, base64 blob) of the .pub file next to `private_key`."""
    pub = private_key.with_name(private_key.name + ".pub")
    fields = pub.read_text().split()
    if len(fields) < 2:
        raise FlingerError(f"{pub} is not an OpenSSH public key")
    return fields[0], fields[1]


def known_hosts_line(addr: str, port: int, host_key: Path) -> str:
    """The known_hosts entry for a host key; non-22 ports are written `[addr]:port`."""
    key_type, blob = public_key(host_key)
    host = addr if port == 22 else f"[{addr}]:{port}"
    return f"{host} {key_type} {blob}"


def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` atomically with `mode`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_known_hosts(path: Path, entries: Iterable[tuple[str, int, Path]]) -> None:
    """known_hosts with the real key of each (addr, port, host key path)."""
    lines = [known_hosts_line(addr, port, key) for addr, port, key in entries]
    write_private_file(path, "".join(line + "\n" for line in lines), 0o644)
