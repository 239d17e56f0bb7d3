"""Load and validate deploy.toml into a `Topology` (no network, nothing touched)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flinger.errors import ConfigError, UsageError
from flinger.tomlfile import Collector, Fields, TomlFile, load_toml, locate, suggest
from flinger.topology.model import (
    PRIVILEGES,
    SERVICE_MANAGERS,
    STORES,
    Artifacts,
    Builder,
    Deployment,
    Server,
    SshSettings,
    StateSettings,
    Topology,
)
from flinger.values import host_problem, jump_problem, name_problem, remote_path_problem, user_problem

TOP_KEYS = (
    "name", "source_dir", "manifest", "builder", "deployment", "ssh", "sync", "servers", "artifacts", "state", "roles",
)  # fmt: skip
ROLE_KEYS = ("vars",)
ARTIFACTS_KEYS = (
    "store",
    "url",
    "repository",
    "ca",
    "username",
    "password_file",
    "pull_username",
    "pull_password_file",
    "plain_http",
)
BUILDER_KEYS = ("server", "source_dir", "artifacts_dir")
DEPLOYMENT_KEYS = ("servers", "staging_dir", "install_dir", "threshold", "keep_releases", "vars")
SSH_KEYS = ("known_hosts", "connect_timeout", "command_timeout", "jump", "retries", "use_ssh_config", "config")
SYNC_KEYS = ("exclude",)
STATE_KEYS = ("recipients",)
SERVER_KEYS = (
    "addr",
    "user",
    "port",
    "roles",
    "privilege",
    "service_manager",
    "host_key",
    "python",
    "vars",
)
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
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
    return f.checked(name, value, remote_path_problem(value, home=True))


def _server(file: TomlFile, name: str, table: object) -> Server:
    key = f"servers.{name}"
    if (problem := name_problem(name, "a server name")) is not None:
        raise file.error(key, problem)
    f = file.table(key, table, SERVER_KEYS)
    roles = f.str_list("roles")
    for i, role in enumerate(roles):
        f.checked(f"roles.{i}", role, name_problem(role, "a role name"))
    host_key = f.opt_str("host_key")
    if host_key is not None and not _FINGERPRINT.match(host_key):
        raise f.error("host_key", 'expected "SHA256:" and 43 base64 characters, as ssh-keygen -l prints')
    port = f.integer("port", low=1, high=65535) if f.has("port") else None
    addr = f.string("addr", required=True)
    user = f.opt_str("user")
    python = f.string("python", "python3")
    if not python.startswith("/"):
        f.checked("python", python, name_problem(python, "a program name or an absolute path"))
    else:
        f.checked("python", python, remote_path_problem(python, home=False))
    return Server(
        name=name,
        addr=f.checked("addr", addr, host_problem(addr)),
        user=f.checked("user", user, user_problem(user)) if user is not None else None,
        port=port,
        roles=roles,
        privilege=f.choice("privilege", PRIVILEGES, "none"),
        service_manager=f.choice("service_manager", SERVICE_MANAGERS, "systemd"),
        host_key=host_key,
        python=python,
        vars=f.variables("vars"),
    )


def _client_path(base: Path, value: str) -> Path:
    """A path on the client: ~ and $VARS expanded, relative ones next to deploy.toml."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return expanded if expanded.is_absolute() else base / expanded


def _registry_url(f: Fields, plain_http: bool) -> str:
    url = f.string("url", required=True)
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise f.error("url", 'expected "https://HOST[:PORT]" with a port between 1 and 65535') from None
    if parts.scheme not in ("https", "http") or not host:
        raise f.error("url", 'expected "https://HOST[:PORT]"')
    if parts.username is not None or parts.password is not None:
        raise f.error("url", "no credentials in the URL: use username and password_file")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise f.error("url", 'expected "https://HOST[:PORT]" with no path (the repository has its own key)')
    f.checked("url", host, host_problem(host))
    if port is not None and not 1 <= port <= 65535:
        raise f.error("url", "the port must be between 1 and 65535")
    if parts.scheme == "http":
        from flinger.remote.registry import is_loopback  # the servers' own rule; HTTP code only here

        if not plain_http:
            raise f.error(
                "url",
                "plain http sends packages and credentials in the clear: use https "
                "(or, for a registry on a loopback address, set plain_http = true)",
            )
        if not is_loopback(host):
            raise f.error("url", "plain http is only allowed to a loopback registry (127.0.0.0/8, ::1, localhost)")
    return url.rstrip("/")


