"""What `overlay` renders from, as one digest (kept in the sealed state's index, see
actions/provenance.py): the deployment's servers, the manifest's overlay files and secrets,
and the templates' bytes. No machine path goes in, so a teammate's clone of the same files
gives the same digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
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
    for pkg in manifest.packages.values():
        for entry in pkg.overlay:
            path = topology.source_dir / entry.template
            try:
                parts["templates"][entry.template] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                parts["templates"][entry.template] = None
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
