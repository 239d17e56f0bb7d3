"""OpenSSH known_hosts files as operators really have them: read as OpenSSH reads them, only
ever appended to.

A line is `[marker] patterns keytype base64 [comment]`: patterns are a comma list of names,
wildcards (`*`, `?`), negations (`!pat`) and hashed names (`|1|salt|hmac`), matched as
OpenSSH's match_hostname does; the markers `@cert-authority` (a CA whose host certificates
are trusted for those names) and `@revoked` (a key refused everywhere) are understood. Lines
that are none of these are skipped with a note. OpenSSH does the verifying; this module
answers "is anything known for this name" before a connection (the pre-check), finds the keys
a host needs to reach others, and writes `trust`'s lines: one appended per new key (hashed
when HashKnownHosts says so), never a rewrite, reorder or drop of the user's lines; replacing
a changed key (`trust --replace`) removes only the plain lines naming that host, keeping the
file as it was in `<file>.old` (as `ssh-keygen -R` does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path


def host_pattern(addr: str, port: int) -> str:
    """The name a host is recorded under in known_hosts (OpenSSH's rule)."""
    return addr if port == 22 else f"[{addr}]:{port}"


def fingerprint_of(blob: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a base64 key blob."""
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Entry:
    marker: str | None  # None, "@cert-authority" or "@revoked"
    patterns: str
    kind: str
    blob: str
    line: int

    def matches(self, name: str) -> bool:
        return match_patterns(self.patterns, name)


@dataclass
class KnownHosts:
    """What known_hosts files say: their entries, and the lines not understood."""

    paths: tuple[Path, ...]
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def revoked(self) -> set[str]:
        return {e.blob for e in self.entries if e.marker == "@revoked"}

    def keys_for(self, name: str) -> dict[str, str]:
        """Key type -> blob of the plain keys recorded for `name` (never a revoked one)."""
        revoked = self.revoked
        return {e.kind: e.blob for e in self.entries if e.marker is None and e.blob not in revoked and e.matches(name)}

    def authorities_for(self, name: str) -> list[Entry]:
        """The `@cert-authority` lines that vouch for `name`."""
        revoked = self.revoked
        return [e for e in self.entries if e.marker == "@cert-authority" and e.blob not in revoked and e.matches(name)]

    def knows(self, name: str) -> bool:
        """A key or a certificate authority is recorded for `name`."""
        return bool(self.keys_for(name) or self.authorities_for(name))

    def is_revoked(self, blob: str) -> bool:
        return blob in self.revoked


def read(*paths: Path) -> KnownHosts:
    """Read the files (a missing one is empty) without failing on any line."""
    known = KnownHosts(paths)
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            known.notes.append(f"{path}: cannot read ({exc.strerror or exc}); nothing in it is known")
            continue
        for number, raw in enumerate(text.splitlines(), start=1):
            entry = parse_line(raw, number)
            if entry is None and raw.strip() and not raw.strip().startswith("#"):
                known.notes.append(f"{path}:{number}: not a known_hosts line: skipped")
            elif entry is not None:
                known.entries.append(entry)
    return known


def parse_line(raw: str, number: int) -> Entry | None:
    fields = raw.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = None
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
        if marker not in ("@cert-authority", "@revoked"):
            return None
    if len(fields) < 3 or not _is_key(fields[1], fields[2]):
        return None
    return Entry(marker, fields[0], fields[1], fields[2], number)


def _is_key(kind: str, blob: str) -> bool:
    """A key blob names its own type first (a string: 4-byte length, then the name)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(raw[:4], "big")
    return raw[4 : 4 + size] == kind.encode()


def match_patterns(patterns: str, name: str) -> bool:
    """OpenSSH's match_hostname: a negated match wins; else any positive match."""
    name = name.lower()
    if patterns.startswith("|1|"):
        return _hashed_match(patterns, name)
    matched = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """An OpenSSH pattern (only * and ? are special) as a regular expression."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _hashed_match(patterns: str, name: str) -> bool:
    _, _, salt64, digest64 = ([*patterns.split("|"), "", ""])[:4]
    try:
        salt, digest = base64.b64decode(salt64), base64.b64decode(digest64)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def hashed_name(name: str) -> str:
    """`name` as HashKnownHosts writes it: |1|base64(salt)|base64(HMAC-SHA1(salt, name))."""
    salt = secrets.token_bytes(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def key_line(name: str, kind: str, blob: str, *, hashed: bool = False) -> str:
    return f"{hashed_name(name) if hashed else name} {kind} {blob}"


def append(path: Path, name: str, kind: str, blob: str, *, hashed: bool = False) -> bool:
    """Append the key of `name` unless it is recorded already; True when the file changed."""
    if read(path).keys_for(name).get(kind) == blob:
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = not path.exists()
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(key_line(name, kind, blob, hashed=hashed).encode() + b"\n")
    if fresh:
        os.chmod(path, 0o600)
    return True


def replace(path: Path, name: str, kind: str, blob: str, *, hashed: bool = False) -> bool:
    """Drop the plain lines naming `name` (the file as it was goes to <file>.old), append the key."""
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)
    except FileNotFoundError:
        return append(path, name, kind, blob, hashed=hashed)
    kept = []
    for number, line in enumerate(lines, start=1):
        entry = parse_line(line, number)
        if entry is not None and entry.marker is None and entry.matches(name):
            continue
        kept.append(line)
    if len(kept) == len(lines):
        return append(path, name, kind, blob, hashed=hashed)
    shutil.copy2(path, path.with_name(path.name + ".old"))
    tmp = path.with_name(path.name + ".flinger-tmp")
    tmp.write_text("".join(kept))
    shutil.copymode(path, tmp)
    os.replace(tmp, path)
    append(path, name, kind, blob, hashed=hashed)
    return True