def _artifacts(f: Fields, base: Path) -> Artifacts:
    """[artifacts]; the registry keys are checked whenever they are there (a table kept while
    store is "builder" is still right when it changes), and required with store = "registry"."""
    store = f.choice("store", STORES, "builder")
    if store == "builder" and not any(f.has(k) for k in ARTIFACTS_KEYS if k != "store"):
        return Artifacts()
    plain_http = f.flag("plain_http", False)
    registry = store == "registry"
    url = _registry_url(f, plain_http) if registry or f.has("url") else None
    repository = f.string("repository", required=registry)
    if repository is not None and (len(repository) > 255 or not _REPOSITORY.match(repository)):
        raise f.error(
            "repository",
            "an OCI repository name: lowercase letters and digits, parts joined "
            "by '.', '_', '-' and '/' (e.g. flinger/quorum)",
        )
    ca = f.opt_str("ca")
    users: dict[str, str | None] = {}
    for user_key, file_key in (("username", "password_file"), ("pull_username", "pull_password_file")):
        user = f.opt_str(user_key)
        if user is not None and ":" in user:
            raise f.error(user_key, "a user name without ':'")
        if (user is None) != (not f.has(file_key)):
            raise f.error(file_key if user is not None else user_key, f"{user_key} and {file_key} go together")
        users[user_key] = user
    return Artifacts(
        store=store,
        url=url,
        repository=repository,
        ca=_client_path(base, ca) if ca else None,
        username=users["username"],
        password_file=_client_path(base, f.string("password_file")) if users["username"] is not None else None,
        pull_username=users["pull_username"],
        pull_password_file=(
            _client_path(base, f.string("pull_password_file")) if users["pull_username"] is not None else None
        ),
        plain_http=plain_http,
    )


def _known_server(f: Fields, key: str, name: str, servers: Iterable[str]) -> None:
    if name not in servers:
        raise f.error(key, f'no server named "{name}" in [servers]{suggest(name, servers)}')


def _servers(file: TomlFile, top: Fields, errors: Collector) -> tuple[list[str], dict[str, Server]]:
    """The [servers] tables: every name (references are checked against these, loaded or
    not) and the servers that loaded; two servers at one address, port and user refused."""
    raw_servers = top.tables("servers")
    if not raw_servers:
        raise file.error("servers", "at least one server is needed in [servers]")
    servers: dict[str, Server] = {}
    for server_name, table in raw_servers.items():
        loaded = errors.attempt(functools.partial(_server, file, server_name, table))
        if loaded is not None:
            servers[server_name] = loaded
    seen_addr: dict[tuple[str, int | None, str | None], str] = {}
    for server in servers.values():
        ident = (server.addr, server.port, server.user)
        if ident in seen_addr:
            errors.errors.append(
                file.error(f"servers.{server.name}.addr", f'same address, port and user as server "{seen_addr[ident]}"')
            )
        seen_addr[ident] = server.name
    return list(raw_servers), servers


def _builder(top: Fields, names_known: list[str]) -> Builder:
    b = top.sub("builder", BUILDER_KEYS, required=True)
    builder_name = b.string("server", required=True)
    _known_server(b, "server", builder_name, names_known)
    artifacts = b.string("artifacts_dir", "out")
    problem = remote_path_problem(
        artifacts if artifacts.startswith(("/", "~", "$HOME")) else f"/{artifacts}", home=True
    )
    return Builder(
        server=builder_name,
        source_dir=_remote_path(b, "source_dir"),
        artifacts_dir=b.checked("artifacts_dir", artifacts, problem),
    )


def _deployment(top: Fields, names_known: list[str]) -> Deployment:
    d = top.sub("deployment", DEPLOYMENT_KEYS, required=True)
    names = d.str_list("servers", required=True)
    if not names:
        raise d.error("servers", "name at least one deployment server")
    seen: set[str] = set()
    for i, name in enumerate(names):
        _known_server(d, f"servers.{i}", name, names_known)
        if name in seen:
            raise d.error(f"servers.{i}", f'"{name}" is listed twice')
        seen.add(name)
    majority = len(names) // 2 + 1
    threshold = d.integer("threshold", majority)
    if not 1 <= threshold <= len(names):
        raise d.error(
            "threshold", f"must be between 1 and the number of deployment servers ({len(names)}), got {threshold}"
        )
    return Deployment(
        servers=names,
        staging_dir=_remote_path(d, "staging_dir", "$HOME/flinger-staging"),
        install_dir=_remote_path(d, "install_dir"),
        threshold=threshold,
        keep_releases=d.integer("keep_releases", 3, low=1, high=100),
        vars=d.variables("vars"),
    )


def _ssh(top: Fields, path: Path) -> SshSettings:
    s = top.sub("ssh", SSH_KEYS)
    known_hosts = s.opt_str("known_hosts")
    if known_hosts is not None and not known_hosts.startswith(("/", "~", "$HOME")):
        known_hosts = str(path.parent / known_hosts)
    jump = s.opt_str("jump")
    return SshSettings(
        known_hosts=Path(os.path.expandvars(os.path.expanduser(known_hosts))) if known_hosts is not None else None,
        connect_timeout=s.number("connect_timeout", 10.0),
        command_timeout=s.number("command_timeout", 1800.0),
        jump=s.checked("jump", jump, jump_problem(jump)) if jump is not None else None,
        retries=s.integer("retries", 3, low=0, high=10),
        use_ssh_config=s.flag("use_ssh_config", True),
        config=_ssh_config_file(s, path),
    )


