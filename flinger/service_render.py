"""Render a manifest `Service` into the definition files of a server's service manager.

`render_service` gives the `files` dict of the remote install plan: {"unit": ...} for
systemd, {"manifest": ...} for SMF, {"run": ..., "finish"?: ...} for runit. The `{{ }}`
placeholders inside the Service's fields are rendered first (jinja2, StrictUndefined) with
the given context; a package may instead ship its own definition under `smf/<service>/`
(`manifest.xml`, `<service>.service`, `run`), rendered through jinja2 the same way.

ExecStart (systemd), the run script (runit) and the SMF start method all take the
service's `command` as written: systemd splits it into words with its own quoting rules,
runit and SMF hand it to /bin/sh, so a plain `program --flag value` means the same in all
three. Everything else (paths, environment values) is quoted for its target syntax.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from flinger.errors import ConfigError
from flinger.manifest.model import Service
from flinger.protocol import names
from flinger.protocol.plans import HealthSpec
from flinger.remote import services

TEMPLATES = Path(__file__).parent / "templates"
MANAGERS = tuple(services.MANAGERS)  # the one registry: flinger/remote/services.py
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _systemd_escape(value: Any) -> str:
    """A value for a unit setting: `%` would start a specifier."""
    return str(value).replace("%", "%%")


def _systemd_quote(value: Any) -> str:
    """A double-quoted unit word (Environment=), with `\\`, `"` and `%` escaped."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


def _environment(trim: bool = False) -> jinja2.Environment:
    env = jinja2.Environment(
        trim_blocks=trim,
        lstrip_blocks=trim,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        # XML escaping for the SMF manifest; unit files and shell scripts are quoted by
        # their own filters, and placeholder strings must stay verbatim
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default_for_string=False, default=False),
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = shlex.quote
    env.filters["systemd"] = _systemd_escape
    env.filters["systemd_quote"] = _systemd_quote
    return env


_ENV = _environment()
_XML_ENV = _environment(trim=True)  # the manifest's block tags sit on lines of their own


def _render_text(text: str, context: dict[str, Any], key: str | None = None, file: Path | None = None) -> str:
    """A manifest value (named by `key`) or a shipped definition file (`file`) rendered; an
    error names the one it is (and, for a file, the line in it)."""
    try:
        return _ENV.from_string(text).render(context)
    except jinja2.UndefinedError as exc:
        line = None
        if file is not None:
            from flinger.overlay.templates import template_frame

            line = template_frame(exc.__traceback__, "<template>".__eq__)[1]
        raise ConfigError(f"placeholder: {exc.message}", file=file, line=line, key=key) from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"template syntax: {exc.message}", file=file, line=exc.lineno, key=key) from None


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Resolved:
    """A service's fields with their placeholders rendered: what the definition templates
    (flinger/templates) are rendered from, as their variables."""

    name: str
    description: str
    command: str
    working_dir: str | None
    user: str | None
    group: str | None
    log_file: str | None
    environment: list[tuple[str, str]]
    restart: str
    restart_sec: str
    restart_delay: float
    after: list[str]
    limits: dict[str, int | None]  # nofile, nproc

    def variables(self) -> dict[str, object]:
        return dict(vars(self))


def resolve_service(service: Service, service_name: str, context: dict[str, Any]) -> Resolved:
    """The service's fields with their placeholders rendered, checked for what would break
    the generated files (newlines, bad environment names)."""
    where = f"services.{service_name}"

    def rendered(key: str, value: str | None) -> str | None:
        return _render_text(value, context, f"{where}.{key}") if value else None

    resolved = Resolved(
        name=service_name,
        description=f"{service_name} (deployed by flinger)",
        command=_render_text(service.command, context, f"{where}.command"),
        working_dir=rendered("working_dir", service.working_dir),
        user=rendered("user", service.user),
        group=rendered("group", service.group),
        log_file=rendered("log_file", service.log_file),
        environment=[
            (name, _render_text(value, context, f"{where}.environment.{name}"))
            for name, value in sorted(service.environment.items())
        ],
        restart=service.restart,
        restart_sec=_seconds(service.restart_sec),
        restart_delay=float(service.restart_sec),
        after=list(service.after),
        limits={"nofile": service.limits.get("nofile"), "nproc": service.limits.get("nproc")},
    )
    _check_resolved(service, resolved, where)
    return resolved


def _check_resolved(service: Service, resolved: Resolved, where: str) -> None:
    if (problem := names.problem(resolved.name, "a service name")) is not None:
        raise ConfigError(problem, key=where)
    if service.restart not in ("always", "on-failure", "no"):
        raise ConfigError(f"restart must be always, on-failure or no, not {service.restart!r}", key=f"{where}.restart")
    for name, _value in resolved.environment:
        if not _ENV_NAME.match(name):
            raise ConfigError(f"{name!r} is not a valid environment variable name", key=f"{where}.environment")
    for key in ("command", "working_dir", "user", "group", "log_file"):
        value = getattr(resolved, key)
        if value is not None and ("\n" in value or "\r" in value):
            raise ConfigError("must be a single line", key=f"{where}.{key}")
    for name, value in resolved.environment:
        if "\n" in value:
            raise ConfigError("must be a single line", key=f"{where}.environment.{name}")
    for other in service.after:
        if names.problem(other, "a service name") is not None:
            raise ConfigError(f"{other!r} is not a service name", key=f"{where}.after")


