"""Typed model of a package manifest (packaging/package-manifest.toml in the deployed project)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flinger.protocol.plans import DirSpec, UserSpec


@dataclass(frozen=True)
class PathMapping:
    """Copy `src` (a file, directory or glob, relative to the builder's source tree) to `dst`
    (relative to the package root)."""

    src: str
    dst: str


@dataclass(frozen=True)
class Source:
    type: str  # "local" | "prebuilt" | "composite"
    build: tuple[str, ...] = ()  # local: shell commands run in the source tree on the builder
    paths: tuple[PathMapping, ...] = ()  # local
    inputs: tuple[str, ...] = ()  # local: globs of the files the build commands read (lets the cache skip them)
    url: str | None = None  # prebuilt
    sha256: str | None = None  # prebuilt
    to: str | None = None  # prebuilt: where a non-tarball download goes in the package
    packages: tuple[str, ...] = ()  # composite


@dataclass(frozen=True)
class HealthCheck:
    url: str | None = None  # http(s)://... ; {{ }} placeholders allowed
    command: str | None = None
    timeout: float = 30.0  # seconds until the service counts as unhealthy
    interval: float = 0.5
    ca: str | None = None  # path (placeholders allowed) of a CA bundle for an https url


@dataclass(frozen=True)
class Service:
    command: str
    working_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    group: str | None = None
    restart: str = "on-failure"  # always | on-failure | no
    restart_sec: float = 5.0
    after: tuple[str, ...] = ()  # other service names this one starts after (and waits healthy)
    limits: dict[str, int] = field(default_factory=dict)  # nofile, nproc
    log_file: str | None = None
    health: HealthCheck | None = None
    # run on the server in the new release's dir before `current` moves (like `nginx -t`)
    validate: str | None = None


@dataclass(frozen=True)
class OverlayFile:
    """A per-server file rendered on the client from a jinja2 template."""

    template: str  # relative to the client's source_dir
    dest: str  # relative to the server's overlay dir
    roles: tuple[str, ...] = ("*",)  # servers with one of these roles get it
    mode: int = 0o600


@dataclass(frozen=True)
class Package:
    name: str
    service_name: str
    roles: tuple[str, ...]
    source: Source
    version: str = "0.0.0"
    setup_hint: str | None = None
    service: Service | None = None
    overlay: tuple[OverlayFile, ...] = ()
    line: int | None = None


@dataclass(frozen=True)
class SecretSpec:
    """A secret (a random token) for each server with one of `roles`: its own per server
    (`scope = "server"`; the templates of servers with a role in `visible_to` may see every
    server's value), or one value they all share (`scope = "deployment"`: the same on every
    such server, kept when roles move, changed only by `overlay --rotate`). A `given` secret is
    not made by flinger: its value is issued elsewhere and set with `flinger secret set`
    (kept by `--rotate`)."""

    name: str
    roles: tuple[str, ...]
    visible_to: tuple[str, ...] = ()
    nbytes: int = 32
    scope: str = "server"  # server | deployment
    given: bool = False


@dataclass(frozen=True)
class Prereqs:
    """Prerequisites of the builder ("builder"), every server ("*") or one role."""

    target: str
    apt: tuple[str, ...] = ()
    pkg: tuple[str, ...] = ()  # illumos
    sysctl: dict[str, str] = field(default_factory=dict)
    users: tuple[UserSpec, ...] = ()
    groups: tuple[str, ...] = ()
    dirs: tuple[DirSpec, ...] = ()
    script: str | None = None  # relative to the source tree, run with sh


@dataclass(frozen=True)
class Manifest:
    path: str
    packages: dict[str, Package]
    secrets: dict[str, SecretSpec] = field(default_factory=dict)
    prereqs: tuple[Prereqs, ...] = ()

    def packages_for(self, roles: tuple[str, ...]) -> list[Package]:
        """Packages a server with `roles` gets (composites expand to their members)."""
        return [p for p in self.packages.values() if "*" in p.roles or set(p.roles) & set(roles)]
