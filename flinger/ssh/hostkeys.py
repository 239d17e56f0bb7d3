"""Host keys: fingerprints, the strict policy used for every connection, and `trust`.

An unknown or `@revoked` key is refused (an unknown one is accepted when it matches the
server's `host_key` pin); a changed key is refused by paramiko itself. First use is an explicit
`flinger trust`, which records keys (flinger/ssh/known_hosts.py reads and appends the file).
"""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

import paramiko

from flinger.errors import HostKeyError, UnreachableError


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint: "SHA256:" + unpadded base64 of the key blob's digest."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class StrictHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse every key that is not already known, unless it matches the pinned fingerprint."""

    def __init__(self, server_name: str, pin: str | None, known_hosts: Path, revoked: set[str] | None = None) -> None:
        self.server_name = server_name
        self.pin = pin
        self.known_hosts = known_hosts
        self.revoked = revoked or set()

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint(key)
        if key.get_base64() in self.revoked:
            raise HostKeyError(
                f"{self.server_name}: host key {seen} ({key.get_name()}) is marked @revoked in "
                f"{self.known_hosts}; refusing to connect"
            )
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
