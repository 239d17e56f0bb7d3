"""The clear state of flinger before sealing (`ca/ca.key`, `state/*.json`, `state/tls/*/`,
`overlay/<server>/…` as plain 0600 files) taken into the sealed store once, then removed."""

from __future__ import annotations

from pathlib import Path

from flinger.overlay.state import CA_CERT, CA_KEY, GENERATION, SECRET, SECRETS, SPLIT, VERIFIER
from flinger.overlay.store import StateStore
from flinger.secrets.private_files import remove_path

_FILES = (CA_KEY, CA_CERT, SECRETS, SPLIT, SECRET, VERIFIER, GENERATION)


def has_clear_state(root: Path) -> bool:
    return any((root / rel).is_file() for rel in _FILES) or _clear_overlays(root) != []


def _clear_overlays(root: Path) -> list[Path]:
    top = root / "overlay"
    return sorted(d for d in top.iterdir() if d.is_dir() and not d.is_symlink()) if top.is_dir() else []


def _files_under(top: Path) -> dict[str, bytes]:
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def migrate(store: StateStore) -> list[str]:
    """Seal the clear state into `store`, then remove the clear files; what to tell the operator."""
    root = store.root
    state = {rel: (root / rel).read_bytes() for rel in _FILES if (root / rel).is_file()}
    tls = root / "state" / "tls"
    for server_dir in sorted(tls.iterdir()) if tls.is_dir() else []:
        for name in ("key.pem", "cert.pem"):
            if (server_dir / name).is_file():
                state[f"state/tls/{server_dir.name}/{name}"] = (server_dir / name).read_bytes()
    overlays = {d.name: _files_under(d) for d in _clear_overlays(root)}
    store.commit(state, overlays)
    clear = [root / rel for rel in (CA_KEY, SECRETS, SPLIT, SECRET)]
    clear += [d / "key.pem" for d in (tls.iterdir() if tls.is_dir() else [])]
    for path in [*clear, *_clear_overlays(root)]:  # the certificates and public files stay as they are
        remove_path(path)
    who = ", ".join(r.label for r in store.recipients)
    return [
        f"migrated the clear state in {root} into sealed files (encrypted to {who}); removed the clear secret files"
    ]
