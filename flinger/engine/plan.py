"""The deploy plan: for each server, what the builder pushes (or, with a registry, what the
server pulls), which overlay files the client sends, and what the remote tool installs and
starts. Pure data: no host is contacted, so `--dry-run` prints exactly this, and it holds no
secret (overlay files by name only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flinger.errors import ConfigError, FlingerError
from flinger.manifest.loader import manifest_error
from flinger.manifest.model import Manifest, Package
from flinger.overlay.public import stored_free_of_secrets
from flinger.overlay.store import read_index
from flinger.protocol import graph
from flinger.protocol.codec import encode
from flinger.protocol.plans import Owner, ServiceSpec
from flinger.topology.model import Server, Topology


@dataclass
class ServerPlan:
    """One server's part of `deploy install`: its dependency wave, packages, overlay files
    (names only: the plan holds no secret) and rendered services."""

    server: str
    addr: str
    wave: int
    packages: list[str]
    overlay_files: list[str]
    services: list[ServiceSpec]
    staging_dir: str
    install_dir: str
    overlay_owner: Owner | None = None
    overlay_public: list[str] = field(default_factory=list)  # of overlay_files, those that hold no secret
    registry: str | None = None  # "URL/REPOSITORY" when the server pulls its packages from there
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        runs = f"{self.staging_dir}/runs/{staging_key(self.install_dir)}/<run>"
        delivery: dict[str, Any] = (
            {
                "step": "push",
                "by": "builder",
                "only": "packages the server does not have unpacked (it says which, holding the lock)",
            }
            if self.registry is None
            else {
                "step": "pull",
                "by": "server, in its install (the builder publishes the build once per run)",
                "from": self.registry,
                "only": "packages the server does not have unpacked, each checked against its sha256",
            }
        )
        return {
            "server": self.server,
            "addr": self.addr,
            "wave": self.wave,
            "steps": [
                {
                    "step": "lock",
                    "path": f"{self.install_dir}/.flinger/lock",
                    "tool": f"{self.staging_dir}/flinger-remote.pyz",
                },
                {**delivery, "to": f"{runs}/packages", "files": [f"{p}.tar.gz" for p in self.packages]},
                {
                    "step": "overlay",
                    "by": "client, in the install's plan",
                    "to": f"{runs}/overlay",
                    "files": self.overlay_files,
                },
                {
                    "step": "install",
                    "install_dir": self.install_dir,
                    "packages": self.packages,
                    "overlay_owner": encode(self.overlay_owner),
                    "services": [
                        {
                            "name": s.name,
                            "package": s.package,
                            "manager": s.manager,
                            "after": s.after,
                            "health": encode(s.health),
                            "validate": s.validate,
                            "files": sorted(s.files),
                        }
                        for s in self.services
                    ],
                },
                {"step": "unlock"},
            ],
            "notes": self.notes,
        }


def staging_key(install_dir: str) -> str:
    """The name of an install dir's runs directory under the staging dir (`/opt/q` -> `opt_q`):
    two deployments sharing a staging dir never clean up each other's runs."""
    return install_dir.strip("/").replace("/", "_").replace("$", "").replace("~", "home") or "root"


def staging_runs_dir(staging: str, install_dir: str) -> str:
    """Where runs stage for this install dir: `<staging>/runs/<key>/<run id>/`, the key from
    the install dir as deploy.toml spells it (`~/app` -> `home_app`: known before $HOME is)."""
    return f"{staging}/runs/{staging_key(install_dir)}"


def template_context(topology: Topology, server: Server, package: Package | None = None) -> dict[str, Any]:
    """What a service definition's {{ }} placeholders may use (no secrets in here)."""
    dep = topology.deployment
    context: dict[str, Any] = {
        "server": {
            "name": server.name,
            "addr": server.addr,
            "roles": list(server.roles),
            "port": server.port,
            "user": server.user,
            "vars": dict(server.vars),
        },
        "servers": [{"name": s.name, "addr": s.addr, "roles": list(s.roles)} for s in topology.deployment_servers()],
        "deployment": {
            "name": topology.name,
            "install_dir": dep.install_dir,
            "staging_dir": dep.staging_dir,
            "threshold": dep.threshold,
            "n": len(dep.servers),
        },
        "install_dir": dep.install_dir,
    }
    if package is not None:
        context["package"] = {
            "name": package.name,
            "version": package.version,
            "dir": f"{dep.install_dir}/current/{package.name}",
        }
    return context


