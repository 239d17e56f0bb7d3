"""The pieces of a deployment's secret state, by logical name, and reading/serialising
them. Where and how each is stored (sealed or clear) is the store's (store.py).

    ca/ca.key, ca/ca.pem              the deployment CA (the key never leaves the client)
    state/tls/<server>/key.pem|cert.pem   each server's key and certificate
    state/secrets.json                per-server secret values: {name: {server: token}}
    state/split.json                  the current split: servers (share index order),
                                      threshold, commitments, each server's share
    state/secret                      the deployment secret itself, only with keep_secret
    state/verifier.json               the deployment-wide verifier (public)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flinger.errors import FlingerError
from flinger.remote import shamir

if TYPE_CHECKING:  # the CA's x509, loaded only when a certificate is read
    from flinger.secrets.ca import CertifiedKey

STATE_VERSION = 1


CA_KEY = "ca/ca.key"
CA_CERT = "ca/ca.pem"
SECRETS = "state/secrets.json"
SPLIT = "state/split.json"
SECRET = "state/secret"  # noqa: S105 (a file name)
VERIFIER = "state/" + shamir.VERIFIER_FILE
GENERATION = "state/generation.json"


def server_key(server: str) -> str:
    return f"state/tls/{server}/key.pem"


def server_cert(server: str) -> str:
    return f"state/tls/{server}/cert.pem"


class StateReader(Protocol):
    """What the loaders read from: the store (store.py), or a test's dict."""

    def read(self, rel: str) -> bytes | None: ...

    def where(self, rel: str) -> str: ...


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


def _unreadable(where: str, why: str) -> FlingerError:
    return FlingerError(
        f"{where}: {why}; restore it (git checkout) from the last good state, or run `flinger overlay --rotate` "
        "to make new secrets for every server"
    )


def _read_json(state: StateReader, rel: str) -> Any:
    data = state.read(rel)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        # The message of json's error quotes no content, but the file holds secrets: say less.
        raise _unreadable(state.where(rel), "not valid JSON") from None


def load_split(state: StateReader) -> SplitState | None:
    doc = _read_json(state, SPLIT)
    if doc is None:
        return None
    where = state.where(SPLIT)
    try:
        if doc["version"] != STATE_VERSION:
            raise _unreadable(where, f"unknown version (expected {STATE_VERSION})")
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
        raise _unreadable(where, "malformed") from None


def load_secrets(state: StateReader) -> dict[str, dict[str, str]]:
    """{secret name: {server: token}}."""
    doc = _read_json(state, SECRETS)
    if doc is None:
        return {}
    values = doc.get("secrets") if isinstance(doc, dict) else None
    if not isinstance(values, dict) or not all(
        isinstance(per, dict) and all(isinstance(v, str) for v in per.values()) for per in values.values()
    ):
        raise _unreadable(state.where(SECRETS), "malformed")
    return {str(name): {str(s): v for s, v in per.items()} for name, per in values.items()}


def secrets_to_bytes(values: dict[str, dict[str, str]]) -> bytes:
    doc = {"version": STATE_VERSION, "secrets": values}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def load_kept_secret(state: StateReader) -> int | None:
    """The deployment secret kept by an earlier `keep_secret` run, if any."""
    data = state.read(SECRET)
    if data is None:
        return None
    try:
        value = int(data.decode("ascii").strip(), 16)
    except (UnicodeDecodeError, ValueError):
        raise _unreadable(state.where(SECRET), "not a hexadecimal secret") from None
    if not 0 <= value < shamir.Q:
        raise _unreadable(state.where(SECRET), "out of range")
    return value


def secret_to_bytes(secret: int) -> bytes:
    return (format(secret, "064x") + "\n").encode()


def load_ca(state: StateReader) -> CertifiedKey | None:
    """The deployment CA; None when there is none yet (FlingerError if it is damaged)."""
    from flinger.secrets.ca import certified_key_from

    key, cert = state.read(CA_KEY), state.read(CA_CERT)
    if key is None and cert is None:
        return None
    where = state.where(CA_KEY)
    if key is None or cert is None:
        raise _unreadable(where, "the deployment CA is incomplete")
    try:
        return certified_key_from(key, cert, key_what=where, cert_what=state.where(CA_CERT))
    except FlingerError as e:
        raise _unreadable(where, f"the deployment CA is unusable ({e.message})") from None


def load_server_cert(state: StateReader, server: str) -> CertifiedKey | None:
    """A server's stored key + certificate, or None if absent or unusable (it is re-issued)."""
    from flinger.secrets.ca import certified_key_from

    key, cert = state.read(server_key(server)), state.read(server_cert(server))
    if key is None or cert is None:
        return None
    try:
        return certified_key_from(key, cert, key_what=server_key(server), cert_what=server_cert(server))
    except FlingerError:
        return None
