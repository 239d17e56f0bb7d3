"""Typed, validated model of a deploy.toml (what the loader returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flinger.remote.services import MANAGERS

PRIVILEGES = ("sudo", "pfexec", "none")
STORES = ("builder", "registry")
SERVICE_MANAGERS = tuple(MANAGERS)  # the one registry: flinger/remote/services.py


@dataclass(frozen=True)
class Server:
    name: str
    addr: str
    user: str | None = None
    port: int | None = None
    roles: tuple[str, ...] = ()
    privilege: str = "none"
    service_manager: str = "systemd"
    host_key: str | None = None  # "SHA256:..." pin
    python: str = "python3"
    # templates' `server.vars.NAME`: [deployment] vars, then this server's own over them
    vars: dict[str, Any] = field(default_factory=dict, hash=False)

    def has_any_role(self, roles: tuple[str, ...] | list[str]) -> bool:
        """True when `roles` contains "*" or one of this server's roles."""
        return "*" in roles or any(r in self.roles for r in roles)


@dataclass(frozen=True)
class Builder:
    server: str
    source_dir: str
    artifacts_dir: str = "out"

    @property
    def artifacts_path(self) -> str:
        """The artifacts dir on the builder (relative ones are under source_dir)."""
        if self.artifacts_dir.startswith(("/", "~", "$HOME")):
            return self.artifacts_dir
        return f"{self.source_dir.rstrip('/')}/{self.artifacts_dir}"


@dataclass(frozen=True)
class Deployment:
    servers: tuple[str, ...]
    staging_dir: str
    install_dir: str
    threshold: int
    keep_releases: int = 3  # releases (and their packages) kept on each server for rollback
    vars: dict[str, Any] = field(default_factory=dict, hash=False)  # every server's default vars


@dataclass(frozen=True)
class SshSettings:
    known_hosts: Path | None = None  # None: OpenSSH's own (UserKnownHostsFile from ssh_config)
    connect_timeout: float = 10.0
    command_timeout: float = 1800.0  # seconds one remote command may run before it counts as hung
    jump: str | None = None
    retries: int = 3
    use_ssh_config: bool = True
    config: Path | None = None  # the ssh_config read instead of ~/.ssh/config + /etc/ssh/ssh_config (as ssh -F)


@dataclass(frozen=True)
class Artifacts:
    """Where servers get packages: pushed by the builder over SSH ("builder"), or pulled from
    an OCI registry the builder publishes to ("registry")."""

    store: str = "builder"
    url: str | None = None  # https://HOST[:PORT] (http:// only for loopback, with plain_http)
    repository: str | None = None
    ca: Path | None = None  # CA bundle that verifies the registry (else the system's)
    username: str | None = None  # the builder's push credential (and the servers', unless pull_* say)
    password_file: Path | None = None
    pull_username: str | None = None
    pull_password_file: Path | None = None
    plain_http: bool = False

    @property
    def registry(self) -> bool:
        return self.store == "registry"

    def pull_credential(self) -> tuple[str, Path] | None:
        """(username, password file) the servers pull with, if the registry wants one."""
        if self.pull_username is not None and self.pull_password_file is not None:
            return self.pull_username, self.pull_password_file
        if self.username is not None and self.password_file is not None:
            return self.username, self.password_file
        return None


@dataclass(frozen=True)
class StateSettings:
    """[state]: the recipients the deployment's sealed state is encrypted to (public keys, as
    written: "ssh-ed25519 AAAA… alice" or "age1…"); none: the operator's own flinger identity."""

    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """A whole deploy.toml: where the client tree is, the builder, and the servers."""

    config_path: Path
    name: str
    source_dir: Path
    manifest: str
    builder: Builder
    deployment: Deployment
    ssh: SshSettings
    servers: dict[str, Server]
    sync_exclude: tuple[str, ...] = ()
    artifacts: Artifacts = field(default_factory=Artifacts)
    state: StateSettings = field(default_factory=StateSettings)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def manifest_path(self) -> Path:
        return (self.source_dir / self.manifest).resolve()

    @property
    def state_dir(self) -> Path:
        """Client-side state (overlay, logs) next to deploy.toml."""
        return self.config_path.parent / ".flinger" / self.name

    def builder_server(self) -> Server:
        return self.servers[self.builder.server]

    def deployment_servers(self) -> list[Server]:
        return [self.servers[n] for n in self.deployment.servers]

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)
