"""`check`'s look at the overlay templates: one server of each set of roles (and of `vars`
names) rendered in
memory, with throwaway secrets, a throwaway CA and a made-up split (nothing is read from or
written to the state, so no identity is needed). A template error is then found by `check`,
with its file and line, and not first by `overlay` (or, worse, never, while `deploy
install` ships the overlay made before it)."""

from __future__ import annotations

import secrets as random
from pathlib import Path

from flinger.manifest.model import Manifest
from flinger.overlay.render import common_parts, render_server
from flinger.overlay.state import SplitState
from flinger.overlay.templates import make_environment
from flinger.remote import shamir
from flinger.secrets.ca import create_ca, issue_server_cert
from flinger.topology.model import Server, Topology


def _one_per_role_set(servers: list[Server]) -> list[Server]:
    """One server of each set of roles and of variable names (what decides what renders)."""
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    sample = []
    for server in servers:
        key = (tuple(sorted(server.roles)), tuple(sorted(server.vars)))
        if key not in seen:
            seen.add(key)
            sample.append(server)
    return sample


def render_sample(topology: Topology, manifest: Manifest, template_root: Path | None = None) -> int:
    """Render the overlay of one server of each set of roles; ConfigError naming the template
    and line on the first that fails. Returns how many servers were rendered."""
    deploy = topology.deployment_servers()
    sample = _one_per_role_set(deploy)
    if not sample or not any(p.overlay for p in manifest.packages.values()):
        return 0
    names = tuple(s.name for s in deploy)
    t = min(max(topology.deployment.threshold, 1), len(names))
    split = None
    if len(names) > 1:  # made-up numbers of the right shape: no arithmetic needed to render
        split = SplitState(
            deployment=topology.name,
            threshold=t,
            servers=names,
            commitments=tuple(random.randbelow(shamir.P) for _ in range(t)),
            shares={n: random.randbelow(shamir.Q) for n in names},
            fingerprint="SHA256:check",
        )
    values = {
        spec.name: {s.name: random.token_hex(spec.nbytes) for s in deploy if s.has_any_role(spec.roles)}
        for spec in manifest.secrets.values()
    }
    ca = create_ca(topology.name)
    env = make_environment(template_root or topology.source_dir)
    common = common_parts(topology, manifest, env, ca, split, values, [])
    for server in sample:
        render_server(common, server, issue_server_cert(ca, server.name, server.addr, deployment=topology.name))
    return len(sample)
