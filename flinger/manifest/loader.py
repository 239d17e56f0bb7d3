"""Load and validate a package manifest into a `Manifest` (no network, nothing built).

Errors name the manifest file, the line and the package (dotted key); they exit 2.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flinger.errors import ConfigError
from flinger.manifest.model import (
    HealthCheck,
    Manifest,
    OverlayFile,
    Package,
    PathMapping,
    Prereqs,
    SecretSpec,
    Service,
    Source,
)
from flinger.protocol import graph
from flinger.protocol.plans import DirSpec, UserSpec
from flinger.tomlfile import Collector, Fields, TomlFile, line_index, load_toml, locate, suggest
from flinger.values import name_problem, remote_path_problem, user_problem

TOP_KEYS = ("packages", "secrets", "prereqs")
PACKAGE_KEYS = ("service_name", "version", "roles", "setup_hint", "source", "service", "overlay")
SOURCE_TYPES = ("local", "prebuilt", "composite")
SOURCE_KEYS = {
    "local": ("type", "build", "paths", "inputs"),
    "prebuilt": ("type", "url", "sha256", "to"),
    "composite": ("type", "packages"),
}
SERVICE_KEYS = (
    "command",
    "working_dir",
    "environment",
    "user",
    "group",
    "restart",
    "restart_sec",
    "after",
    "limits",
    "log_file",
    "health",
    "validate",
)
HEALTH_KEYS = ("url", "command", "timeout", "interval", "ca")
OVERLAY_KEYS = ("template", "to", "roles", "mode")
SECRET_KEYS = ("roles", "visible_to", "bytes", "scope", "given")
PREREQ_KEYS = ("apt", "pkg", "sysctl", "users", "groups", "dirs", "script")
USER_KEYS = ("name", "group", "home", "system", "shell")
DIR_KEYS = ("path", "owner", "group", "mode")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:/@=-]*$")  # apt names (with =version, /release), pkg FMRIs
_SYSCTL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
T = TypeVar("T")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$")


def _relative(f: Fields, name: str, value: str) -> str:
    if value.startswith("/") or ".." in Path(value).parts:
        raise f.error(name, f'must be a path inside the source tree, got "{value}"')
    return value


def _source(f: Fields) -> Source:
    kind = f.string("type", required=True)
    if kind not in SOURCE_TYPES:
        raise f.error(
            "type", f'unknown source type "{kind}": use local, prebuilt or composite{suggest(kind, SOURCE_TYPES)}'
        )
    f.reject_unknown(SOURCE_KEYS[kind])
    if kind == "local":
        paths = []
        raw = f.table.get("paths", [])
        if not isinstance(raw, list):
            raise f.error("paths", "expected an array of { from, to } tables")
        for i, item in enumerate(raw):
            p = f.file.table(f.key(f"paths.{i}"), item, ("from", "to"))
            paths.append(
                PathMapping(
                    _relative(p, "from", p.string("from", required=True)),
                    _relative(p, "to", p.string("to", required=True)),
                )
            )
        return Source(type=kind, build=f.str_list("build"), paths=tuple(paths), inputs=f.str_list("inputs"))
    if kind == "prebuilt":
        url = f.string("url", required=True)
        if not url.startswith(("https://", "http://", "file://")):
            raise f.error("url", f'expected an http(s):// or file:// URL, got "{url}"')
        digest = f.string("sha256", required=True)
        if not _SHA256.match(digest):
            raise f.error("sha256", "expected 64 lowercase hex digits")
        to = f.opt_str("to")
        return Source(type=kind, url=url, sha256=digest, to=_relative(f, "to", to) if to else None)
    members = f.str_list("packages", required=True)
    if not members:
        raise f.error("packages", "a composite needs at least one member package")
    return Source(type=kind, packages=members)


def _health(f: Fields) -> HealthCheck:
    url, command = f.opt_str("url"), f.opt_str("command")
    if (url is None) == (command is None):
        raise f.file.error(f.prefix, "a health check has exactly one of url or command")
    return HealthCheck(
        url=url,
        command=command,
        timeout=f.number("timeout", 30.0),
        interval=f.number("interval", 0.5),
        ca=f.opt_str("ca"),
    )


def _service(f: Fields) -> Service:
    limits_f = f.sub("limits", ("nofile", "nproc"))
    limits = {k: limits_f.integer(k, low=1) for k in ("nofile", "nproc") if limits_f.has(k)}
    health = f.sub("health", HEALTH_KEYS) if f.has("health") else None
    after = f.str_list("after")
    for i, other in enumerate(after):
        f.checked(f"after.{i}", other, name_problem(other, "a service name"))
    environment = f.str_map("environment")
    for variable in environment:
        f.checked(
            f"environment.{variable}",
            variable,
            None if _ENV_NAME.match(variable) else f'"{variable}" is not an environment variable name',
        )
    return Service(
        command=f.string("command", required=True),
        working_dir=f.opt_str("working_dir"),
        environment=environment,
        user=f.opt_str("user"),
        group=f.opt_str("group"),
        restart=f.choice("restart", ("always", "on-failure", "no"), "on-failure"),
        restart_sec=f.number("restart_sec", 5.0),
        after=after,
        limits=limits,
        log_file=f.opt_str("log_file"),
        health=_health(health) if health is not None else None,
        validate=f.opt_str("validate"),
    )


def _roles(f: Fields, name: str, default: tuple[str, ...] = ("*",), *, required: bool = False) -> tuple[str, ...]:
    roles = f.str_list(name, default, required=required)
    for i, role in enumerate(roles):
        if role != "*":
            f.checked(f"{name}.{i}", role, name_problem(role, "a role name"))
    return roles


def _mode(f: Fields, name: str, default: int) -> int:
    value = f.table.get(name)
    if value is None:
        return default
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    raise f.error(name, f'expected an octal mode string such as "0600", got {value!r}')


def _package(file: TomlFile, name: str, table: Any) -> Package:
    key = f"packages.{name}"
    if (problem := name_problem(name, "a package name")) is not None:
        raise file.error(key, problem)
    f = file.table(key, table, PACKAGE_KEYS)
    roles = f.str_list("roles", ("*",))
    if not roles:
        raise f.error("roles", 'name at least one role, or "*" for every server')
    for i, role in enumerate(roles):
        if role != "*":
            f.checked(f"roles.{i}", role, name_problem(role, "a role name"))
    overlay = []
    raw = f.table.get("overlay", [])
    if not isinstance(raw, list):
        raise f.error("overlay", "expected an array of tables ([[packages.NAME.overlay]])")
    for i, item in enumerate(raw):
        o = file.table(f.key(f"overlay.{i}"), item, OVERLAY_KEYS)
        overlay.append(
            OverlayFile(
                template=_relative(o, "template", o.string("template", required=True)),
                dest=_relative(o, "to", o.string("to", required=True)),
                roles=_roles(o, "roles"),
                mode=_mode(o, "mode", 0o600),
            )
        )
    service = _service(f.sub("service", SERVICE_KEYS)) if f.has("service") else None
    service_name = f.string("service_name", name)
    version = f.string("version", "0.0.0")
    return Package(
        name=name,
        service_name=f.checked("service_name", service_name, name_problem(service_name, "a service name")),
        roles=roles,
        source=_source(f.sub("source", (*SOURCE_KEYS["local"], *SOURCE_KEYS["prebuilt"], "packages"), required=True)),
        version=f.checked("version", version, None if _VERSION.match(version) else "is not a version like 1.2.3"),
        setup_hint=f.opt_str("setup_hint"),
        service=service,
        overlay=tuple(overlay),
        line=file.lines.get(key),
    )


def _path_problem(value: str) -> str | None:
    return remote_path_problem(value, home=False)


def _checked_opt(fields: Fields, key: str, problem: Callable[[str], str | None] = _path_problem) -> str | None:
    """An optional string of a users or dirs entry, checked (a path, unless told otherwise)."""
    if not fields.has(key):
        return None
    value = fields.string(key)
    return fields.checked(key, value, problem(value))


def _prereqs(file: TomlFile, target: str, table: Any) -> Prereqs:
    f = file.table(f"prereqs.{target}", table, PREREQ_KEYS)
    users = []
    for i, item in enumerate(f.array("users", "an array of { name, group, home, system, shell } tables")):
        u = file.table(f.key(f"users.{i}"), item, USER_KEYS)
        user = u.string("name", required=True)
        u.checked("name", user, user_problem(user))
        group, home, shell = _checked_opt(u, "group", user_problem), _checked_opt(u, "home"), _checked_opt(u, "shell")
        users.append(UserSpec(user, group, home, shell, u.flag("system", False)))
    dirs = []
    for i, item in enumerate(f.array("dirs", "an array of { path, owner, group, mode } tables")):
        d = file.table(f.key(f"dirs.{i}"), item, DIR_KEYS)
        path = d.string("path", required=True)
        d.checked("path", path, remote_path_problem(path, home=False))
        owner, group = _checked_opt(d, "owner", user_problem), _checked_opt(d, "group", user_problem)
        dirs.append(DirSpec(path, owner, group, _mode(d, "mode", 0o755) if d.has("mode") else None))
    script = f.opt_str("script")
    apt, pkg, groups = f.str_list("apt"), f.str_list("pkg"), f.str_list("groups")
    for key, names in (("apt", apt), ("pkg", pkg)):
        for i, package in enumerate(names):
            f.checked(f"{key}.{i}", package, None if _PACKAGE.match(package) else f'"{package}" is not a package name')
    for i, group in enumerate(groups):
        f.checked(f"groups.{i}", group, user_problem(group))
    sysctl = f.str_map("sysctl")
    for setting in sysctl:
        f.checked(f"sysctl.{setting}", setting, None if _SYSCTL.match(setting) else f'"{setting}" is not a sysctl name')
    return Prereqs(
        target=target,
        apt=apt,
        pkg=pkg,
        sysctl=sysctl,
        users=tuple(users),
        groups=groups,
        dirs=tuple(dirs),
        script=_relative(f, "script", script) if script else None,
    )


def _check_composites(file: TomlFile, packages: dict[str, Package]) -> None:
    for pkg in packages.values():
        for i, member in enumerate(pkg.source.packages):
            if member not in packages:
                raise file.error(f"packages.{pkg.name}.source.packages.{i}", f'no package named "{member}"')
    try:
        graph.ordered({name: pkg.source.packages for name, pkg in packages.items()})
    except graph.Cycle as exc:
        raise file.error(f"packages.{exc.nodes[0]}.source.packages", f"composite cycle: {exc}") from None


def _check_after(file: TomlFile, packages: dict[str, Package], errors: Collector) -> None:
    """Every service a service starts after is a service of the manifest."""
    services = {p.service_name for p in packages.values() if p.service}
    for pkg in packages.values():
        for i, dep in enumerate(pkg.service.after if pkg.service else ()):
            if dep not in services:
                errors.errors.append(file.error(f"packages.{pkg.name}.service.after.{i}", f'no service named "{dep}"'))


def _secret(file: TomlFile, name: str, table: Any) -> SecretSpec:
    if (problem := name_problem(name, "a secret name")) is not None:
        raise file.error(f"secrets.{name}", problem)
    s = file.table(f"secrets.{name}", table, SECRET_KEYS)
    return SecretSpec(
        name=name,
        roles=_roles(s, "roles", required=True),
        visible_to=_roles(s, "visible_to", ()),
        nbytes=s.integer("bytes", 32, low=16, high=1024),
        scope=s.choice("scope", ("server", "deployment"), "server"),
        given=s.flag("given", False),
    )


def _prereq(file: TomlFile, target: str, table: Any) -> Prereqs:
    if target != "*" and (problem := name_problem(target, "a role name")) is not None:
        raise file.error(f"prereqs.{target}", problem)
    return _prereqs(file, target, table)


def _each(errors: Collector, tables: dict[str, Any], make: Callable[[str, Any], T]) -> dict[str, T]:
    """`make(name, table)` for every table, each error collected (none stops the others)."""
    made: dict[str, T] = {}
    for name, table in tables.items():
        item = errors.attempt(functools.partial(make, name, table))
        if item is not None:
            made[name] = item
    return made


def load_manifest(path: Path) -> Manifest:
    """Read and validate a package manifest; errors name file, line and package."""
    file = load_toml(path)
    top = file.table("", file.data, TOP_KEYS)
    raw = top.tables("packages")
    if not raw:
        raise file.error("packages", "the manifest defines no packages ([packages.NAME])")
    errors = Collector()
    packages = _each(errors, raw, functools.partial(_package, file))
    errors.raise_any()  # references below need every package
    errors.attempt(functools.partial(_check_composites, file, packages))
    _check_after(file, packages, errors)
    secrets = _each(errors, top.tables("secrets"), functools.partial(_secret, file))
    prereqs = _each(errors, top.tables("prereqs"), functools.partial(_prereq, file))
    errors.raise_any()
    return Manifest(path=str(path), packages=packages, secrets=secrets, prereqs=tuple(prereqs.values()))


def manifest_error(manifest: Manifest, key: str, message: str) -> ConfigError:
    """A ConfigError about `key` of a loaded manifest (line looked up again from the file)."""
    lines = line_index(Path(manifest.path).read_text(encoding="utf-8"))
    return ConfigError(message, file=manifest.path, line=locate(lines, key), key=key)
