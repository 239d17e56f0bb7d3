"""`flinger overlay`: make each deployment server's private overlay on the client.

For every deployment server, sealed in `.flinger/<deployment>/overlay/<server>.age`: its threshold
share of the deployment secret (`share.json`), its TLS key and certificate signed by the
deployment CA (`tls/`), its per-server secrets (`secrets/<name>`) and its rendered config
templates (`files/<dest>`); with a registry store, the registry's pull credential
(`flinger/registry-pull.json`).

A pipeline: the stored state is loaded (state.py); pure planners decide the CA, the
certificates, the secrets and the split (planners.py); every server's files are rendered in
memory from one context object each (render.py, with templates.py's sandboxed jinja2); then,
and only if all of that worked, the whole new state is committed to the store (store.py):
sealed to the deployment's recipients, only what changed written, atomically, and what is
no longer planned removed. Any error leaves the disk as it was; no clear copy is written.

Re-running keeps the CA, certificates, secrets and shares; `rotate` replaces them all. A
change of the deployment servers or of the threshold re-splits the same deployment secret
(recovered from the stored shares) into new shares. Each run that changes any server's
overlay is a new generation (generation.py), which names the secrets it rotated out.
"""

from __future__ import annotations

from pathlib import Path

from flinger.errors import ConfigError
from flinger.manifest.model import Manifest
from flinger.overlay.generation import advance
from flinger.overlay.inputs import overlay_inputs
from flinger.overlay.planners import SecretValues, Split, plan_ca, plan_certs, plan_secrets, plan_split
from flinger.overlay.render import common_parts, render_all
from flinger.overlay.report import OverlayReport, ServerOverlay
from flinger.overlay.state import (
    CA_CERT,
    CA_KEY,
    GENERATION,
    SECRET,
    SECRETS,
    SPLIT,
    VERIFIER,
    secret_to_bytes,
    secrets_to_bytes,
    server_cert,
    server_key,
)
from flinger.overlay.store import StateStore, open_state
from flinger.overlay.templates import make_environment
from flinger.secrets import registry_credentials
from flinger.secrets.ca import CertifiedKey, cert_fingerprint
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


def _state_files(
    ca: CertifiedKey,
    certs: dict[str, CertifiedKey],
    secrets: SecretValues,
    split: Split,
    kept_secret: int | None,
    verifier: bytes | None,
) -> dict[str, bytes]:
    """Every state file the planned overlay keeps, by logical name."""
    stored = {CA_KEY: ca.key_pem, CA_CERT: ca.cert_pem, SECRETS: secrets_to_bytes(secrets.stored)}
    for name, pair in certs.items():
        stored[server_key(name)] = pair.key_pem
        stored[server_cert(name)] = pair.cert_pem
    if split.state is not None:
        stored[SPLIT] = split.state.to_bytes()
    if kept_secret is not None:
        stored[SECRET] = secret_to_bytes(kept_secret)
    if verifier:
        stored[VERIFIER] = verifier
    return stored


def make_overlay(
    topology: Topology,
    manifest: Manifest,
    *,
    rotate: bool = False,
    keep_secret: bool = False,
    template_root: Path | None = None,
    state: StateStore | None = None,
) -> OverlayReport:
    """Make (or bring up to date) every deployment server's overlay in the deployment's state
    (`state`, else the state opened here); see the module docstring."""
    _check_threshold(topology)
    deploy = topology.deployment_servers()
    names = tuple(s.name for s in deploy)
    if state is None:
        state = open_state(topology)
    messages: list[str] = list(state.notes)

    # plan: what every piece is to be (nothing is written before the whole plan worked)
    ca = plan_ca(topology, state, rotate=rotate, messages=messages)
    certs = plan_certs(topology, state, ca, deploy, rotate=rotate, messages=messages)
    secrets = plan_secrets(manifest, state, deploy, rotate=rotate)
    split = plan_split(topology, state, names, rotate=rotate)
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
    generations, rotated = advance(state, plan, ca, certs, secrets, split)
    stored: dict[str, bytes] = {GENERATION: generations.to_bytes()}
    if rotated:
        messages.append(f"generation {generations.generation} rotates out: {', '.join(rotated)}")

    # commit: the whole new state at once (sealed where secret), only what changed written
    stored.update(_state_files(ca, certs, secrets, split, secret if keep_secret else None, common.verifier_file))
    before = state.overlay_names()
    removed = [s for s in sorted(before) if s not in plan]
    removed += [f"{s}/{rel}" for s in sorted(plan) for rel in before.get(s, []) if rel not in plan[s]]
    wrote = state.commit(stored, plan, made_from=overlay_inputs(topology, manifest))

    servers = tuple(
        ServerOverlay(
            server=s.name,
            files=tuple(sorted(plan[s.name])),
            written=tuple(wrote[s.name]),
            cert_sha256=cert_fingerprint(certs[s.name].cert),
            share_index=shared.index_of(s.name) if shared is not None else None,
        )
        for s in deploy
    )
    return OverlayReport(
        deployment=topology.name,
        overlay_dir=state.root / "overlay",
        total=len(names),
        threshold=topology.deployment.threshold if shared is not None else None,
        secret_fingerprint=shared.fingerprint if shared is not None else None,
        servers=servers,
        removed=tuple(removed),
        messages=tuple(messages),
        generation=generations.generation,
        rotated=tuple(rotated),
    )
