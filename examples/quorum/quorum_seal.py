"""The seal: this node's own share, the valid shares collected from peers, and the recovered
secret once `threshold` of them are held. Thread-safe; nothing here ever returns the secret
or a peer's share."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import shamir  # shipped next to this file (a copy of flinger/remote/shamir.py)


class ShareError(Exception):
    """Our own share file is unusable (one-line message, never the share itself)."""


def _as_int(value: object) -> int:
    """A share or commitment as an integer, from the hex text of share.json (or already an int)."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16)
    raise ValueError("not a number")


def verifier_fingerprint(verifier: dict) -> str:
    """SHA-256 over the normalised verifier (group, generator, commitments): two nodes with the
    same fingerprint hold shares of the same secret."""
    parts = [str(verifier.get("group", "")), "{:x}".format(_as_int(verifier["generator"]))]
    parts.extend(f"{_as_int(c):x}" for c in verifier["commitments"])
    return hashlib.sha256("|".join(parts).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class OwnShare:
    deployment: str | None
    threshold: int
    index: int
    value: int = field(repr=False)
    verifier: dict = field(repr=False)


def load_own_share(path: str) -> OwnShare:
    """Read share.json (through shamir.load_share) and check the share against its verifier."""
    try:
        # ValueError from load_share names the file and the field, never a value
        doc = shamir.load_share(path)
    except ValueError as e:
        raise ShareError(str(e)) from None
    try:
        index = int(doc["index"])
        value = _as_int(doc["share"])
        verifier = doc["verifier"]
        threshold = int(doc["threshold"])
        commitments = verifier["commitments"]
    except (KeyError, TypeError, ValueError) as e:
        # the message names the field, never its value
        raise ShareError(f"share file {path} is malformed ({type(e).__name__})") from None
    if len(commitments) != threshold:
        raise ShareError(f"share file {path}: {len(commitments)} commitments"
                         f" for threshold {threshold}")
    if not shamir.verify_share(index, value, commitments):
        raise ShareError(f"share file {path}: the share does not verify against its commitments")
    deployment = doc.get("deployment")
    return OwnShare(deployment=deployment if isinstance(deployment, str) else None,
                    threshold=threshold, index=index, value=value, verifier=verifier)


class Seal:
    def __init__(self, name: str, own: OwnShare) -> None:
        self.name = name
        self.threshold = own.threshold
        self._own = own
        self._commitments = own.verifier["commitments"]
        self.fingerprint = verifier_fingerprint(own.verifier)
        self._lock = threading.Lock()
        self._shares = {own.index: own.value}  # index -> value, our own included
        self._holders = {}  # type: dict[str, int]  # peer name -> index of its share
        self._rejected = {}  # type: dict[str, str]  # peer name -> why its last share was refused
        self._secret = None  # type: int | None

    @property
    def unsealed(self) -> bool:
        with self._lock:
            return self._secret is not None

    def has_share_of(self, peer_name: str) -> bool:
        with self._lock:
            return peer_name in self._holders

    def own_share_payload(self) -> dict:
        """The answer to GET /share."""
        return {
            "name": self.name,
            "deployment": self._own.deployment,
            "index": self._own.index,
            "share": f"{self._own.value:x}",
            "verifier_fingerprint": self.fingerprint,
        }

    def status(self) -> dict:
        """The answer to GET /status: counts and names only."""
        with self._lock:
            return {
                "name": self.name,
                "state": "unsealed" if self._secret is not None else "sealed",
                "shares": len(self._shares),
                "threshold": self.threshold,
                "peers_seen": sorted(self._holders),
                "peers_rejected": sorted(self._rejected),
                "verifier_fingerprint": self.fingerprint,
            }

    def offer(self, peer_name: str, payload: object) -> str:
        """Consider a peer's answer to /share. Returns "accepted", "unsealed" (accepted and the
        secret is now recovered), "held" (already counted), or "rejected: <why>"."""
        reason = self._problem(payload)
        with self._lock:
            if reason is not None:
                self._rejected[peer_name] = reason
                return "rejected: " + reason
            assert isinstance(payload, dict)
            index, value = int(payload["index"]), _as_int(payload["share"])
            if peer_name in self._holders:
                return "held"
            if index in self._shares:
                # two nodes claiming one index: count it once, and say so
                reason = f"index {index} is already held"
                self._rejected[peer_name] = reason
                return "rejected: " + reason
            self._shares[index] = value
            self._holders[peer_name] = index
            self._rejected.pop(peer_name, None)
            if self._secret is None and self._unseal_locked():
                return "unsealed"
            return "accepted"

    def try_unseal(self) -> bool:
        """Recover the secret if enough shares are held (a threshold of one needs no peer)."""
        with self._lock:
            return self._unseal_locked()

    def _unseal_locked(self) -> bool:
        if self._secret is not None:
            return True
        if len(self._shares) < self.threshold:
            return False
        secret = shamir.combine(sorted(self._shares.items()))
        # every share verified on its own, so this only fails if the commitments lie
        if not shamir.check_secret(secret, self._commitments):
            return False
        self._secret = secret
        return True

    def _problem(self, payload: object) -> str | None:
        """Why a peer's answer cannot be counted, or None if its share verifies."""
        if not isinstance(payload, dict):
            return "answer is not a JSON object"
        if payload.get("verifier_fingerprint") != self.fingerprint:
            return "different verifier (another deployment or another secret)"
        if self._own.deployment is not None and payload.get("deployment") not in (
                None, self._own.deployment):
            return "different deployment"
        raw_index = payload.get("index")
        if not isinstance(raw_index, int) or isinstance(raw_index, bool) or raw_index < 1:
            return "bad share index"
        try:
            value = _as_int(payload.get("share"))
        except ValueError:
            return "share is not a hex number"
        if raw_index == self._own.index:
            return "share has our own index"
        if not shamir.verify_share(raw_index, value, self._commitments):
            return "share does not verify against the commitments"
        return None
