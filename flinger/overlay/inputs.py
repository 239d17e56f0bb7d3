"""What `overlay` renders from, as one digest (kept in the sealed state's index, see
actions/provenance.py): the deployment's servers, the manifest's overlay files and secrets,
and the bytes of the templates and of every template they include. No machine path goes
in, so a teammate's clone of the same files gives the same digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flinger.manifest.model import Manifest
from flinger.topology.model import Topology


def overlay_inputs(topology: Topology, manifest: Manifest) -> str:
    """What `overlay` renders from: no machine path (a teammate's clone gives the same)."""
    topo: dict[str, Any] = {
        "name": topology.name,
        "builder": asdict(topology.builder),
        "deployment": asdict(topology.deployment),
        "servers": {n: asdict(s) for n, s in sorted(topology.servers.items())},
        "registry": topology.artifacts.registry,
    }
    parts: dict[str, Any] = {
        "topology": topo,
        "secrets": {n: asdict(s) for n, s in sorted(manifest.secrets.items())},
        "overlay": {n: [asdict(o) for o in p.overlay] for n, p in sorted(manifest.packages.items())},
        "templates": {},
    }
    roots = [entry.template for pkg in manifest.packages.values() for entry in pkg.overlay]
    parts["templates"] = _template_digests(topology.source_dir, roots)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _template_digests(root: Path, names: list[str]) -> dict[str, str | None]:
    """The bytes' digest of every template rendered: those named, and every one they
    include, import or extend, as far as it goes. A name computed at render time cannot be
    followed: then every template file under `root` counts."""
    import jinja2
    from jinja2 import meta

    from flinger.overlay.templates import make_environment

    env = make_environment(root)  # parsed only, as overlay parses them
    digests: dict[str, str | None] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in digests:
            continue
        try:
            data = (root / name).read_bytes()
        except OSError:
            digests[name] = None
            continue
        digests[name] = hashlib.sha256(data).hexdigest()
        try:
            referenced = list(meta.find_referenced_templates(env.parse(data.decode("utf-8", "replace"))))
        except jinja2.TemplateSyntaxError:
            continue  # overlay says where: nothing more to follow here
        if None in referenced:
            referenced = [str(p.relative_to(root)) for p in _template_files(root)]
        pending.extend(str(r) for r in referenced if r is not None)
    return digests


def _template_files(root: Path) -> list[Path]:
    """Every *.j2 under `root` (hidden directories and .flinger/ left out)."""
    found = []
    for path in root.rglob("*.j2"):
        if not any(part.startswith(".") for part in path.relative_to(root).parts) and path.is_file():
            found.append(path)
    return sorted(found)
