"""Each server's overlay, in memory: its share, TLS files, secrets and rendered templates.

`Common` is what every server's render shares, made once (the servers list, the builder,
the deployment, the verifier); `render_server` makes one server's files from it, with one
context object per server. Every template error is a ConfigError naming the template file
and line, never a secret's value.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import jinja2

from flinger.errors import ConfigError
from flinger.manifest.model import Manifest, OverlayFile
from flinger.overlay.state import SplitState
from flinger.overlay.templates import Namespace, SecretView, render
from flinger.remote import shamir
from flinger.secrets.ca import CertifiedKey, cert_fingerprint
from flinger.topology.model import Server, Topology


@dataclass
class Common:
    """What every server's overlay shares."""

    topology: Topology
    manifest: Manifest
    env: jinja2.Environment
    ca: CertifiedKey
    split: SplitState | None  # None with a single deployment server: no shares
    values: dict[str, dict[str, str]] = field(repr=False)  # secret -> server -> value
    sensitive: list[str] = field(repr=False)  # what an error message must never show
    context: dict[str, Any] = field(default_factory=dict)  # servers, builder, deployment
    verifier: Namespace | None = None
    verifier_file: bytes = b""
    verifier_sha256: str = ""


def common_parts(
    topology: Topology,
    manifest: Manifest,
    env: jinja2.Environment,
    ca: CertifiedKey,
    split: SplitState | None,
    values: dict[str, dict[str, str]],
    sensitive: list[str],
) -> Common:
    deploy = topology.deployment_servers()
    common = Common(topology, manifest, env, ca, split, values, sensitive, _common_context(topology, deploy))
    if split is not None:
        common.verifier = Namespace(
            "overlay.verifier",
            {"group": shamir.GROUP, "generator": shamir.G, "commitments": [format(c, "x") for c in split.commitments]},
        )
        common.verifier_file = shamir.verifier_file(topology.name, split.threshold, common.verifier["commitments"])
        common.verifier_sha256 = hashlib.sha256(common.verifier_file).hexdigest()  # once: every share pins it
    return common


def _common_context(topology: Topology, deploy: list[Server]) -> dict[str, Any]:
    """The template context every server shares."""
    d = topology.deployment
    b = topology.builder_server()
    return {
        "servers": [
            Namespace(f"servers[{i}]", {"name": s.name, "addr": s.addr, "roles": list(s.roles)})
            for i, s in enumerate(deploy)
        ],
        "builder": Namespace(
            "builder",
            {
                "name": b.name,
                "addr": b.addr,
                "source_dir": topology.builder.source_dir,
                "artifacts_dir": topology.builder.artifacts_path,
            },
        ),
        "deployment": Namespace(
            "deployment",
            {
                "name": topology.name,
                "install_dir": d.install_dir,
                "staging_dir": d.staging_dir,
                "threshold": d.threshold,
                "n": len(deploy),
            },
        ),
        "install_dir": d.install_dir,
    }


def _secret_views(
    server: Server, manifest: Manifest, values: dict[str, dict[str, str]]
) -> tuple[SecretView, SecretView]:
    own: dict[str, str] = {}
    own_refused: dict[str, str] = {}
    peers: dict[str, Namespace] = {}
    peers_refused: dict[str, str] = {}
    roles = ", ".join(server.roles) or "none"
    for spec in manifest.secrets.values():
        if server.name in values[spec.name]:
            own[spec.name] = values[spec.name][server.name]
        else:
            own_refused[spec.name] = (
                f"it is made for servers with roles {', '.join(spec.roles)}; server {server.name} has roles {roles}"
            )
        if spec.visible_to and server.has_any_role(spec.visible_to):
            peers[spec.name] = Namespace(f"peer_secrets.{spec.name}", values[spec.name])
        else:
            shown_to = ", ".join(spec.visible_to) or "no role"
            peers_refused[spec.name] = (
                f"other servers' values are visible to {shown_to}; server {server.name} has roles {roles}"
            )
    return SecretView("secrets", own, own_refused), SecretView("peer_secrets", peers, peers_refused)


def _safe_dest(dest: str, manifest: Manifest, key: str) -> str:
    p = PurePosixPath(dest)
    if p.is_absolute() or ".." in p.parts or not p.parts or dest.endswith("/"):
        raise ConfigError(
            f'"{dest}" must be a relative file path inside the overlay, without ".."', file=manifest.path, key=key
        )
    return str(p)


def _templates(manifest: Manifest, server: Server) -> list[tuple[str, OverlayFile]]:
    """(manifest key, overlay file) of every template this server's overlay renders."""
    return [
        (f"packages.{pkg.name}.overlay.{i}", of)
        for pkg in manifest.packages_for(server.roles)
        for i, of in enumerate(pkg.overlay)
        if server.has_any_role(of.roles)
    ]


