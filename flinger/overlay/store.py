"""The deployment's state on disk (`.flinger/<deployment>/`), sealed with age to its
recipients, laid out to be committed beside deploy.toml:

    state/index.json              clear: recipients, a serial, the SHA-256 of every stored file,
                                  each server's overlay file names (what --dry-run shows)
    ca/ca.key.age                 the deployment CA's key, sealed; ca/ca.pem in clear
    state/secrets.json.age        per-server secret values, sealed
    state/split.json.age          the threshold split and every share, sealed
    state/secret.age              the deployment secret, only with keep_secret
    state/tls/<server>/key.pem.age    each server's TLS key, sealed; cert.pem in clear
    state/verifier.json, state/generation.json    public, in clear
    overlay/<server>.age          each server's whole overlay, one sealed, compressed bundle

Files are written only when their clear content changed (age output is randomised: a
re-run that changes nothing rewrites nothing), each atomically; `index.next.json` names the
write in progress, so that an interrupted write is finished or undone on the next open, and
a file that matches neither is refused (DamagedState) rather than used. Two operators who
changed the state independently get a merge conflict in index.json (its `write` line is
random per write), which is refused, never merged. Logical names (`ca/ca.key`) are what the
rest of flinger reads and writes; which of them are sealed is decided here.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flinger.remote import shamir
from flinger.secrets.private_files import private_dir, remove_path, write_private, write_private_all
from flinger.secrets.sealing import DamagedState, Keyring, Recipient, SealError, parse_recipient, seal

if TYPE_CHECKING:
    from flinger.topology.model import Topology

VERSION = 1
INDEX = "state/index.json"
NEXT = "state/index.next.json"
VERIFIER = "state/" + shamir.VERIFIER_FILE
_SEALED_NAMES = {"ca/ca.key", "state/secrets.json", "state/split.json", "state/secret"}
_VERIFIER_REF = -1  # a bundle entry that is the deployment's one verifier (stored once)
_IGNORED = "logs/\nreleases/\ntool/\nlocal-hosts/\nmade/\n"  # per client, never committed


def is_sealed(rel: str) -> bool:
    return rel in _SEALED_NAMES or (rel.startswith("state/tls/") and rel.endswith("/key.pem"))


def stored_name(rel: str) -> str:
    return rel + ".age" if is_sealed(rel) else rel


def overlay_name(server: str) -> str:
    return f"overlay/{server}.age"


@dataclass
class Index:
    serial: int = 0
    recipients: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # stored name: sha256 of its bytes
    overlays: dict[str, list[str]] = field(default_factory=dict)
    made_from: str | None = None  # the digest of what the overlays were rendered from (provenance)

    def to_bytes(self) -> bytes:
        doc = {
            "version": VERSION,
            "serial": self.serial,
            "write": secrets.token_hex(8),  # two independent writes always conflict in git
            "made_from": self.made_from,
            "recipients": self.recipients,
            "files": dict(sorted(self.files.items())),
            "overlays": dict(sorted(self.overlays.items())),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def _parse_index(path: Path) -> Index:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DamagedState(f"{path}: unreadable ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None
    if "<<<<<<<" in text or ">>>>>>>" in text:
        raise SealError(
            f"{path}: a merge conflict: two operators changed the deployment's state independently; keep one "
            "side of the whole .flinger directory (git checkout --ours or --theirs), then run flinger overlay"
        )
    try:
        doc = json.loads(text)
        if doc["version"] != VERSION:
            raise ValueError
        return Index(
            serial=int(doc["serial"]),
            recipients=[str(r) for r in doc["recipients"]],
            files={str(k): str(v) for k, v in doc["files"].items()},
            overlays={str(k): [str(r) for r in v] for k, v in doc["overlays"].items()},
            made_from=str(doc["made_from"]) if doc.get("made_from") else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedState(f"{path}: malformed; restore it (git checkout) from the last good state") from None


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _matches(root: Path, index: Index) -> bool:
    return all(_digest(root / name) == digest for name, digest in index.files.items())


def read_index(root: Path) -> Index | None:
    """The index (no identity needed); an interrupted write finished or undone first."""
    path, nxt = root / INDEX, root / NEXT
    if nxt.exists():
        pending = _parse_index(nxt)
        if _matches(root, pending):
            os.replace(nxt, path)
        elif path.exists() and _matches(root, _parse_index(path)):
            nxt.unlink()
        else:
            raise DamagedState(f"{root}: a write of the state was interrupted and its files match no index")
    return _parse_index(path) if path.exists() else None


def encode_bundle(files: dict[str, bytes], verifier: bytes | None) -> bytes:
    """An overlay as one compressed blob: a JSON header line [[rel, length], ...], then the bytes."""
    header: list[list[Any]] = []
    parts: list[bytes] = []
    for rel, data in sorted(files.items()):
        if rel == shamir.VERIFIER_FILE and data == verifier:
            header.append([rel, _VERIFIER_REF])
            continue
        header.append([rel, len(data)])
        parts.append(data)
    return zlib.compress(json.dumps(header).encode() + b"\n" + b"".join(parts), 6)


def decode_bundle(blob: bytes, verifier: bytes | None, where: str) -> dict[str, bytes]:
    try:
        raw = zlib.decompress(blob)
        head, _, body = raw.partition(b"\n")
        files: dict[str, bytes] = {}
        at = 0
        for rel, size in json.loads(head):
            if size == _VERIFIER_REF:
                if verifier is None:
                    raise ValueError
                files[str(rel)] = verifier
                continue
            files[str(rel)] = body[at : at + int(size)]
            at += int(size)
        if at != len(body):
            raise ValueError
        return files
    except (zlib.error, ValueError, TypeError):
        raise DamagedState(f"{where}: damaged (not an overlay bundle)") from None


class StateStore:
    """The sealed state of one deployment: reads (decrypting when first needed, checking every
    file against the index) and one commit of a whole new state."""

    def __init__(self, root: Path, recipients: list[Recipient], keyring: Keyring) -> None:
        self.root = root
        self.recipients = recipients
        self.keyring = keyring
        self.index = read_index(root)
        self.notes: list[str] = []
        self._clear: dict[str, bytes | None] = {}
        self._overlays: dict[str, dict[str, bytes] | None] = {}

    # reading

    def where(self, rel: str) -> str:
        return str(self.root / stored_name(rel))

    def _stored(self, name: str) -> bytes | None:
        if self.index is None or name not in self.index.files:
            return None
        path = self.root / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DamagedState(f"{path}: missing or unreadable ({e.strerror}); restore it (git checkout)") from None
        if hashlib.sha256(data).hexdigest() != self.index.files[name]:
            raise DamagedState(
                f"{path}: not what state/index.json recorded (altered or truncated); restore it (git checkout), "
                "or run `flinger overlay --rotate` to make new secrets for every server"
            )
        return data

    def _unseal(self, data: bytes, where: str) -> bytes:
        labels = self.index.recipients if self.index is not None else []
        return self.keyring.unseal(data, where, [_label_of(t) for t in labels])

    def read(self, rel: str) -> bytes | None:
        """A state file's clear bytes, or None if the state has none."""
        if rel not in self._clear:
            data = self._stored(stored_name(rel))
            if data is not None and is_sealed(rel):
                data = self._unseal(data, self.where(rel))
            self._clear[rel] = data
        return self._clear[rel]

    def overlay(self, server: str) -> dict[str, bytes] | None:
        """One server's overlay files, or None if it has none."""
        if server not in self._overlays:
            data = self._stored(overlay_name(server))
            where = str(self.root / overlay_name(server))
            self._overlays[server] = (
                None if data is None else decode_bundle(self._unseal(data, where), self.read(VERIFIER), where)
            )
        return self._overlays[server]

    def overlay_names(self) -> dict[str, list[str]]:
        return self.index.overlays if self.index is not None else {}

    # writing

    def commit(
        self, state: dict[str, bytes], overlays: dict[str, dict[str, bytes]], made_from: str | None = None
    ) -> dict[str, list[str]]:
        """Make `state` (every state file, by logical name) and `overlays` (every server's) the
        whole stored state (`made_from`: what the overlays were rendered from, else as
        recorded); returns, per server, the overlay files that are new or changed."""
        verifier = state.get(VERIFIER)
        writes = {stored_name(rel): self._stored_form(rel, data) for rel, data in state.items()}
        written: dict[str, list[str]] = {}
        for server, files in overlays.items():
            old = self._old_overlay(server)
            written[server] = sorted(rel for rel, data in files.items() if old is None or old.get(rel) != data)
            kept = self._stored(overlay_name(server)) if old == files else None
            writes[overlay_name(server)] = kept or seal(encode_bundle(files, verifier), self.recipients)
        index = self._index_for(writes, overlays)
        if made_from is not None:
            index.made_from = made_from
        if self.index is None or (self.index.files, self.index.overlays, self.index.made_from) != (
            index.files,
            index.overlays,
            index.made_from,
        ):
            self._write(writes, index)
        self._clear = {rel: state.get(rel) for rel in set(self._clear) | set(state)}
        self._overlays = dict(overlays)
        return written

    def _index_for(self, writes: dict[str, bytes], overlays: dict[str, dict[str, bytes]]) -> Index:
        return Index(
            serial=(self.index.serial if self.index is not None else 0) + 1,
            recipients=[r.text for r in self.recipients],
            files={name: hashlib.sha256(data).hexdigest() for name, data in writes.items()},
            overlays={s: sorted(f) for s, f in overlays.items()},
            made_from=self.index.made_from if self.index is not None else None,
        )

    def contents(self) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
        """Everything stored, opened: every state file by logical name, every server's overlay."""
        if self.index is None:
            return {}, {}
        logical = [n.removesuffix(".age") for n in self.index.files if not n.startswith("overlay/")]
        state = {rel: data for rel in logical if (data := self.read(rel)) is not None}
        overlays = {s: files for s in self.index.overlays if (files := self.overlay(s)) is not None}
        return state, overlays

    def replace(self, rel: str, data: bytes) -> None:
        """Change one state file, keeping everything else (overlays included) as it is."""
        state, overlays = self.contents()
        self.commit({**state, rel: data}, overlays)

    def _has_overlay(self, server: str) -> bool:
        return self.index is not None and overlay_name(server) in self.index.files

    def _old_overlay(self, server: str) -> dict[str, bytes] | None:
        """What a server's stored overlay holds; None when it has none or it is damaged (it is
        made again from the state)."""
        try:
            return self.overlay(server) if self._has_overlay(server) else None
        except DamagedState:
            return None

    def _stored_form(self, rel: str, data: bytes) -> bytes:
        """What goes on disk for `rel`: the bytes already there when the clear content is the same."""
        name = stored_name(rel)
        if self.index is not None and name in self.index.files:
            try:
                if self.read(rel) == data:
                    return self._stored(name) or data
            except DamagedState:
                pass  # replaced by what was planned without it (overlay --rotate)
        return seal(data, self.recipients) if is_sealed(rel) else data

    def _write(self, writes: dict[str, bytes], index: Index) -> None:
        private_dir(self.root.parent)  # .flinger/
        private_dir(self.root)
        for sub in ("ca", "state", "overlay"):
            private_dir(self.root / sub)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            write_private(ignore, _IGNORED.encode())
        write_private(self.root / NEXT, index.to_bytes())
        write_private_all((self.root / name, data) for name, data in writes.items())
        old = set(self.index.files) if self.index is not None else set()
        for name in old - set(writes):
            remove_path(self.root / name)
        _prune_empty(self.root / "state" / "tls")
        os.replace(self.root / NEXT, self.root / INDEX)
        self.index = index

    # recipients

    def rewrap(self) -> list[str]:
        """Re-encrypt everything sealed to the wanted recipients when they differ from the ones
        on record; notes saying who was added and removed."""
        if self.index is None:
            return []
        before = {_recipient(t).canonical: t for t in self.index.recipients}
        after = {r.canonical: r.text for r in self.recipients}
        if set(before) == set(after):
            return []
        state, overlays = self.contents()
        verifier = state.get(VERIFIER)
        writes = {stored_name(rel): seal(d, self.recipients) if is_sealed(rel) else d for rel, d in state.items()}
        for server, files in overlays.items():
            writes[overlay_name(server)] = seal(encode_bundle(files, verifier), self.recipients)
        self._write(writes, self._index_for(writes, overlays))
        added = [_label_of(after[k]) for k in after if k not in before]
        removed = [_label_of(before[k]) for k in before if k not in after]
        note = "re-encrypted the state to the recipients in deploy.toml"
        note += "".join(f"; {w}: {', '.join(who)}" for w, who in (("added", added), ("removed", removed)) if who)
        if removed:
            note += " (they may keep copies of what they could read: run flinger overlay --rotate)"
        return [note]

    def describe(self) -> dict[str, Any]:
        index = self.index or Index()
        return {
            "state": str(self.root),
            "serial": index.serial,
            "recipients": [_label_of(t) for t in index.recipients],
            "servers": sorted(index.overlays),
        }


