"""`flinger check`: validate the topology against the package manifest, without any network."""

from __future__ import annotations

import glob
import ipaddress
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flinger.engine.plan import plan_deploy
from flinger.errors import ConfigError
from flinger.manifest.loader import manifest_error
from flinger.manifest.model import Manifest, Package
from flinger.secrets import registry_credentials
from flinger.tomlfile import Collector
from flinger.topology.model import Server, Topology


@dataclass(frozen=True)
class StoreInfo:
    """Where the servers' packages come from."""

    store: str
    url: str | None = None
    repository: str | None = None
    pull_credential: bool | None = None


@dataclass
class CheckReport:
    name: str
    config: str
    manifest: str
    threshold: int
    artifacts: StoreInfo = field(default_factory=lambda: StoreInfo("builder"))
    server_rows: list[tuple[str, ...]] = field(default_factory=list)
    package_rows: list[tuple[str, ...]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Real types for machines: booleans, lists (the rows are text for the table)."""

        def listed(text: str) -> list[str]:
            return [] if text in ("", "-") else text.split(",")

        return {
            "deployment": self.name,
            "config": self.config,
            "manifest": self.manifest,
            "threshold": self.threshold,
            "artifacts": {k: v for k, v in asdict(self.artifacts).items() if v is not None},
            "servers": [
                {
                    "server": server,
                    "addr": addr,
                    "roles": listed(roles),
                    "builder": builder == "yes",
                    "deploy": deploy == "yes",
                    "manager": manager,
                }
                for server, addr, roles, builder, deploy, manager in self.server_rows
            ],
            "packages": [
                {
                    "package": package,
                    "service": None if service == "-" else service,
                    "source": source,
                    "roles": listed(roles),
                    "servers": listed(servers),
                }
                for package, service, source, roles, servers in self.package_rows
            ],
            "warnings": self.warnings,
        }


def run_check(topology: Topology, manifest: Manifest) -> CheckReport:
    """Cross-check: paths exist, templates exist and render (services and overlays), every role
    a package names is held by a server."""
    report = CheckReport(
        name=topology.name,
        config=str(topology.config_path),
        manifest=manifest.path,
        threshold=topology.deployment.threshold,
    )
    deploy = topology.deployment_servers()
    for server in topology.servers.values():
        addr = server.addr if server.port is None else f"{server.addr}:{server.port}"
        report.server_rows.append(
            (
                server.name,
                addr,
                ",".join(server.roles) or "-",
                "yes" if server.name == topology.builder.server else "",
                "yes" if server.name in topology.deployment.servers else "",
                server.service_manager,
            )
        )
    held = {role for s in deploy for role in s.roles}
    for pkg in manifest.packages.values():
        for i, role in enumerate(pkg.roles):
            if role != "*" and role not in held:
                key = f"packages.{pkg.name}.roles.{i}"
                report.warnings.append(manifest_error(manifest, key, f'no deployment server has role "{role}"').message)
        _check_package_files(topology, manifest, pkg)
        getting = [s.name for s in deploy if s.has_any_role(pkg.roles)]
        report.package_rows.append(
            (
                pkg.name,
                pkg.service_name if pkg.service else "-",
                pkg.source.type,
                ",".join(pkg.roles),
                ",".join(getting) or "-",
            )
        )
    _render_every_service(topology, manifest, deploy)
    report.warnings.extend(_probes_others_may_answer(manifest, deploy))
    # the overlay templates, with throwaway secrets: nothing read or written (imported here:
    # the CA's x509 it needs is no cost for the commands that only import this module)
    from flinger.overlay.sample import render_sample

    render_sample(topology, manifest)
    report.artifacts = check_artifacts(topology)
    for spec in manifest.secrets.values():
        for role in (*spec.roles, *spec.visible_to):
            if role != "*" and role not in held:
                report.warnings.append(f'{manifest.path}: secrets.{spec.name}: no deployment server has role "{role}"')
    return report


def _probes_others_may_answer(manifest: Manifest, deploy: list[Server]) -> list[str]:
    """A health URL naming this machine (localhost, 127.x, ::1) on servers that share one
    network (the same address, or loopback addresses of one machine, as the sandbox's): a
    probe on one of them may be answered by another's process."""
    said = []
    for pkg in manifest.packages.values():
        health = pkg.service.health if pkg.service is not None else None
        host = _probe_host(health.url if health is not None else None)
        if host is None or (host != "localhost" and not _is_loopback(host)):
            continue
        servers = [s for s in deploy if s.has_any_role(pkg.roles)]
        addrs = Counter(s.addr for s in servers)
        shared = [s.name for s in servers if _is_loopback(s.addr) or addrs[s.addr] > 1]
        if len(shared) > 1:
            why = (f"{host} on {', '.join(shared)}, which share one network: another server's process may "
                   "answer the probe; name the server's own address: {{ server.addr }}")  # fmt: skip
            said.append(manifest_error(manifest, f"packages.{pkg.name}.service.health.url", why).message)
    return said


def _probe_host(url: str | None) -> str | None:
    """The host an http(s) health URL names as written (None: no URL, or one made by a
    placeholder, or not a URL at all: rendering it says what is wrong)."""
    try:
        host = urlsplit(url).hostname if url else None
    except ValueError:
        return None
    return None if host is None or "{" in host else host


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_package_files(topology: Topology, manifest: Manifest, pkg: Package) -> None:
    """The client's files a package names: its paths (when no build command makes them) and
    its overlay templates."""
    if pkg.source.type == "local" and not pkg.source.build:
        # Without build commands every path must already exist in the client's tree.
        for i, mapping in enumerate(pkg.source.paths):
            if not glob.glob(str(topology.source_dir / mapping.src)):
                raise manifest_error(
                    manifest,
                    f"packages.{pkg.name}.source.paths.{i}.from",
                    f'"{mapping.src}" matches nothing under {topology.source_dir}',
                )
    for i, overlay in enumerate(pkg.overlay):
        if not _is_file(topology.source_dir / overlay.template):
            raise manifest_error(
                manifest,
                f"packages.{pkg.name}.overlay.{i}.template",
                f'template "{overlay.template}" not found under {topology.source_dir}',
            )


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; False, not an exception, for a name too long or unreadable."""
    try:
        return path.is_file()
    except OSError:
        return False


def check_artifacts(topology: Topology) -> StoreInfo:
    """Where packages come from; for a registry, its password files and CA read as a deploy
    will (the user's alone, not empty, certificates), so a problem shows here first."""
    art = topology.artifacts
    if not art.registry:
        return StoreInfo(art.store)
    registry_credentials.push_credential(topology)
    registry_credentials.pull_credential(topology)
    registry_credentials.ca_pem(topology)
    return StoreInfo("registry", art.url, art.repository, art.pull_credential() is not None)


def _render_every_service(topology: Topology, manifest: Manifest, deploy: list[Server]) -> None:
    """Render each server's services as `deploy` would, so an undefined placeholder or a value
    a unit file cannot hold is found now, with its file, line and key, not mid-deploy. The
    same error on several servers is said once."""
    errors = Collector()
    seen: set[tuple[str | None, str]] = set()
    for server in deploy:
        try:
            plan_deploy(topology, manifest, [server], stored={})  # the services only
        except ConfigError as exc:
            what = (exc.key, exc.reason.split(" (rendering it for server")[0])
            if what not in seen:
                seen.add(what)
                errors.errors.append(exc)
    errors.raise_any()
