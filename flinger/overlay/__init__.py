"""`flinger overlay`: make each deployment server's private overlay on the client.

For every deployment server, under `.flinger/<deployment>/overlay/<server>/`: its threshold
share of the deployment secret (`share.json`), its TLS key and certificate signed by the
deployment CA (`tls/`), its per-server secrets (`secrets/<name>`) and its rendered config
templates (`files/<dest>`); with a registry store, the registry's pull credential
(`flinger/registry-pull.json`).

A pipeline: the stored state is loaded (state.py); pure planners decide the CA, the
certificates, the secrets and the split (planners.py); every server's files are rendered in
memory from one context object each (render.py, with templates.py's sandboxed jinja2); then,
and only if all of that worked, everything is written (write.py): 0600 files in 0700
directories, atomically, and files no longer planned removed. Any error leaves the disk as
it was.

Re-running keeps the CA, certificates, secrets and shares; `rotate` replaces them all. A
change of the deployment servers or of the threshold re-splits the same deployment secret
(recovered from the stored shares) into new shares. Each run that changes any server's
overlay is a new generation (generation.py), which names the secrets it rotated out.
"""

from __future__ import annotations

from pathlib import Path

from flinger.errors import ConfigError
from flinger.manifest.model import Manifest
from flinger.overlay.generation import advance, generation_file
from flinger.overlay.planners import plan_ca, plan_certs, plan_secrets, plan_split
from flinger.overlay.render import common_parts, render_all
from flinger.overlay.report import OverlayReport, ServerOverlay
from flinger.overlay.state import StatePaths, secret_to_bytes, secrets_to_bytes
from flinger.overlay.templates import make_environment
from flinger.overlay.write import remove_stale, write_overlays, write_state
from flinger.secrets import registry_credentials
from flinger.secrets.ca import cert_fingerprint
from flinger.topology.model import Topology

__all__ = ["OverlayReport", "ServerOverlay", "make_overlay"]


def _check_threshold(topology: Topology) -> None:
    n, t = len(topology.deployment.servers), topology.deployment.threshold
    if not 1 <= t <= n:
        raise ConfigError(
            f"must be between 1 and the number of deployment servers ({n}), got {t}",
            file=topology.config_path,
            line=topology.line_of("deployment.threshold"),
            key="deployment.threshold",
        )


def make_overlay(
    topology: Topology,
    manifest: Manifest,
    *,
    rotate: bool = False,
    keep_secret: bool = False,
    template_root: Path | None = None,
) -> OverlayReport:
    """Make (or bring up to date) every deployment server's overlay under
    `topology.state_dir`; see the module docstring."""
    _check_threshold(topology)
    deploy = topology.deployment_servers()
    names = tuple(s.name for s in deploy)
    paths = StatePaths(topology.state_dir)
    messages: list[str] = []

    # plan: what every piece is to be (nothing is written before the whole plan worked)
    ca = plan_ca(topology, paths, rotate=rotate, messages=messages)
    certs = plan_certs(topology, paths, ca, deploy, rotate=rotate, messages=messages)
    secrets = plan_secrets(manifest, paths, deploy, rotate=rotate)
    split = plan_split(topology, paths, names, rotate=rotate)
    messages.extend(split.messages)
    if split.state is not None and split.state.threshold == 1 and len(names) > 1:
        messages.append("threshold 1: each share alone is the whole deployment secret")
    secret = split.secret
    if keep_secret and secret is None and split.state is not None:
        secret = split.state.recover()

    # render: every server's files, in memory
    sensitive = secrets.sensitive()
    if split.state is not None:
        sensitive += [format(v, "x") for v in split.state.shares.values()]
    if secret is not None:
        sensitive += [format(secret, "x"), format(secret, "064x")]
    shared = split.state if len(names) > 1 else None
    common = common_parts(topology, manifest, make_environment(template_root or topology.source_dir), ca, shared,
                          secrets.values, sensitive)  # fmt: skip
    plan = render_all(common, deploy, certs)
    pull = registry_credentials.pull_credential_file(topology) if topology.artifacts.registry else None
    if pull is not None:  # each server pulls packages with it; the manifest's files are all under files/
        for server_files in plan.values():
            server_files[registry_credentials.PULL_CREDENTIAL_FILE] = pull

    # the generation: one more when any server's overlay changes, naming what it rotated out
    generations, rotated = advance(paths, plan, ca, certs, secrets, split)
    writes: dict[Path, bytes] = {generation_file(paths): generations.to_bytes()}
    if rotated:
        messages.append(f"generation {generations.generation} rotates out: {', '.join(rotated)}")

    # write: the state first (it is what a re-run keeps), then the overlays
    writes.update({paths.ca_key: ca.key_pem, paths.ca_cert: ca.cert_pem})
    for name, pair in certs.items():
        writes[paths.server_key(name)] = pair.key_pem
        writes[paths.server_cert(name)] = pair.cert_pem
    writes[paths.secrets_file] = secrets_to_bytes(secrets.stored)
    if split.state is not None:
        writes[paths.split_file] = split.state.to_bytes()
    if keep_secret and secret is not None:
        writes[paths.secret_file] = secret_to_bytes(secret)
    if common.verifier_file:
        writes[paths.verifier_file] = common.verifier_file
    write_state(paths, writes, keep_secret=keep_secret, servers=set(certs))
    wrote = write_overlays(paths, plan)
    removed = remove_stale(paths.overlay_dir, plan)

    servers = tuple(
        ServerOverlay(
            server=s.name,
            files=tuple(sorted(plan[s.name])),
            written=tuple(sorted(rel for rel in plan[s.name] if paths.overlay_dir / s.name / rel in wrote)),
            cert_sha256=cert_fingerprint(certs[s.name].cert),
            share_index=shared.index_of(s.name) if shared is not None else None,
        )
        for s in deploy
    )
    return OverlayReport(
        deployment=topology.name,
        overlay_dir=paths.overlay_dir,
        total=len(names),
        threshold=topology.deployment.threshold if shared is not None else None,
        secret_fingerprint=shared.fingerprint if shared is not None else None,
        servers=servers,
        removed=tuple(removed),
        messages=tuple(messages),
        generation=generations.generation,
        rotated=tuple(rotated),
    )
