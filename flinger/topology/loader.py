"""Load and validate deploy.toml into a `Topology` (no network, nothing touched)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from flinger.errors import ConfigError, UsageError
from flinger.tomlfile import Fields, TomlFile, load_toml, locate, suggest
from flinger.topology.model import (
    PRIVILEGES,
    SERVICE_MANAGERS,
    Builder,
    Deployment,
    Server,
    SshSettings,
    Topology,
)

TOP_KEYS = ("name", "source_dir", "manifest", "builder", "deployment", "ssh", "sync", "servers")
BUILDER_KEYS = ("server", "source_dir", "artifacts_dir")
DEPLOYMENT_KEYS = ("servers", "staging_dir", "install_dir", "threshold")
SSH_KEYS = ("known_hosts", "connect_timeout", "command_timeout", "jump", "retries", "use_ssh_config")
SYNC_KEYS = ("exclude",)
SERVER_KEYS = (
    "addr",
    "user",
    "port",
    "roles",
    "privilege",
    "service_manager",
    "host_key",
    "python",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


def find_config(explicit: Path | None) -> Path:
    """`-c PATH`, else ./deploy.toml, else $FLINGER_CONFIG."""
    if explicit is not None:
        return explicit
    local = Path("deploy.toml")
    if local.exists():
        return local
    env = os.environ.get("FLINGER_CONFIG")
    if env:
        return Path(env)
    raise UsageError("no deploy.toml here: pass -c PATH or set FLINGER_CONFIG")


def _remote_path(f: Fields, name: str, default: str | None = None) -> str:
    value = f.string(name, default, required=default is None)
    if not value.startswith(("/", "~", "$HOME")):
        raise f.error(name, f'must be absolute or start with ~ or $HOME, got "{value}"')
    return value


def _server(file: TomlFile, name: str, table: object) -> Server:
    key = f"servers.{name}"
    if not _NAME.match(name):
        raise file.error(key, "server names use letters, digits, '.', '_' and '-'")
    f = file.table(key, table, SERVER_KEYS)
    roles = f.str_list("roles")
    for i, role in enumerate(roles):
        if not role.strip():
            raise f.error(f"roles.{i}", "a role must not be empty")
    host_key = f.opt_str("host_key")
    if host_key is not None and not _FINGERPRINT.match(host_key):
        raise f.error("host_key", 'expected "SHA256:" and 43 base64 characters, as ssh-keygen -l prints')
    port = f.integer("port", low=1, high=65535) if f.has("port") else None
    return Server(
        name=name,
        addr=f.string("addr", required=True),
        user=f.opt_str("user"),
        port=port,
        roles=roles,
        privilege=f.choice("privilege", PRIVILEGES, "none"),
        service_manager=f.choice("service_manager", SERVICE_MANAGERS, "systemd"),
        host_key=host_key,
        python=f.string("python", "python3"),
    )


def _known_server(f: Fields, key: str, name: str, servers: dict[str, Server]) -> None:
    if name not in servers:
        raise f.error(key, f'no server named "{name}" in [servers]{suggest(name, servers)}')


def load_topology(path: Path) -> Topology:
    """Read and validate `path`; every problem is a ConfigError naming file, line and key."""
    file = load_toml(path)
    top = file.table("", file.data, TOP_KEYS)

    raw_servers = top.table.get("servers")
    if not isinstance(raw_servers, dict) or not raw_servers:
        raise file.error("servers", "at least one server is needed in [servers]")
    servers = {name: _server(file, name, table) for name, table in raw_servers.items()}
    seen_addr: dict[tuple[str, int | None, str | None], str] = {}
    for server in servers.values():
        ident = (server.addr, server.port, server.user)
        if ident in seen_addr:
            raise file.error(
                f"servers.{server.name}.addr",
                f'same address, port and user as server "{seen_addr[ident]}"',
            )
        seen_addr[ident] = server.name

    b = top.sub("builder", BUILDER_KEYS, required=True)
    builder_name = b.string("server", required=True)
    _known_server(b, "server", builder_name, servers)
    builder = Builder(
        server=builder_name,
        source_dir=_remote_path(b, "source_dir"),
        artifacts_dir=b.string("artifacts_dir", "out"),
    )

    d = top.sub("deployment", DEPLOYMENT_KEYS, required=True)
    names = d.str_list("servers", required=True)
    if not names:
        raise d.error("servers", "name at least one deployment server")
    seen: set[str] = set()
    for i, name in enumerate(names):
        _known_server(d, f"servers.{i}", name, servers)
        if name in seen:
            raise d.error(f"servers.{i}", f'"{name}" is listed twice')
        seen.add(name)
    majority = len(names) // 2 + 1
    threshold = d.integer("threshold", majority)
    if not 1 <= threshold <= len(names):
        raise d.error(
            "threshold",
            f"must be between 1 and the number of deployment servers ({len(names)}), got {threshold}",
        )
    deployment = Deployment(
        servers=names,
        staging_dir=_remote_path(d, "staging_dir", "$HOME/flinger-staging"),
        install_dir=_remote_path(d, "install_dir"),
        threshold=threshold,
    )

    s = top.sub("ssh", SSH_KEYS)
    known_hosts = s.string("known_hosts", "~/.ssh/known_hosts")
    if not known_hosts.startswith(("/", "~", "$HOME")):
        known_hosts = str(path.parent / known_hosts)
    jump = s.opt_str("jump")
    ssh = SshSettings(
        known_hosts=Path(os.path.expandvars(os.path.expanduser(known_hosts))),
        connect_timeout=s.number("connect_timeout", 10.0),
        command_timeout=s.number("command_timeout", 1800.0),
        jump=jump,
        retries=s.integer("retries", 3, low=0, high=10),
        use_ssh_config=s.flag("use_ssh_config", True),
    )

    sync = top.sub("sync", SYNC_KEYS)
    source = Path(os.path.expandvars(os.path.expanduser(top.string("source_dir", required=True))))
    if not source.is_absolute():
        source = (path.parent / source).resolve()
    manifest = top.string("manifest", "packaging/package-manifest.toml")
    name = top.string("name", path.stem)
    if not _NAME.match(name):
        raise top.error("name", "use letters, digits, '.', '_' and '-'")

    return Topology(
        config_path=path.resolve(),
        name=name,
        source_dir=source,
        manifest=manifest,
        builder=builder,
        deployment=deployment,
        ssh=ssh,
        servers=servers,
        sync_exclude=sync.str_list("exclude"),
        lines=file.lines,
    )


def config_error(topology: Topology, key: str, message: str) -> ConfigError:
    """A ConfigError about `key` of an already loaded topology."""
    return ConfigError(message, file=topology.config_path, line=locate(topology.lines, key), key=key)