def _chpst_options(fields: Resolved) -> str:
    options = []
    if fields.user:
        owner = fields.user + (":" + fields.group if fields.group else "")
        options.append("-u " + shlex.quote(owner))
    if fields.limits["nofile"]:
        options.append(f"-o {int(fields.limits['nofile'])}")
    if fields.limits["nproc"]:
        options.append(f"-p {int(fields.limits['nproc'])}")
    return " ".join(options)


def _render_systemd(fields: Resolved) -> dict[str, str]:
    return {"unit": _ENV.get_template("systemd.service.j2").render(fields.variables())}


def _render_smf(fields: Resolved) -> dict[str, str]:
    # SMF expands %-tokens in method strings
    start = fields.command.replace("%", "%%")
    if fields.log_file:
        start = f"{start} >>{shlex.quote(fields.log_file)} 2>&1"
    return {"manifest": _XML_ENV.get_template("smf-manifest.xml.j2").render(fields.variables(), start=start)}


def _render_runit(fields: Resolved) -> dict[str, str]:
    variables = fields.variables()
    files = {"run": _ENV.get_template("runit-run.sh.j2").render(variables, chpst=_chpst_options(fields))}
    if not fields.log_file:  # its output to a log service of its own, not to runsvdir's
        files["log/run"] = _ENV.get_template("runit-log-run.sh.j2").render(variables)
    if fields.restart != "always" or fields.restart_delay > 1:
        files["finish"] = _ENV.get_template("runit-finish.sh.j2").render(variables)
    return files


@dataclass(frozen=True)
class Renderer:
    """How one service manager's definition is made here: generated from a template, or
    shipped by a package under smf/<service>/ (`override`: the file's name, the plan key
    it fills, and further optional files with theirs)."""

    generate: Callable[[Resolved], dict[str, str]]
    override: tuple[str, str]
    override_extra: tuple[tuple[str, str], ...] = ()


# One entry per driver of the registry in flinger/remote/services.py (checked just below):
# adding a manager is its driver there, its template here and this one line.
RENDERERS: dict[str, Renderer] = {
    "systemd": Renderer(_render_systemd, ("{name}.service", "unit")),
    "smf": Renderer(_render_smf, ("manifest.xml", "manifest")),
    "runit": Renderer(_render_runit, ("run", "run"), (("finish", "finish"), ("log/run", "log/run"))),
}
if set(RENDERERS) != set(services.MANAGERS):  # pragma: no cover - a manager half added
    raise ImportError(f"service managers without a renderer or a driver: {set(RENDERERS) ^ set(services.MANAGERS)}")


def _render_override(
    override_dir: Path, service_name: str, manager: str, context: dict[str, Any]
) -> dict[str, str] | None:
    renderer = RENDERERS[manager]
    filename, key = renderer.override
    path = override_dir / filename.format(name=service_name)
    if not path.is_file():
        return None
    extra = renderer.override_extra
    files = {key: _render_text(path.read_text(encoding="utf-8"), context, file=path)}
    for name, extra_key in extra:
        shipped = override_dir / name
        if shipped.is_file():
            files[extra_key] = _render_text(shipped.read_text(encoding="utf-8"), context, file=shipped)
    return files


def render_service(
    service: Service, service_name: str, manager: str, context: dict[str, Any], override_dir: Path | None = None
) -> dict[str, str]:
    """The definition files of `service` for `manager` ("systemd" | "smf" | "runit"), as the
    remote install plan's `files` dict. A definition shipped in `override_dir` wins."""
    return render_definition(resolve_service(service, service_name, context), manager, context, override_dir)


def render_definition(
    fields: Resolved, manager: str, context: dict[str, Any], override_dir: Path | None = None
) -> dict[str, str]:
    """The definition files of a resolved service for `manager`; one shipped in
    `override_dir` wins."""
    if manager not in MANAGERS:
        raise ConfigError(f"unknown service manager {manager!r} (systemd, smf or runit)", key="service_manager")
    if override_dir is not None:
        shipped = _render_override(override_dir, fields.name, manager, {**context, "service": fields.variables()})
        if shipped is not None:
            return shipped
    return RENDERERS[manager].generate(fields)


def render_validate(service: Service, context: dict[str, Any], service_name: str) -> str | None:
    """The service's validate command for the remote plan, placeholders rendered."""
    if not service.validate:
        return None
    return _render_text(service.validate, context, f"services.{service_name}.validate")


def render_health(service: Service, context: dict[str, Any], service_name: str) -> HealthSpec | None:
    """The service's health check for the remote plan, placeholders rendered."""
    check = service.health
    if check is None:
        return None
    where = f"services.{service_name}.health"

    def rendered(key: str, value: str | None) -> str | None:
        return _render_text(value, context, f"{where}.{key}") if value else value

    return HealthSpec(
        url=rendered("url", check.url),
        command=rendered("command", check.command),
        timeout=check.timeout,
        interval=check.interval,
        ca=rendered("ca", check.ca),
    )
