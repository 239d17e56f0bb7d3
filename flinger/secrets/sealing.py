"""Sealing secrets at rest with age (the pyrage binding): who the state is encrypted to
(recipients: SSH ed25519/RSA public keys or age keys) and what decrypts it (the operator's
identity).

The identity is the file named by `FLINGER_IDENTITY` (`--identity`) alone, else the
operator's defaults: `~/.ssh/id_ed25519`, then `$XDG_CONFIG_HOME/flinger/identity.txt`
(`~/.config/flinger/identity.txt`), an age identity flinger makes on first use when the
deployment names no recipients. An SSH key with a passphrase is asked for on a terminal and
decrypted in memory only. Nothing here prints, logs or raises a key's bytes.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from pyrage import ssh as age_ssh
from pyrage import x25519

from flinger.errors import UsageError
from flinger.secrets.private_files import private_dir, write_private

IDENTITY_ENV = "FLINGER_IDENTITY"
_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")


class SealError(UsageError):
    """The sealed state cannot be opened or written as asked (exit 2, nothing touched)."""


class DamagedState(SealError):
    """A sealed file that is truncated, altered or not what the index recorded."""


@dataclass(frozen=True)
class Recipient:
    """One public key the state is encrypted to."""

    text: str  # as written: "ssh-ed25519 AAAA… alice" or "age1…"
    key: Any = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """How the operator recognises it: its comment and fingerprint (as ssh-keygen -l), or
        an age key shortened."""
        parts = self.text.split()
        if parts[0] in _SSH_TYPES:
            blob = base64.b64decode(parts[1])
            fp = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
            comment = " ".join(parts[2:])
            return f"{comment} (SHA256:{fp})" if comment else f"SHA256:{fp}"
        return f"{parts[0][:12]}…{parts[0][-6:]}"

    @property
    def canonical(self) -> str:
        """The key without its comment: what identifies a recipient."""
        parts = self.text.split() or [""]
        return " ".join(parts[:2]) if parts[0] in _SSH_TYPES else parts[0]


def parse_recipient(text: str) -> Recipient:
    """A recipient from its text; ValueError saying why not."""
    parts = text.strip().split()
    if not parts:
        raise ValueError("an empty recipient")
    try:
        if parts[0] in _SSH_TYPES:
            if len(parts) < 2:
                raise ValueError("no key after the key type")
            return Recipient(text.strip(), age_ssh.Recipient.from_str(" ".join(parts[:2])))
        if parts[0].startswith("age1") and len(parts) == 1:
            return Recipient(parts[0], x25519.Recipient.from_str(parts[0]))
    except pyrage.RecipientError:
        raise ValueError(f"not a valid {parts[0].split('1')[0]} public key") from None
    raise ValueError('expected an SSH ed25519/RSA public key ("ssh-ed25519 AAAA… comment") or an age key ("age1…")')


def seal(data: bytes, recipients: list[Recipient]) -> bytes:
    return bytes(pyrage.encrypt(data, [r.key for r in recipients]))


class _Locked(Exception):
    """An SSH key with a passphrase, not asked for yet."""


@dataclass
class Identity:
    """An identity file: where it is, and a loader that reads it when it is first needed
    (`ask`: whether it may ask for a passphrase)."""

    path: Path
    load: Callable[[bool], Any] = field(repr=False)
    _key: Any = field(default=None, repr=False)
    _locked: bool = False  # seen to need a passphrase not asked for yet

    def key(self, *, ask: bool = True) -> Any:
        if self._key is None:
            if self._locked and not ask:
                raise _Locked
            try:
                self._key = self.load(ask)
            except _Locked:
                self._locked = True
                raise
        return self._key


def _ssh_identity(path: Path) -> Callable[[bool], Any]:
    def load(ask: bool) -> Any:
        data = _read(path)
        try:
            return age_ssh.Identity.from_buffer(data)
        except pyrage.IdentityError:
            if not ask:
                raise _Locked from None
        return age_ssh.Identity.from_buffer(_unlocked(path, data))

    return load


def _unlocked(path: Path, data: bytes) -> bytes:
    """An SSH private key with a passphrase, decrypted in memory (the passphrase asked for on
    a terminal), as an unencrypted OpenSSH key for age."""
    from cryptography.hazmat.primitives import serialization

    if not sys.stdin.isatty():
        raise SealError(f"{path}: the key has a passphrase and there is no terminal to ask for it (set {IDENTITY_ENV})")
    secret = getpass.getpass(f"passphrase for {path}: ").encode()
    try:
        key = serialization.load_ssh_private_key(data, password=secret)
    except (ValueError, TypeError):
        raise SealError(f"{path}: wrong passphrase, or not an SSH private key") from None
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _age_identity(path: Path) -> Callable[[bool], Any]:
    def load(ask: bool = False) -> Any:
        lines = [ln.strip() for ln in _read(path).decode("utf-8", "replace").splitlines()]
        keys = [ln for ln in lines if ln.startswith("AGE-SECRET-KEY-")]
        try:
            return x25519.Identity.from_str(keys[0])
        except (IndexError, pyrage.IdentityError):
            raise SealError(f"{path}: not an age identity (no valid AGE-SECRET-KEY- line)") from None

    return load


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SealError(f"{path}: cannot read the identity ({e.strerror})") from None


def identity_at(path: Path) -> Identity:
    """The identity in a file: an SSH private key or an age identity, by its first line."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise SealError(f"{path}: cannot read the identity ({e.strerror})") from None
    if b"PRIVATE KEY" in head:
        return Identity(path, _ssh_identity(path))
    return Identity(path, _age_identity(path))


