"""`flinger overlay`: make each deployment server's private overlay on the client.

For every deployment server, under `.flinger/<deployment>/overlay/<server>/`: its threshold
share of the deployment secret (`share.json`), its TLS key and certificate signed by the
deployment CA (`tls/`), its per-server secrets (`secrets/<name>`) and its rendered config
templates (`files/<dest>`); with a registry store, the registry's pull credential
(`flinger/registry-pull.json`). Everything is worked out in memory first (keys, shares, every
template): any error leaves the disk untouched. Then files are written 0600 in 0700
directories, atomically, and files no longer in the plan are removed.

Re-running keeps the CA, certificates, secrets and shares; `rotate` replaces them all. A
change of the deployment servers or of the threshold re-splits the same deployment secret
(recovered from the stored shares) into new shares.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from flinger.errors import ConfigError
from flinger.manifest.model import Manifest
from flinger.remote import shamir
from flinger.secrets import registry_credentials
from flinger.secrets.ca import (
    CertifiedKey,
    cert_fingerprint,
    create_ca,
    issue_server_cert,
    reissue_reason,
)
from flinger.secrets.overlay_state import (
    SplitState,
    StatePaths,
    load_ca,
    load_kept_secret,
    load_secrets,
    load_server_cert,
    load_split,
    secret_to_bytes,
    secrets_to_bytes,
)
from flinger.secrets.overlay_templates import Namespace, SecretView, make_environment, render
from flinger.secrets.private_files import TEMP_SUFFIX, link_private, private_dir, remove_path, write_private_all
from flinger.topology.model import Server, Topology

_SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LIST_AT_MOST = 10  # names listed in one message before "and N more"


@dataclass(frozen=True)
class ServerOverlay:
    """What one server's overlay holds (paths relative to its overlay dir), never values."""

    server: str
    files: tuple[str, ...]
    written: tuple[str, ...]  # the files this run created or changed
    cert_sha256: str
    share_index: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "files": list(self.files),
            "written": list(self.written),
            "cert_sha256": self.cert_sha256,
            "share_index": self.share_index,
        }


@dataclass(frozen=True)
class OverlayReport:
    """The result of `make_overlay`: data for the CLI to print or dump as JSON."""

    deployment: str
    overlay_dir: Path
    total: int
    threshold: int | None  # None when no shares were made (a single deployment server)
    secret_fingerprint: str | None
    servers: tuple[ServerOverlay, ...]
    removed: tuple[str, ...] = ()  # paths relative to the overlay dir
    messages: tuple[str, ...] = ()

    def server(self, name: str) -> ServerOverlay:
        for s in self.servers:
            if s.server == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "overlay_dir": str(self.overlay_dir),
            "total": self.total,
            "threshold": self.threshold,
            "secret_fingerprint": self.secret_fingerprint,
            "servers": [s.to_json() for s in self.servers],
            "removed": list(self.removed),
            "messages": list(self.messages),
        }


SHARED = "*"  # the key of a deployment-scoped secret's one value in secrets.json


def _new_deployment_secret() -> int:
    """The random source of deployment secrets (tests replace it with a known value)."""
    return shamir.random_secret()


def _new_token(nbytes: int) -> str:
    """The random source of per-server secrets, as hex (tests replace it)."""
    return secrets.token_hex(nbytes)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_AT_MOST])
    more = len(names) - _LIST_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass
class _Split:
    state: SplitState | None
    secret: int | None = field(default=None, repr=False)
    messages: list[str] = field(default_factory=list)


