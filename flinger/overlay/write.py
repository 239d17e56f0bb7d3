"""Writing the overlay's state and every server's overlay: 0600 files in 0700 directories,
each written whole (a temporary file and a rename) and only when its content changed; the
one verifier linked into every overlay; files no longer planned removed."""

from __future__ import annotations

import os
from pathlib import Path

from flinger.overlay.state import StatePaths
from flinger.remote import shamir
from flinger.secrets.private_files import TEMP_SUFFIX, link_private, private_dir, remove_path, write_private_all


def write_state(paths: StatePaths, writes: dict[Path, bytes], *, keep_secret: bool, servers: set[str]) -> None:
    """The state first (it is what a re-run keeps), then what it no longer holds removed."""
    private_dir(paths.root)
    for d in (paths.ca_dir, paths.state_dir, paths.tls_dir, paths.overlay_dir):
        private_dir(d)
    write_private_all(writes.items())
    if not keep_secret:
        remove_path(paths.secret_file)
    if paths.verifier_file not in writes:
        remove_path(paths.verifier_file)
    for tls in paths.tls_dir.iterdir():
        if tls.name not in servers:
            remove_path(tls)


def write_overlays(paths: StatePaths, plan: dict[str, dict[str, bytes]]) -> set[Path]:
    """Every server's overlay files; the paths this run created or changed."""
    wrote: set[Path] = set()
    for server, files in plan.items():
        private_dir(paths.overlay_dir / server)
        if shamir.VERIFIER_FILE in files:  # the one verifier, linked into every overlay
            verifier = paths.overlay_dir / server / shamir.VERIFIER_FILE
            if link_private(paths.verifier_file, verifier):
                wrote.add(verifier)
    wrote |= write_private_all(
        (paths.overlay_dir / server / rel, data)
        for server, files in plan.items()
        for rel, data in files.items()
        if rel != shamir.VERIFIER_FILE
    )
    return wrote


def remove_stale(overlay_dir: Path, plan: dict[str, dict[str, bytes]]) -> list[str]:
    """Remove what is under overlay/ but not in `plan`; returns the removed relative paths."""
    removed: list[str] = []
    if not overlay_dir.is_dir():
        return removed
    for entry in sorted(overlay_dir.iterdir()):
        if entry.name not in plan or not entry.is_dir() or entry.is_symlink():
            remove_path(entry)
            removed.append(entry.name)
            continue
        removed += [f"{entry.name}/{rel}" for rel in _remove_unplanned(entry, plan[entry.name])]
    return removed


def _remove_unplanned(root: Path, wanted: dict[str, bytes]) -> list[str]:
    removed: list[str] = []
    for top, dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = Path(top, f)
            rel = p.relative_to(root).as_posix()
            if rel not in wanted:
                p.unlink()
                if not f.endswith(TEMP_SUFFIX):
                    removed.append(rel)
        for d in dirs:
            p = Path(top, d)
            if p.is_symlink():
                p.unlink()
            elif not any(p.iterdir()):
                p.rmdir()
    return removed
