"""The client-side secret state of a deployment (`.flinger/<name>/`): where each piece lives,
and reading/serialising it.

    ca/ca.key, ca/ca.pem              the deployment CA (the key never leaves the client)
    state/tls/<server>/key.pem|cert.pem   each server's key and certificate
    state/secrets.json                per-server secret values: {name: {server: token}}
    state/split.json                  the current split: servers (share index order),
                                      threshold, commitments, each server's share
    state/secret                      the deployment secret itself, only with keep_secret
    overlay/<server>/                 what is sent to each server (derived from the above)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flinger.errors import FlingerError
from flinger.remote import shamir
from flinger.secrets.ca import CertifiedKey, load_certified_key

STATE_VERSION = 1


@dataclass(frozen=True)
class StatePaths:
    root: Path  # .flinger/<deployment>/

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    def server_key(self, server: str) -> Path:
        return self.tls_dir / server / "key.pem"

    def server_cert(self, server: str) -> Path:
        return self.tls_dir / server / "cert.pem"

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def split_file(self) -> Path:
        return self.state_dir / "split.json"

    @property
    def verifier_file(self) -> Path:
        """The deployment-wide verifier (public): every overlay's verifier.json is this file."""
        return self.state_dir / shamir.VERIFIER_FILE

    @property
    def secret_file(self) -> Path:
        return self.state_dir / "secret"

    @property
    def overlay_dir(self) -> Path:
        return self.root / "overlay"


@dataclass(frozen=True)
class SplitState:
    """One split of the deployment secret: server k of `servers` holds share index k + 1."""

    deployment: str
    threshold: int
    servers: tuple[str, ...]
    commitments: tuple[int, ...]
    shares: dict[str, int] = field(repr=False)
    fingerprint: str = ""

    def index_of(self, server: str) -> int:
        return self.servers.index(server) + 1

    def recover(self) -> int | None:
        """The secret, from `threshold` of the stored shares, when it matches the commitments."""
        try:
            points = [(self.index_of(s), self.shares[s]) for s in self.servers[: self.threshold]]
            secret = shamir.combine(points)
        except (KeyError, ValueError):
            return None
        return secret if shamir.check_secret(secret, self.commitments) else None

    def to_bytes(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "deployment": self.deployment,
            "threshold": self.threshold,
            "servers": list(self.servers),
            "commitments": [format(c, "x") for c in self.commitments],
            "shares": {s: format(v, "x") for s, v in self.shares.items()},
            "fingerprint": self.fingerprint,
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def _unreadable(path: Path, why: str) -> FlingerError:
    return FlingerError(
        f"{path}: {why}; restore it from a backup, or run `flinger overlay --rotate` "
        "to make new secrets for every server"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise _unreadable(path, f"cannot read ({e.strerror})") from None
    except ValueError:
        # The message of json's error quotes no content, but the file holds secrets: say less.
        raise _unreadable(path, "not valid JSON") from None


def load_split(path: Path) -> SplitState | None:
    if not path.exists():
        return None
    doc = _read_json(path)
    try:
        if doc["version"] != STATE_VERSION:
            raise _unreadable(path, f"unknown version (expected {STATE_VERSION})")
        servers = tuple(str(s) for s in doc["servers"])
        return SplitState(
            deployment=str(doc["deployment"]),
            threshold=int(doc["threshold"]),
            servers=servers,
            commitments=tuple(int(c, 16) for c in doc["commitments"]),
            shares={str(s): int(v, 16) for s, v in doc["shares"].items()},
            fingerprint=str(doc.get("fingerprint", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _unreadable(path, "malformed") from None


def load_secrets(path: Path) -> dict[str, dict[str, str]]:
    """{secret name: {server: token}}."""
    if not path.exists():
        return {}
    doc = _read_json(path)
    values = doc.get("secrets") if isinstance(doc, dict) else None
    if not isinstance(values, dict) or not all(
        isinstance(per, dict) and all(isinstance(v, str) for v in per.values()) for per in values.values()
    ):
        raise _unreadable(path, "malformed")
    return {str(name): {str(s): v for s, v in per.items()} for name, per in values.items()}


def secrets_to_bytes(values: dict[str, dict[str, str]]) -> bytes:
    doc = {"version": STATE_VERSION, "secrets": values}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def load_kept_secret(path: Path) -> int | None:
    """The deployment secret kept by an earlier `keep_secret` run, if any."""
    if not path.exists():
        return None
    try:
        value = int(path.read_text(encoding="ascii").strip(), 16)
    except (OSError, ValueError):
        raise _unreadable(path, "not a hexadecimal secret") from None
    if not 0 <= value < shamir.Q:
        raise _unreadable(path, "out of range")
    return value


def secret_to_bytes(secret: int) -> bytes:
    return (format(secret, "064x") + "\n").encode()


def load_ca(paths: StatePaths) -> CertifiedKey | None:
    """The deployment CA; None when there is none yet (FlingerError if it is damaged)."""
    if not paths.ca_key.exists() and not paths.ca_cert.exists():
        return None
    try:
        return load_certified_key(paths.ca_key, paths.ca_cert)
    except FlingerError as e:
        raise _unreadable(paths.ca_dir, f"the deployment CA is unusable ({e.message})") from None


def load_server_cert(paths: StatePaths, server: str) -> CertifiedKey | None:
    """A server's stored key + certificate, or None if absent or unusable (it is re-issued)."""
    key, cert = paths.server_key(server), paths.server_cert(server)
    if not key.exists() or not cert.exists():
        return None
    try:
        return load_certified_key(key, cert)
    except FlingerError:
        return None
