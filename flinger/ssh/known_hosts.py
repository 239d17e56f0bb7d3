"""OpenSSH known_hosts files as operators really have them: read tolerantly, only ever appended to.

A user's ~/.ssh/known_hosts holds comments, hashed names, `@cert-authority` and `@revoked`
lines and key types paramiko may not know. paramiko's own loader raises on the first marker
line, which made every connection fail. Here:
- plain and hashed entries are read as paramiko would;
- `@revoked` keys are refused everywhere, even when another line lists them;
- `@cert-authority` lines (host certificates) are not supported: skipped with a note;
- any other line paramiko cannot read is skipped with a note naming its line.
`trust` appends one line per new key and never rewrites, reorders or drops the user's lines;
replacing a changed key (`trust --replace`) removes only the lines of that host, keeping a
copy of the file as it was in `<file>.old` (as `ssh-keygen -R` does).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey


def host_pattern(addr: str, port: int) -> str:
    """The name a host is recorded under in known_hosts (OpenSSH's rule)."""
    return addr if port == 22 else f"[{addr}]:{port}"


@dataclass
class KnownHosts:
    """What a known_hosts file says: trusted keys, revoked keys, and the lines not understood."""

    path: Path
    keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    revoked: set[str] = field(default_factory=set)  # base64 key blobs
    notes: list[str] = field(default_factory=list)

    def lookup(self, addr: str, port: int) -> dict[str, paramiko.PKey]:
        """Key type -> key recorded for addr:port (revoked keys are never recorded here)."""
        entry = self.keys.lookup(host_pattern(addr, port))
        return dict(entry.items()) if entry else {}

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return key.get_base64() in self.revoked


def read(path: Path) -> KnownHosts:
    """Read `path` (a missing file is empty) without failing on any line."""
    known = KnownHosts(path)
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return known
    except OSError as exc:
        known.notes.append(f"{path}: cannot read ({exc.strerror or exc}); no host is known")
        return known
    cert_lines: list[int] = []
    entries: list[HostKeyEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            _marker_line(known, line, number, cert_lines)
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, ValueError, TypeError) as exc:
            known.notes.append(f"{path}:{number}: not a host key paramiko can read ({type(exc).__name__}): skipped")
            continue
        if entry is not None:  # else a key type paramiko does not know
            entries.append(entry)
    for entry in entries:  # a revoked key is never trusted, whatever line lists it
        if entry.key.get_base64() not in known.revoked:
            for name in entry.hostnames:
                known.keys.add(name, entry.key.get_name(), entry.key)
    if cert_lines:
        where = ", ".join(map(str, cert_lines[:5])) + (" ..." if len(cert_lines) > 5 else "")
        known.notes.append(
            f"{path}: @cert-authority lines ({where}) skipped: host certificates are not supported; "
            "such hosts need their own key recorded (flinger trust)"
        )
    return known


def _marker_line(known: KnownHosts, line: str, number: int, cert_lines: list[int]) -> None:
    """A line with a marker: a revoked key is kept (to refuse it), a CA line counted."""
    marker, _, rest = line.partition(" ")
    if marker == "@revoked":
        fields = rest.split()
        if len(fields) >= 3:
            known.revoked.add(fields[2])
        else:
            known.notes.append(f"{known.path}:{number}: @revoked line without a key: skipped")
    elif marker == "@cert-authority":
        cert_lines.append(number)
    else:
        known.notes.append(f"{known.path}:{number}: unknown marker {marker}: line skipped")


def _line_names(line: str, number: int) -> paramiko.HostKeys | None:
    """A one-line HostKeys for matching a line's (possibly hashed) names, else None."""
    stripped = line.strip()
    if not stripped or stripped.startswith(("#", "@")):
        return None
    try:
        entry = HostKeyEntry.from_line(stripped, number)
    except (InvalidHostKey, ValueError, TypeError):
        return None
    if entry is None:
        return None
    keys = paramiko.HostKeys()
    for name in entry.hostnames:
        keys.add(name, entry.key.get_name(), entry.key)
    return keys


def key_line(addr: str, port: int, key: paramiko.PKey) -> str:
    return f"{host_pattern(addr, port)} {key.get_name()} {key.get_base64()}"


def append(path: Path, addr: str, port: int, key: paramiko.PKey) -> bool:
    """Append the key of addr:port unless it is recorded already; True when the file changed."""
    if read(path).lookup(addr, port).get(key.get_name()) == key:
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = not path.exists()
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(key_line(addr, port, key).encode() + b"\n")
    if fresh:
        os.chmod(path, 0o600)
    return True


def replace(path: Path, addr: str, port: int, key: paramiko.PKey) -> bool:
    """Drop the lines naming addr:port (the file as it was goes to <file>.old), append `key`."""
    name = host_pattern(addr, port)
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)
    except FileNotFoundError:
        return append(path, addr, port, key)
    kept = []
    for number, line in enumerate(lines, start=1):
        names = _line_names(line, number)
        if names is not None and names.lookup(name):
            continue
        kept.append(line)
    if len(kept) == len(lines):
        return append(path, addr, port, key)
    shutil.copy2(path, path.with_name(path.name + ".old"))
    tmp = path.with_name(path.name + ".flinger-tmp")
    tmp.write_text("".join(kept))
    shutil.copymode(path, tmp)
    os.replace(tmp, path)
    append(path, addr, port, key)
    return True
