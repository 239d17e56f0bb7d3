"""What each step's output was made from, so that `deploy install` never ships stale bits
silently: a source tree changed since the build on hand (or synced but not built since), a
manifest whose packages changed since, an overlay made from an older deploy.toml, manifest
or template.

- `sync` records the fingerprint of the tree it sent (`made/sync.json`): rsync's own list of
  the files it considers (the same excludes and .gitignore filters), names, sizes, modes
  and times, read locally (`rsync --list-only`), hashed;
- a successful `build package` records that tree and the digest of the packages' specs
  (`made/build.json`);
- `overlay` records the digest of what it renders from (the deployment's servers, the
  manifest's overlay files and secrets, the templates' bytes) in the sealed state's index,
  which a team shares, so a teammate's clone of the same files is not stale.

`made/` is per client (the builder a client built on is its own business): without a
record, nothing can be said, and the deploy is not refused for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flinger.errors import FlingerError
from flinger.manifest.model import Manifest
from flinger.overlay.inputs import overlay_inputs
from flinger.secrets.private_files import write_private
from flinger.topology.model import Topology

_LISTING_KEEPS = ("--recursive", "--links", "--perms", "--times")


def made_dir(topology: Topology) -> Path:
    return topology.state_dir / "made"


def tree_fingerprint(topology: Topology) -> str:
    """The source tree as `sync` sends it: rsync's listing with sync's own filters, hashed."""
    from flinger.actions.sync import plan_sync
    from flinger.ssh.openssh import require_local

    require_local("rsync", "ssh")  # what sync itself needs, said as sync says it
    plan = plan_sync(topology)
    options = [o for o in plan.options if o in _LISTING_KEEPS]
    pairs = plan.options
    for i, option in enumerate(pairs[:-1]):
        if option in ("--exclude", "--filter"):
            options += [option, pairs[i + 1]]
    try:
        listing = subprocess.run(
            ["rsync", *options, "--list-only", f"{plan.source}/"],
            capture_output=True,
            check=True,
            timeout=300,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FlingerError(f"cannot list the source tree {plan.source} with rsync: {exc}") from None
    # rsync lists times in whole seconds: each file's own nanoseconds (and size) go in too,
    # so an edit within the same second is seen
    digest = hashlib.sha256()
    for line in listing.splitlines():
        if line.startswith(b"d"):
            continue  # a directory's time changes with ignored entries too; its files say what changed
        fields = line.split(maxsplit=4)
        name = fields[4].split(b" -> ", 1)[0] if len(fields) == 5 and line.startswith(b"l") else fields[-1]
        try:
            st = os.lstat(os.path.join(bytes(plan.source), name))
        except OSError:
            continue
        digest.update(b"%s %d %d %o\n" % (name, st.st_size, st.st_mtime_ns, st.st_mode))
    return digest.hexdigest()


def packages_digest(manifest: Manifest) -> str:
    """What the build makes packages from, as the manifest says it (not the service parts)."""
    from flinger.actions.build import package_source

    specs = [asdict(package_source(p)) for p in sorted(manifest.packages.values(), key=lambda p: p.name)]
    return hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def record_sync(topology: Topology, tree: str) -> None:
    write_private(made_dir(topology) / "sync.json", json.dumps({"tree": tree, "at": _now()}).encode())


def record_build(topology: Topology, manifest: Manifest) -> None:
    """After a successful `build package`: the tree last synced (what the builder built) and
    the packages' specs."""
    synced = _read(made_dir(topology) / "sync.json") or {}
    doc = {"tree": synced.get("tree"), "packages": packages_digest(manifest), "at": _now()}
    write_private(made_dir(topology) / "build.json", json.dumps(doc).encode())


def stale_steps(topology: Topology, manifest: Manifest, overlay_made_from: str | None) -> list[str]:
    """What is older than what it was made from, each with the command that brings it up to
    date; [] when nothing is (or nothing can be said)."""
    found: list[str] = []
    if overlay_made_from is not None and overlay_made_from != overlay_inputs(topology, manifest):
        found.append("the overlay was made from an older deploy.toml, manifest or template: run `flinger overlay`")
    build = _read(made_dir(topology) / "build.json")
    if build is None:
        return found
    synced = _read(made_dir(topology) / "sync.json") or {}
    try:
        tree: str | None = tree_fingerprint(topology)
    except FlingerError:
        tree = None  # no local rsync (a deploy does not need one here): the tree cannot be compared
    if build.get("packages") != packages_digest(manifest):
        found.append("the manifest's packages changed since the last `build package`: run `flinger build package`")
    elif synced.get("tree") != build.get("tree"):
        found.append("the tree was synced since the last successful `build package`: run `flinger build package`")
    if tree is not None and synced.get("tree") is not None and synced.get("tree") != tree:
        found.append("the source tree changed since the last `sync`: run `flinger sync` and `flinger build package`")
    return found
