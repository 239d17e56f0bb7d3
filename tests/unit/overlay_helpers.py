"""Topology and Manifest objects built directly (no TOML, no network) for the overlay tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flinger.manifest.model import (
    Manifest,
    OverlayFile,
    Package,
    SecretSpec,
    Source,
)
from flinger.topology.model import (
    Builder,
    Deployment,
    Server,
    SshSettings,
    Topology,
)


def make_topology(
    root: Path,
    servers: dict[str, tuple[str, tuple[str, ...]]],
    *,
    threshold: int | None = None,
    name: str = "demo",
    builder: str = "build1",
) -> Topology:
    """A topology in `root` (deploy.toml need not exist): `servers` maps name -> (addr, roles);
    every one of them is a deployment server, plus a builder that is not."""
    all_servers = {n: Server(name=n, addr=addr, user="deploy", roles=roles) for n, (addr, roles) in servers.items()}
    all_servers[builder] = Server(name=builder, addr="build1.example.net", user="deploy")
    names = tuple(servers)
    return Topology(
        config_path=root / "deploy.toml",
        name=name,
        source_dir=root / "src",
        manifest="packaging/package-manifest.toml",
        builder=Builder(server=builder, source_dir="$HOME/src"),
        deployment=Deployment(
            servers=names,
            staging_dir="$HOME/flinger-staging",
            install_dir="/opt/demo",
            threshold=threshold if threshold is not None else len(names) // 2 + 1,
        ),
        ssh=SshSettings(known_hosts=root / "known_hosts"),
        servers=all_servers,
    )


ServerSpecs = dict[str, tuple[str, tuple[str, ...]]]


def nodes(count: int, roles: tuple[str, ...] = ("node",), prefix: str = "node") -> ServerSpecs:
    """`count` servers node1..nodeN on 10.0.x.y addresses."""
    return {f"{prefix}{i}": (f"10.0.{i // 250}.{i % 250 + 1}", roles) for i in range(1, count + 1)}


def make_manifest(
    root: Path,
    *,
    overlay: Iterable[OverlayFile] = (),
    package_roles: tuple[str, ...] = ("*",),
    secrets: Iterable[SecretSpec] = (),
    extra_packages: Iterable[Package] = (),
) -> Manifest:
    """A manifest with one package "app" carrying `overlay` files, plus `secrets`."""
    app = Package(
        name="app",
        service_name="app",
        roles=package_roles,
        source=Source(type="local", build=("true",)),
        overlay=tuple(overlay),
    )
    packages = {app.name: app}
    for p in extra_packages:
        packages[p.name] = p
    return Manifest(
        path=str(root / "src" / "packaging" / "package-manifest.toml"),
        packages=packages,
        secrets={s.name: s for s in secrets},
    )


def write_template(root: Path, rel: str, text: str) -> str:
    """Write a template under root/src and return its name relative to the source dir."""
    path = root / "src" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return rel
