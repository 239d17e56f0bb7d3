"""Reading a deployment's sealed state in tests, as flinger does (the tests' own identity)."""

from __future__ import annotations

import json
from pathlib import Path

from flinger.overlay.store import StateStore, reader
from flinger.secrets.sealing import parse_recipient
from flinger.topology.model import Topology


def state_of(where: Topology | Path) -> StateStore:
    """The state of a topology (or a state dir), opened with the operator's identity."""
    return reader(where.state_dir if isinstance(where, Topology) else where)


def overlay_of(where: Topology | Path, server: str) -> dict[str, bytes]:
    """One server's overlay files, decrypted ({} when it has none)."""
    return state_of(where).overlay(server) or {}


def overlays(where: Topology | Path) -> dict[str, dict[str, bytes]]:
    state = state_of(where)
    return {s: state.overlay(s) or {} for s in state.overlay_names()}


def share_of(where: Topology | Path, server: str) -> dict[str, object]:
    doc = json.loads(overlay_of(where, server)["share.json"])
    assert isinstance(doc, dict)
    return doc


def export_shares(where: Topology | Path, servers: list[str], dest: Path) -> list[Path]:
    """Each server's share (and the verifier beside it) as plain files in dest/<server>/, as
    an operator holding them would have them."""
    out = []
    for server in servers:
        files = overlay_of(where, server)
        (dest / server).mkdir(parents=True, exist_ok=True)
        for name in ("share.json", "verifier.json"):
            if name in files:
                (dest / server / name).write_bytes(files[name])
        out.append(dest / server / "share.json")
    return out


def edit_overlay(where: Topology | Path, server: str, rel: str, data: bytes | None) -> None:
    """Change one file of a server's sealed overlay (as a tampering or a damaged copy would),
    sealed again to the recipients on record."""
    state = state_of(where)
    assert state.index is not None
    state.recipients = [parse_recipient(t) for t in state.index.recipients]
    stored, overlays = state.contents()
    files = {s: dict(f) for s, f in overlays.items()}
    if data is None:
        del files[server][rel]
    else:
        files[server][rel] = data
    state.commit(stored, files)


def view(where: Topology | Path) -> Path:
    """The sealed state opened into a clear tree in the old layout (ca/, state/, and
    overlay/<server>/…) beside the project, for a test to look at; a new one each call."""
    root = where.state_dir if isinstance(where, Topology) else where
    state = state_of(root)
    n = 0
    while (dest := root.parent.parent / f"view-{n}").exists():
        n += 1
    stored, overlays = state.contents()
    opened = {**stored, **{f"overlay/{s}/{rel}": d for s, files in overlays.items() for rel, d in files.items()}}
    for rel, data in opened.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    dest.mkdir(parents=True, exist_ok=True)
    return dest