def _prune_empty(top: Path) -> None:
    if not top.is_dir():
        return
    for d in sorted(top.iterdir()):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _recipient(text: str) -> Recipient:
    """A recipient on record; one that does not parse (an edited index) stands as its text."""
    try:
        return parse_recipient(text)
    except ValueError:
        return Recipient(text, None)


def _label_of(text: str) -> str:
    recipient = _recipient(text)
    return recipient.label if recipient.key is not None else text[:40]


def reader(root: Path) -> StateStore:
    """The state for reading what is stored in clear (index, certificates, generations): no
    recipient and no identity needed until something sealed is read."""
    return StateStore(root, [], Keyring())


def open_state(topology: Topology, keyring: Keyring | None = None) -> StateStore:
    """The deployment's state, ready to read and write: sealed to the recipients in
    deploy.toml (none named: the operator's own flinger identity, made on first use); a clear
    state of an older flinger migrated, a state sealed to other recipients re-encrypted."""
    from flinger.overlay.migrate import has_clear_state, migrate

    keyring = keyring or Keyring()
    texts = topology.state.recipients
    recipients = [parse_recipient(t) for t in texts] if texts else [keyring.own_recipient()]
    store = StateStore(topology.state_dir, recipients, keyring)
    if store.index is None and has_clear_state(store.root):
        store.notes += migrate(store)
    else:
        store.notes += store.rewrap()
    store.notes[:0] = keyring.notes
    return store
