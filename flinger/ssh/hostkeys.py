"""Host keys: fingerprints, the strict policy used for every connection, and `trust`.

An unknown key is refused (unless it matches the server's `host_key` pin); a changed key is
refused by paramiko itself. First use is an explicit `flinger trust`, which records keys.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko

from flinger.errors import HostKeyError, UnreachableError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint: "SHA256:" + unpadded base64 of the key blob's digest."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(addr: str, port: int) -> str:
    """The name a host is recorded under in known_hosts (OpenSSH's rule)."""
    return addr if port == 22 else f"[{addr}]:{port}"


class StrictHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse every key that is not already known, unless it matches the pinned fingerprint."""

    def __init__(self, server_name: str, pin: str | None, known_hosts: Path) -> None:
        self.server_name = server_name
        self.pin = pin
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint(key)
        if self.pin is not None and seen == self.pin:
            return
        if self.pin is not None:
            raise HostKeyError(
                f"{self.server_name}: host key {seen} ({key.get_name()}) does not match the pinned "
                f"host_key {self.pin}; refusing to connect"
            )
        raise HostKeyError(
            f"{self.server_name}: unknown host key {seen} ({key.get_name()}) for {hostname}, "
            f"not in {self.known_hosts}; if it is right, run: flinger trust --servers {self.server_name}"
        )


def load_host_keys(path: Path) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    if path.exists():
        keys.load(str(path))
    return keys


def fetch_host_key(
    addr: str, port: int, timeout: float, sock: socket.socket | paramiko.Channel | None = None
) -> paramiko.PKey:
    """Ask a server for its host key (key exchange only; no authentication)."""
    try:
        if sock is None:
            sock = socket.create_connection((addr, port), timeout=timeout)
        transport = paramiko.Transport(sock)
    except OSError as exc:
        raise UnreachableError(f"{addr}:{port}: {exc.strerror or exc}") from None
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError) as exc:
        raise UnreachableError(f"{addr}:{port}: key exchange failed: {exc}") from None
    finally:
        transport.close()


def record_host_key(path: Path, addr: str, port: int, key: paramiko.PKey) -> bool:
    """Add (or replace) the key of addr:port in known_hosts; True when the file changed."""
    keys = load_host_keys(path)
    name = known_hosts_name(addr, port)
    existing = keys.lookup(name)
    if existing is not None and existing.get(key.get_name()) == key:
        return False
    if existing is not None:
        # Replacing a key is an explicit operator decision (they ran `trust`): drop old ones.
        for keytype in list(existing.keys()):
            del existing[keytype]
    keys.add(name, key.get_name(), key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    keys.save(str(tmp))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True


def recorded_fingerprint(path: Path, addr: str, port: int) -> str | None:
    entry = load_host_keys(path).lookup(known_hosts_name(addr, port))
    if not entry:
        return None
    return fingerprint(next(iter(entry.values())))
