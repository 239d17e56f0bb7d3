"""Load and validate a package manifest into a `Manifest` (no network, nothing built).

Errors name the manifest file, the line and the package (dotted key); they exit 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
from flinger.tomlfile import Fields, TomlFile, line_index, load_toml, locate, suggest

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
)
HEALTH_KEYS = ("url", "command", "timeout", "interval", "ca")
OVERLAY_KEYS = ("template", "to", "roles", "mode")
SECRET_KEYS = ("roles", "visible_to", "bytes")
PREREQ_KEYS = ("apt", "pkg", "sysctl", "users", "groups", "dirs", "script")
USER_KEYS = ("name", "group", "home", "system", "shell")
DIR_KEYS = ("path", "owner", "group", "mode")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
    return Service(
        command=f.string("command", required=True),
        working_dir=f.opt_str("working_dir"),
        environment=f.str_map("environment"),
        user=f.opt_str("user"),
        group=f.opt_str("group"),
        restart=f.choice("restart", ("always", "on-failure", "no"), "on-failure"),
        restart_sec=f.number("restart_sec", 5.0),
        after=f.str_list("after"),
        limits=limits,
        log_file=f.opt_str("log_file"),
        health=_health(health) if health is not None else None,
    )


def _mode(f: Fields, name: str, default: int) -> int:
    value = f.table.get(name)
    if value is None:
        return default
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    raise f.error(name, f'expected an octal mode string such as "0600", got {value!r}')


def _package(file: TomlFile, name: str, table: Any) -> Package:
    key = f"packages.{name}"
    if not _NAME.match(name):
        raise file.error(key, "package names use letters, digits, '.', '_' and '-'")
    f = file.table(key, table, PACKAGE_KEYS)
    roles = f.str_list("roles", ("*",))
    if not roles:
        raise f.error("roles", 'name at least one role, or "*" for every server')
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
                roles=o.str_list("roles", ("*",)),
                mode=_mode(o, "mode", 0o600),
            )
        )
    service = _service(f.sub("service", SERVICE_KEYS)) if f.has("service") else None
    return Package(
        name=name,
        service_name=f.string("service_name", name),
        roles=roles,
        source=_source(f.sub("source", (*SOURCE_KEYS["local"], *SOURCE_KEYS["prebuilt"], "packages"), required=True)),
        version=f.string("version", "0.0.0"),
        setup_hint=f.opt_str("setup_hint"),
        service=service,
        overlay=tuple(overlay),
        line=file.lines.get(key),
    )


def _prereqs(file: TomlFile, target: str, table: Any) -> Prereqs:
    f = file.table(f"prereqs.{target}", table, PREREQ_KEYS)
    users = []
    for i, item in enumerate(f.table.get("users", [])):
        u = file.table(f.key(f"users.{i}"), item, USER_KEYS)
        u.string("name", required=True)
        users.append(dict(u.table))
    dirs = []
    for i, item in enumerate(f.table.get("dirs", [])):
        d = file.table(f.key(f"dirs.{i}"), item, DIR_KEYS)
        path = d.string("path", required=True)
        if not path.startswith("/"):
            raise d.error("path", f'must be absolute, got "{path}"')
        entry = dict(d.table)
        if "mode" in entry:
            entry["mode"] = _mode(d, "mode", 0o755)
        dirs.append(entry)
    script = f.opt_str("script")
    return Prereqs(
        target=target,
        apt=f.str_list("apt"),
        pkg=f.str_list("pkg"),
        sysctl=f.str_map("sysctl"),
        users=tuple(users),
        groups=f.str_list("groups"),
        dirs=tuple(dirs),
        script=_relative(f, "script", script) if script else None,
    )


def _check_composites(file: TomlFile, packages: dict[str, Package]) -> None:
    for pkg in packages.values():
        for i, member in enumerate(pkg.source.packages):
            if member not in packages:
                raise file.error(f"packages.{pkg.name}.source.packages.{i}", f'no package named "{member}"')
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise file.error(f"packages.{trail[0]}.source.packages", f"composite cycle: {cycle}")
        state[name] = 1
        for member in packages[name].source.packages:
            visit(member, [*trail, name])
        state[name] = 2

    for name in packages:
        visit(name, [])


def load_manifest(path: Path) -> Manifest:
    """Read and validate a package manifest; errors name file, line and package."""
    file = load_toml(path)
    top = file.table("", file.data, TOP_KEYS)
    raw = top.table.get("packages")
    if not isinstance(raw, dict) or not raw:
        raise file.error("packages", "the manifest defines no packages ([packages.NAME])")
    packages = {name: _package(file, name, table) for name, table in raw.items()}
    _check_composites(file, packages)
    services = {p.service_name for p in packages.values() if p.service}
    for pkg in packages.values():
        for i, dep in enumerate(pkg.service.after if pkg.service else ()):
            if dep not in services:
                raise file.error(f"packages.{pkg.name}.service.after.{i}", f'no service named "{dep}"')

    secrets = {}
    for name, table in (top.table.get("secrets") or {}).items():
        s = file.table(f"secrets.{name}", table, SECRET_KEYS)
        secrets[name] = SecretSpec(
            name=name,
            roles=s.str_list("roles", required=True),
            visible_to=s.str_list("visible_to"),
            nbytes=s.integer("bytes", 32, low=16, high=1024),
        )
    prereqs = tuple(_prereqs(file, t, table) for t, table in (top.table.get("prereqs") or {}).items())
    return Manifest(path=str(path), packages=packages, secrets=secrets, prereqs=prereqs)


def manifest_error(manifest: Manifest, key: str, message: str) -> ConfigError:
    """A ConfigError about `key` of a loaded manifest (line looked up again from the file)."""
    lines = line_index(Path(manifest.path).read_text(encoding="utf-8"))
    return ConfigError(message, file=manifest.path, line=locate(lines, key), key=key)