def _plan_split(topology: Topology, paths: StatePaths, names: tuple[str, ...], *, rotate: bool) -> _Split:
    """Keep the current split, re-split the same secret, or make a new one."""
    n, t = len(names), topology.deployment.threshold
    old = None if rotate else load_split(paths.split_file)
    kept = None if rotate else load_kept_secret(paths.secret_file)
    if n == 1:
        message = (
            f"only one deployment server ({names[0]}): no secret shares were made, since a "
            "threshold secret needs at least two servers to hold shares"
        )
        if old is not None:
            message += "; the previous split stays in state/ for when servers are added back"
            return _Split(old, old.recover(), [message])
        return _Split(None, kept, [message])
    if (
        old is not None
        and old.servers == names
        and old.threshold == t
        and set(old.shares) == set(names)
        and len(old.commitments) == t
    ):
        return _Split(old, None)

    plan = _Split(None)
    secret = old.recover() if old is not None else None
    if old is not None and secret is not None:
        changes = []
        added = [s for s in names if s not in old.servers]
        removed = [s for s in old.servers if s not in names]
        if added:
            changes.append(f"added {_names(added)}")
        if removed:
            changes.append(f"removed {_names(removed)}")
        if old.threshold != t:
            changes.append(f"threshold {old.threshold} -> {t}")
        if not changes:
            changes.append("the server order changed")
        plan.messages.append(
            f"re-split the deployment secret into {n} shares, threshold {t} "
            f"({'; '.join(changes)}); the secret itself is unchanged: every server "
            "needs its new share"
        )
    elif old is not None:
        plan.messages.append("the stored shares do not recover the committed secret: made a new deployment secret")
    if secret is None and kept is not None:
        secret = kept
        plan.messages.append("split the deployment secret kept in state/secret")
    if secret is None:
        secret = _new_deployment_secret()
        what = "rotated: a new" if rotate else "made a new"
        plan.messages.append(f"{what} deployment secret, split into {n} shares; any {t} recover it")
    commitments, shares = shamir.split(secret, n, t)
    plan.state = SplitState(
        deployment=topology.name,
        threshold=t,
        servers=names,
        commitments=tuple(commitments),
        shares={names[i - 1]: v for i, v in shares},
        fingerprint=shamir.fingerprint(secret),
    )
    plan.secret = secret
    return plan


def _safe_dest(dest: str, manifest: Manifest, key: str) -> str:
    p = PurePosixPath(dest)
    if p.is_absolute() or ".." in p.parts or not p.parts or dest.endswith("/"):
        raise ConfigError(
            f'"{dest}" must be a relative file path inside the overlay, without ".."',
            file=manifest.path,
            key=key,
        )
    return str(p)


def _server_ns(path: str, s: Server) -> Namespace:
    return Namespace(path, {"name": s.name, "addr": s.addr, "roles": list(s.roles)})


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
    return (
        SecretView("secrets", own, own_refused),
        SecretView("peer_secrets", peers, peers_refused),
    )


def _render_server(
    topology: Topology,
    manifest: Manifest,
    server: Server,
    *,
    split: SplitState | None,
    ca: CertifiedKey,
    cert: CertifiedKey,
    values: dict[str, dict[str, str]],
    common: dict[str, Any],
    verifier: Namespace | None,
    verifier_file: bytes,
    verifier_sha256: str,
    env: jinja2.Environment,
    sensitive: list[str],
) -> dict[str, bytes]:
    """Every file of one server's overlay, in memory (relative path -> content)."""
    deployment = topology.deployment
    files: dict[str, bytes] = {}
    index = split.index_of(server.name) if split is not None else None
    if split is not None and index is not None and verifier_file:
        doc = shamir.separate_share_document(
            topology.name, split.threshold, len(split.servers), index, split.shares[server.name], verifier_sha256
        )
        files["share.json"] = (json.dumps(doc, indent=1) + "\n").encode()
        files[shamir.VERIFIER_FILE] = verifier_file  # one object for all: linked, not copied
    files["tls/cert.pem"] = cert.cert_pem
    files["tls/key.pem"] = cert.key_pem
    files["tls/ca.pem"] = ca.cert_pem
    own, peers = _secret_views(server, manifest, values)
    for name, value in own.items():
        files[f"secrets/{name}"] = value.encode()

    templates = [
        (pkg.name, i, of)
        for pkg in manifest.packages_for(server.roles)
        for i, of in enumerate(pkg.overlay)
        if server.has_any_role(of.roles)
    ]
    if not templates:
        return files
    context = dict(common)
    context["server"] = Namespace(
        "server",
        {
            "name": server.name,
            "addr": server.addr,
            "roles": list(server.roles),
            "port": server.port or 22,
            "user": server.user,
        },
    )
    context["overlay"] = Namespace(
        "overlay",
        {
            "ca_pem": ca.cert_pem.decode(),
            "cert_sha256": cert_fingerprint(cert.cert),
            "verifier": verifier,
            "threshold": split.threshold if split is not None else None,
            "total": len(topology.deployment.servers),
            "index": index,
            "dir": f"{deployment.install_dir.rstrip('/')}/current/overlay",
        },
    )
    context["secrets"] = own
    context["peer_secrets"] = peers
    for pkg_name, i, of in templates:
        key = f"packages.{pkg_name}.overlay.{i}"
        rel = f"files/{_safe_dest(of.dest, manifest, key + '.to')}"
        if rel in files:
            raise ConfigError(
                f"two overlay files of server {server.name} go to {rel}",
                file=manifest.path,
                key=key + ".to",
            )
        files[rel] = render(
            env,
            of.template,
            context,
            server=server.name,
            sensitive=sensitive,
            manifest_path=manifest.path,
            manifest_key=key + ".template",
        )
    return files