def _waves(manifest: Manifest, plans: dict[str, list[Package]]) -> dict[str, int]:
    """Servers whose services others start `after` go in earlier waves (e.g. a scheduler
    before its workers), so cross-server ordering holds; within a wave all run in parallel."""
    after = {p.service_name: list(p.service.after) for p in manifest.packages.values() if p.service}
    try:
        depth = graph.depth(after)
    except graph.Cycle as exc:
        raise FlingerError(f"services depend on each other in a cycle: {exc}") from None
    return {
        server: max((depth[p.service_name] for p in pkgs if p.service), default=0) for server, pkgs in plans.items()
    }


def _overlay_owner(packages: list[Package]) -> Owner | None:
    """The overlay is private (0600/0700): it belongs to the one service user that must read
    it. Root-run services read it anyway; with two different service users, root keeps it."""
    users = {
        (p.service.user, p.service.group or p.service.user)
        for p in packages
        if p.service is not None and p.service.user not in (None, "root")
    }
    if len(users) != 1:
        return None
    user, group = users.pop()
    assert user is not None and group is not None
    return Owner(user, group)


def _service_plan(topology: Topology, server: Server, pkg: Package) -> ServiceSpec:
    from flinger.service_render import render_definition, render_health, render_validate, resolve_service

    assert pkg.service is not None
    context = template_context(topology, server, pkg)
    smf_dir = topology.source_dir / "smf" / pkg.service_name
    resolved = resolve_service(pkg.service, pkg.service_name, context)
    files = render_definition(resolved, server.service_manager, context, smf_dir if smf_dir.is_dir() else None)
    return ServiceSpec(
        name=pkg.service_name,
        package=pkg.name,
        manager=server.service_manager,
        files=files,
        after=list(pkg.service.after),
        health=render_health(pkg.service, context, pkg.service_name),
        log_files=[resolved.log_file] if resolved.log_file else [],
        validate=render_validate(pkg.service, context, pkg.service_name),
    )


def _in_manifest(manifest: Manifest, package: str, server: str, exc: ConfigError) -> ConfigError:
    """A rendering error as the manifest's own: its file, the line and the real key path
    (`services.NAME.command` is `packages.PKG.service.command` there), and for which server."""
    if exc.file is not None:  # already names its file (a shipped smf/ override)
        return exc
    parts = (exc.key or "").split(".", 2)
    key = f"packages.{package}.service" + (f".{parts[2]}" if len(parts) == 3 else "")
    return manifest_error(manifest, key, f"{exc.reason} (rendering it for server {server})")


def plan_deploy(
    topology: Topology, manifest: Manifest, servers: list[Server], stored: dict[str, list[str]] | None = None
) -> list[ServerPlan]:
    """Per-server plans, in wave order then topology order; `stored`: each server's overlay
    file names (default: the state's index)."""
    packages = {s.name: manifest.packages_for(s.roles) for s in servers}
    waves = _waves(manifest, packages)
    plans = []
    public: dict[str, list[str]] = {}
    if stored is None:
        index = read_index(topology.state_dir)  # names only: no identity needed
        stored = index.overlays if index is not None else {}
        public = stored_free_of_secrets(topology, manifest, servers, index.made_from if index is not None else None)
    art = topology.artifacts
    for server in servers:
        overlay_files = list(stored.get(server.name, []))
        services = []
        for pkg in packages[server.name]:
            if pkg.service is None:
                continue
            try:
                services.append(_service_plan(topology, server, pkg))
            except ConfigError as exc:
                raise _in_manifest(manifest, pkg.name, server.name, exc) from None
        plan = ServerPlan(
            server=server.name,
            addr=server.addr,
            wave=waves[server.name],
            packages=[p.name for p in packages[server.name]],
            overlay_files=overlay_files,
            services=services,
            staging_dir=topology.deployment.staging_dir,
            install_dir=topology.deployment.install_dir,
            overlay_owner=_overlay_owner(packages[server.name]),
            overlay_public=sorted(set(public.get(server.name, [])) & set(overlay_files)),
            registry=f"{art.url}/{art.repository}" if art.registry else None,
        )
        if not overlay_files:
            plan.notes.append("no overlay for this server yet: run `flinger overlay` first")
        if not plan.packages:
            plan.notes.append("no package is meant for this server's roles")
        plans.append(plan)
    return sorted(plans, key=lambda p: p.wave)