def _state(top: Fields) -> StateSettings:
    """[state] recipients: who the deployment's sealed state is encrypted to."""
    from flinger.secrets.sealing import parse_recipient

    s = top.sub("state", STATE_KEYS)
    if not s.has("recipients"):
        return StateSettings()
    texts = s.str_list("recipients")
    if not texts:
        raise s.error("recipients", "is empty: name at least one recipient, or leave [state] out (your own identity)")
    seen: set[str] = set()
    for i, text in enumerate(texts, 1):
        try:
            recipient = parse_recipient(text)
        except ValueError as e:
            raise s.error("recipients", f"entry {i}: {e}") from None
        if recipient.canonical in seen:
            raise s.error("recipients", f"entry {i}: the same key twice")
        seen.add(recipient.canonical)
    return StateSettings(recipients=texts)


def _ssh_config_file(s: Fields, path: Path) -> Path | None:
    """[ssh] config: an ssh_config file that must exist (an Include of nothing says nothing)."""
    value = s.opt_str("config")
    if value is None:
        return None
    local = _local_path(value, path)
    if not local.is_file():
        raise s.error("config", f"no ssh_config file at {local}")
    return local


def _local_path(value: str | None, path: Path) -> Path:
    """A path on the client: ~ and $VARS expanded, relative to deploy.toml's directory."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value or "")))
    return expanded if expanded.is_absolute() else path.parent / expanded


def _top_level(top: Fields, path: Path) -> tuple[Path, str, str, tuple[str, ...]]:
    sync = top.sub("sync", SYNC_KEYS)
    source = Path(os.path.expandvars(os.path.expanduser(top.string("source_dir", required=True))))
    if not source.is_absolute():
        source = (path.parent / source).resolve()
    manifest = top.string("manifest", "packaging/package-manifest.toml")
    name = top.string("name", path.stem)
    if (problem := name_problem(name, "a deployment name")) is not None:
        raise top.error("name", problem)
    return source, manifest, name, sync.str_list("exclude")


def _role_vars(file: TomlFile, top: Fields, servers: dict[str, Server]) -> dict[str, dict[str, Any]]:
    """[roles.NAME] tables: each role's vars (a role no server holds is a typo: refused)."""
    held = sorted({role for s in servers.values() for role in s.roles})
    out: dict[str, dict[str, Any]] = {}
    for role, table in top.tables("roles").items():
        if role not in held:
            raise file.error(f"roles.{role}", f"no server has this role (roles: {', '.join(held) or 'none'})")
        out[role] = file.table(f"roles.{role}", table, ROLE_KEYS).variables("vars")
    return out


def _vars_of_roles(file: TomlFile, server: Server, by_role: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The vars `server` gets from its roles; two of its roles giving one name two values is
    refused (no order among a server's roles decides it)."""
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for role in server.roles:
        for name, value in by_role.get(role, {}).items():
            if name in merged and merged[name] != value and name not in server.vars:
                raise file.error(
                    f"roles.{role}.vars.{name}",
                    f"server {server.name} has roles {source[name]} and {role}, which give it two values: "
                    f"set it under [servers.{server.name}] vars",
                )
            merged.setdefault(name, value)
            source.setdefault(name, role)
    return merged


def load_topology(path: Path) -> Topology:
    """Read and validate `path`; every problem is a ConfigError naming file, line and key (all
    of them, up to a limit, as ConfigErrors)."""
    file = load_toml(path)
    top = file.table("", file.data, TOP_KEYS)
    errors = Collector()
    names_known, servers = _servers(file, top, errors)
    builder = errors.attempt(functools.partial(_builder, top, names_known))
    artifacts = errors.attempt(lambda: _artifacts(top.sub("artifacts", ARTIFACTS_KEYS), path.parent))
    deployment = errors.attempt(functools.partial(_deployment, top, names_known))
    ssh = errors.attempt(functools.partial(_ssh, top, path))
    rest = errors.attempt(functools.partial(_top_level, top, path))
    state = errors.attempt(functools.partial(_state, top))
    errors.raise_any()
    assert builder is not None and deployment is not None and ssh is not None and rest is not None
    assert state is not None
    assert artifacts is not None
    source, manifest, name, exclude = rest
    by_role = _role_vars(file, top, servers)
    # a server's vars: the deployment's defaults, then its roles', then its own
    servers = {
        n: dataclasses.replace(s, vars={**deployment.vars, **_vars_of_roles(file, s, by_role), **s.vars})
        for n, s in servers.items()
    }
    return Topology(
        config_path=path.resolve(),
        name=name,
        source_dir=source,
        manifest=manifest,
        builder=builder,
        deployment=deployment,
        ssh=ssh,
        servers=servers,
        sync_exclude=exclude,
        artifacts=artifacts,
        state=state,
        lines=file.lines,
    )


def config_error(topology: Topology, key: str, message: str) -> ConfigError:
    """A ConfigError about `key` of an already loaded topology."""
    return ConfigError(message, file=topology.config_path, line=locate(topology.lines, key), key=key)