def own_identity_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flinger" / "identity.txt"


class Keyring:
    """The operator's identities, found once and read when first needed."""

    def __init__(self, explicit: str | None = None) -> None:
        self.explicit = explicit if explicit is not None else os.environ.get(IDENTITY_ENV) or None
        self.notes: list[str] = []
        self._found: list[Identity] | None = None  # once: a key read (a passphrase asked) once a run

    def places(self) -> list[Path]:
        if self.explicit:
            return [Path(self.explicit).expanduser()]
        return [Path.home() / ".ssh" / "id_ed25519", own_identity_path()]

    def identities(self) -> list[Identity]:
        if self._found is None:
            if self.explicit:
                path = self.places()[0]
                if not path.is_file():
                    raise SealError(f"{IDENTITY_ENV}={self.explicit}: no such identity file")
                self._found = [identity_at(path)]
            else:
                self._found = [identity_at(p) for p in self.places() if p.is_file()]
        return self._found

    def own_recipient(self) -> Recipient:
        """The recipient of this operator's flinger age identity, made (0600) on first use."""
        path = own_identity_path()
        if not path.exists():
            private_dir(path.parent)
            ident = x25519.Identity.generate()
            public = str(ident.to_public())
            write_private(path, f"# flinger identity\n# public key: {public}\n{ident}\n".encode())
            self._found = None  # a new identity among them
            self.notes.append(
                f"made an age identity for you in {path} (0600); the state is encrypted to it. To share the "
                f"deployment with teammates, list their public keys and yours ({public}) in [state] recipients"
            )
        ident = _age_identity(path)(False)
        return parse_recipient(str(ident.to_public()))

    def unseal(self, data: bytes, where: str, recipients: list[str]) -> bytes:
        """The clear bytes of a sealed file; SealError naming who can open it when no identity can."""
        found = self.identities()
        if not found:
            raise SealError(
                f"no identity to open {where}: looked for {', '.join(str(p) for p in self.places())}; "
                f"set {IDENTITY_ENV} or pass --identity"
            )
        try:
            return self._decrypt(data, found)
        except pyrage.DecryptError as e:
            if "No matching keys" in str(e):
                raise SealError(
                    f"{where}: none of your identities ({', '.join(str(i.path) for i in found)}) opens it; it is "
                    f"encrypted to {'; '.join(recipients) or 'recipients not on record'}"
                ) from None
            raise DamagedState(f"{where}: damaged (cannot be decrypted); restore it (git checkout) or rotate") from None

    @staticmethod
    def _decrypt(data: bytes, found: list[Identity]) -> bytes:
        """With the keys that open without a passphrase first; those that need one only if
        the others do not open it (asked for then)."""
        keys, locked = [], []
        for ident in found:
            try:
                keys.append(ident.key(ask=False))
            except _Locked:
                locked.append(ident)
        if keys:
            try:
                return bytes(pyrage.decrypt(data, keys))
            except pyrage.DecryptError as e:
                if not locked or "No matching keys" not in str(e):
                    raise
        return bytes(pyrage.decrypt(data, [ident.key(ask=True) for ident in locked]))