def _verifier(split: SplitState) -> Namespace:
    return Namespace(
        "overlay.verifier",
        {
            "group": shamir.GROUP,
            "generator": shamir.G,
            "commitments": [format(c, "x") for c in split.commitments],
        },
    )


def _common_context(topology: Topology, deploy: list[Server]) -> dict[str, Any]:
    """The template context every server shares."""
    d = topology.deployment
    b = topology.builder_server()
    return {
        "servers": [_server_ns(f"servers[{i}]", s) for i, s in enumerate(deploy)],
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


def _remove_stale(overlay_dir: Path, plan: dict[str, dict[str, bytes]]) -> list[str]:
    """Remove what is under overlay/ but not in `plan`; returns the removed relative paths."""
    removed: list[str] = []
    if not overlay_dir.is_dir():
        return removed
    for entry in sorted(overlay_dir.iterdir()):
        if entry.name not in plan or not entry.is_dir() or entry.is_symlink():
            remove_path(entry)
            removed.append(entry.name)
            continue
        wanted = plan[entry.name]
        for root, dirs, files in os.walk(entry, topdown=False):
            for f in files:
                p = Path(root, f)
                rel = p.relative_to(entry).as_posix()
                if rel not in wanted:
                    p.unlink()
                    if not f.endswith(TEMP_SUFFIX):
                        removed.append(f"{entry.name}/{rel}")
            for d in dirs:
                p = Path(root, d)
                if p.is_symlink():
                    p.unlink()
                elif not any(p.iterdir()):
                    p.rmdir()
    return removed


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
    deploy = topology.deployment_servers()
    names = tuple(s.name for s in deploy)
    n, t = len(names), topology.deployment.threshold
    if not 1 <= t <= n:
        raise ConfigError(
            f"must be between 1 and the number of deployment servers ({n}), got {t}",
            file=topology.config_path,
            line=topology.line_of("deployment.threshold"),
            key="deployment.threshold",
        )
    for name in manifest.secrets:
        if not _SECRET_NAME.match(name):
            raise ConfigError(
                "secret names use letters, digits, '.', '_' and '-'",
                file=manifest.path,
                key=f"secrets.{name}",
            )
    paths = StatePaths(topology.state_dir)
    messages: list[str] = []
    state_writes: dict[Path, bytes] = {}

    ca = None if rotate else load_ca(paths)
    if ca is None:
        ca = create_ca(topology.name)
        messages.append(
            "rotated: a new deployment CA; every server gets a new certificate"
            if rotate
            else "made a new deployment CA"
        )
    state_writes[paths.ca_key] = ca.key_pem
    state_writes[paths.ca_cert] = ca.cert_pem

    certs: dict[str, CertifiedKey] = {}
    reissued: list[str] = []
    for s in deploy:
        pair = None if rotate else load_server_cert(paths, s.name)
        reason = None if pair is None else reissue_reason(pair, ca.cert, s.name, s.addr)
        if pair is None or reason is not None:
            if reason is not None:
                reissued.append(f"{s.name} ({reason})")
            pair = issue_server_cert(ca, s.name, s.addr, deployment=topology.name)
        certs[s.name] = pair
        state_writes[paths.server_key(s.name)] = pair.key_pem
        state_writes[paths.server_cert(s.name)] = pair.cert_pem
    if reissued:
        messages.append(f"re-issued the certificate of {_names(reissued)}")

    old_values = {} if rotate else load_secrets(paths.secrets_file)
    values: dict[str, dict[str, str]] = {}
    stored: dict[str, dict[str, str]] = {}  # what the state keeps: a deployment-wide value under "*"
    for spec in manifest.secrets.values():
        old = old_values.get(spec.name, {})
        values[spec.name] = {}
        one_value = old.get(SHARED) if spec.scope == "deployment" else None
        if spec.scope == "deployment" and (one_value is None or len(one_value) != 2 * spec.nbytes):
            one_value = _new_token(spec.nbytes)
        for s in deploy:
            if s.has_any_role(spec.roles):
                value = one_value or old.get(s.name)
                if value is None or len(value) != 2 * spec.nbytes:
                    value = _new_token(spec.nbytes)
                values[spec.name][s.name] = value
        stored[spec.name] = {SHARED: one_value} if one_value is not None else values[spec.name]
    state_writes[paths.secrets_file] = secrets_to_bytes(stored)

    split_plan = _plan_split(topology, paths, names, rotate=rotate)
    messages.extend(split_plan.messages)
    split = split_plan.state
    if split is not None:
        state_writes[paths.split_file] = split.to_bytes()
        if split.threshold == 1 and n > 1:
            messages.append("threshold 1: each share alone is the whole deployment secret")
    secret = split_plan.secret
    if keep_secret:
        if secret is None and split is not None:
            secret = split.recover()
        if secret is not None:
            state_writes[paths.secret_file] = secret_to_bytes(secret)

    sensitive = [v for per in stored.values() for v in per.values()]
    if split is not None:
        sensitive += [format(v, "x") for v in split.shares.values()]
    if secret is not None:
        sensitive += [format(secret, "x"), format(secret, "064x")]
    env = make_environment(template_root or topology.source_dir)
    common = _common_context(topology, deploy)
    shared = split if n > 1 else None
    verifier = _verifier(shared) if shared is not None else None
    verifier_file = (
        shamir.verifier_file(topology.name, shared.threshold, verifier["commitments"])
        if shared is not None and verifier is not None
        else b""
    )
    verifier_sha256 = hashlib.sha256(verifier_file).hexdigest()  # once: every share pins it
    if verifier_file:
        state_writes[paths.verifier_file] = verifier_file
    plan: dict[str, dict[str, bytes]] = {}
    for s in deploy:
        plan[s.name] = _render_server(
            topology,
            manifest,
            s,
            split=shared,
            ca=ca,
            cert=certs[s.name],
            values=values,
            common=common,
            verifier=verifier,
            verifier_file=verifier_file,
            verifier_sha256=verifier_sha256,
            env=env,
            sensitive=sensitive,
        )

    pull = registry_credentials.pull_credential_file(topology) if topology.artifacts.registry else None
    if pull is not None:  # each server pulls packages with it; the manifest's files are all under files/
        for server_files in plan.values():
            server_files[registry_credentials.PULL_CREDENTIAL_FILE] = pull

    # Nothing was written up to here: from now on the plan is carried out.
    private_dir(paths.root)
    for d in (paths.ca_dir, paths.state_dir, paths.tls_dir, paths.overlay_dir):
        private_dir(d)
    write_private_all(state_writes.items())  # the state first: it is what a re-run keeps
    if not keep_secret:
        remove_path(paths.secret_file)
    if not verifier_file:
        remove_path(paths.verifier_file)
    for tls in paths.tls_dir.iterdir():
        if tls.name not in certs:
            remove_path(tls)
    wrote: set[Path] = set()
    for s in deploy:
        private_dir(paths.overlay_dir / s.name)
        if shamir.VERIFIER_FILE in plan[s.name]:  # the one verifier, linked into every overlay
            verifier_path = paths.overlay_dir / s.name / shamir.VERIFIER_FILE
            if link_private(paths.verifier_file, verifier_path):
                wrote.add(verifier_path)
    wrote |= write_private_all(
        (paths.overlay_dir / s.name / rel, data)
        for s in deploy
        for rel, data in plan[s.name].items()
        if rel != shamir.VERIFIER_FILE
    )
    servers: list[ServerOverlay] = []
    for s in deploy:
        base = paths.overlay_dir / s.name
        written = [rel for rel in plan[s.name] if base / rel in wrote]
        servers.append(
            ServerOverlay(
                server=s.name,
                files=tuple(sorted(plan[s.name])),
                written=tuple(sorted(written)),
                cert_sha256=cert_fingerprint(certs[s.name].cert),
                share_index=split.index_of(s.name) if split is not None and n > 1 else None,
            )
        )
    removed = _remove_stale(paths.overlay_dir, plan)

    return OverlayReport(
        deployment=topology.name,
        overlay_dir=paths.overlay_dir,
        total=n,
        threshold=t if n > 1 else None,
        secret_fingerprint=split.fingerprint if split is not None and n > 1 else None,
        servers=tuple(servers),
        removed=tuple(removed),
        messages=tuple(messages),
    )