def _context(common: Common, server: Server, cert: CertifiedKey, own: SecretView, peers: SecretView) -> dict[str, Any]:
    split = common.split
    context = dict(common.context)
    context["server"] = Namespace(
        "server",
        {
            "name": server.name,
            "addr": server.addr,
            "roles": list(server.roles),
            "port": server.port or 22,
            "user": server.user,
            "vars": Namespace("server.vars", dict(server.vars)),
        },
    )
    context["overlay"] = Namespace(
        "overlay",
        {
            "ca_pem": common.ca.cert_pem.decode(),
            "cert_sha256": cert_fingerprint(cert.cert),
            "verifier": common.verifier,
            "threshold": split.threshold if split is not None else None,
            "total": len(common.topology.deployment.servers),
            "index": split.index_of(server.name) if split is not None else None,
            "dir": f"{common.topology.deployment.install_dir.rstrip('/')}/current/overlay",
        },
    )
    context["secrets"] = own
    context["peer_secrets"] = peers
    return context


def render_server(common: Common, server: Server, cert: CertifiedKey) -> dict[str, bytes]:
    """Every file of one server's overlay, in memory (relative path -> content)."""
    files: dict[str, bytes] = {}
    split = common.split
    index = split.index_of(server.name) if split is not None else None
    if split is not None and index is not None and common.verifier_file:
        doc = shamir.separate_share_document(
            common.topology.name,
            split.threshold,
            len(split.servers),
            index,
            split.shares[server.name],
            common.verifier_sha256,
        )
        files["share.json"] = (json.dumps(doc, indent=1) + "\n").encode()
        files[shamir.VERIFIER_FILE] = common.verifier_file  # one object for all: linked, not copied
    files["tls/cert.pem"] = cert.cert_pem
    files["tls/key.pem"] = cert.key_pem
    files["tls/ca.pem"] = common.ca.cert_pem
    own, peers = _secret_views(server, common.manifest, common.values)
    for name, value in own.items():
        files[f"secrets/{name}"] = value.encode()
    templates = _templates(common.manifest, server)
    if not templates:
        return files
    context = _context(common, server, cert, own, peers)
    manifest = common.manifest
    for key, of in templates:
        rel = f"files/{_safe_dest(of.dest, manifest, key + '.to')}"
        if rel in files:
            raise ConfigError(
                f"two overlay files of server {server.name} go to {rel}", file=manifest.path, key=key + ".to"
            )
        files[rel] = render(
            common.env,
            of.template,
            context,
            server=server.name,
            sensitive=common.sensitive,
            manifest_path=manifest.path,
            manifest_key=key + ".template",
        )
    return files


# Servers from which rendering is worth worker processes (each a fork of this one).
PARALLEL_FROM = 64
_JOB: tuple[Common, list[Server], dict[str, CertifiedKey]] | None = None  # what forked workers render


def render_all(common: Common, servers: list[Server], certs: dict[str, CertifiedKey]) -> dict[str, dict[str, bytes]]:
    """Every server's overlay, by name, in the servers' order. Many servers are rendered by
    one forked worker per CPU (this process's memory, the compiled templates included, is
    theirs at once); the first error, in the servers' order, is raised as it would be here."""
    workers = min(os.cpu_count() or 1, 8)
    if len(servers) < PARALLEL_FROM or workers < 2 or threading.active_count() > 1 or not hasattr(os, "fork"):
        return {s.name: render_server(common, s, certs[s.name]) for s in servers}
    global _JOB
    _JOB = (common, servers, certs)
    try:
        step = -(-len(servers) // (workers * 4))
        chunks = [(start, min(start + step, len(servers))) for start in range(0, len(servers), step)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, chunks)
    finally:
        _JOB = None
    rendered: dict[str, dict[str, bytes]] = {}
    for part in parts:
        if isinstance(part, _Failed):
            raise ConfigError(part.reason, file=part.file, line=part.line, key=part.key)
        rendered.update(part)
    return rendered


@dataclass(frozen=True)
class _Failed:
    """A worker's ConfigError, as data (the exception itself does not travel)."""

    reason: str
    file: str | None
    line: int | None
    key: str | None


def _render_chunk(bounds: tuple[int, int]) -> dict[str, dict[str, bytes]] | _Failed:
    assert _JOB is not None
    common, servers, certs = _JOB
    out: dict[str, dict[str, bytes]] = {}
    for server in servers[bounds[0] : bounds[1]]:
        try:
            out[server.name] = render_server(common, server, certs[server.name])
        except ConfigError as exc:
            return _Failed(exc.reason, exc.file, exc.line, exc.key)
    return out
