"""Rendering overlay templates (jinja2, StrictUndefined) with secret visibility enforced.

A template sees `secrets` (its own server's per-server secrets) and `peer_secrets` (every
server's values of the secrets its roles are allowed to see). Asking for any other secret
stops the render with a ConfigError naming the template, the line, the secret and the server:
a mistake in a template must not hand one server another server's secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from flinger.errors import ConfigError


class SecretRefused(Exception):
    """A template asked for a secret its server may not see (carries names, never values)."""

    def __init__(self, secret: str, reason: str) -> None:
        super().__init__(f"secret '{secret}': {reason}")
        self.secret = secret
        self.reason = reason


class Namespace(dict[str, Any]):
    """A dict that knows its dotted name in the template context, so an undefined attribute
    is reported as `server.prot` instead of "'dict object' has no attribute 'prot'"."""

    def __init__(self, path: str, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self.flinger_path = path


class SecretView(Namespace):
    """The secrets one server may see; asking for a known secret it may not see raises
    SecretRefused (jinja2 reaches dict items through __getitem__, hence __missing__)."""

    def __init__(self, path: str, visible: Mapping[str, Any], refused: Mapping[str, str]) -> None:
        super().__init__(path, visible)
        self._refused = dict(refused)

    def __missing__(self, key: str) -> Any:
        if key in self._refused:
            raise SecretRefused(key, self._refused[key])
        raise KeyError(key)


_NAMESPACES = frozenset({Namespace, SecretView})


class _Undefined(jinja2.StrictUndefined):
    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_obj is missing:
            return f"undefined variable '{self._undefined_name}'"
        path = getattr(self._undefined_obj, "flinger_path", None)
        if isinstance(path, str):
            name = self._undefined_name
            sub = f".{name}" if isinstance(name, str) else f"[{name!r}]"
            return f"undefined variable '{path}{sub}'"
        return f"undefined variable: {super()._undefined_message}"


# Values no undefined variable can hide in, and that a filter's answer depends on alone.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _defined(value: Any) -> Any:
    """`value`, after failing the way StrictUndefined does if it is (or holds) an undefined
    variable: a filter such as tojson would otherwise say "_Undefined is not JSON serializable"
    and never name the variable."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Mapping):
        for item in value.values():
            _defined(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _defined(item)
    return value


# What a template may read of a `{% for %}` loop: plain values jinja2 computes.
_LOOP_FIELDS = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0",
     "previtem", "nextitem"}
)  # fmt: skip


_MISSING = object()


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with a short way through the two lookups a template makes most: an item
    of one of our Namespaces (data, never a Python attribute) and a loop's own counters. A
    peers loop makes n lookups for each of n servers; the general check took 3 of the 8 s
    of 1000 servers' overlays. Everything else goes through the sandbox's full check (a
    secret a server may not see too: SecretView refuses it there)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) in _NAMESPACES:
            found = obj.get(attribute, _MISSING)
            if found is not _MISSING:
                return found
        elif type(obj) is LoopContext and attribute in _LOOP_FIELDS:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)


def make_environment(template_root: Path) -> jinja2.Environment:
    """The one jinja2 environment for overlay templates under `template_root`: sandboxed (a
    template cannot reach Python internals), every undefined name an error that names it."""
    # Overlay files are config files (JSON, TOML, env files), not HTML: escaping would corrupt
    # them, and templates use filters such as tojson where quoting matters.
    env = _Sandbox(
        loader=jinja2.FileSystemLoader(str(template_root)),
        undefined=_Undefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    for name in ("string", "length", "list", "join"):
        env.filters[name] = _strict_filter(env.filters[name])
    env.filters["tojson"] = _remembering_tojson(env.filters["tojson"])
    return env


def _remembering_tojson(original: Any) -> Any:
    """tojson, strict, and remembering its answer for a plain value: a config that lists
    every peer quotes the same names and addresses for each of n servers (2 million calls
    at 1000 servers, 14 of 20 s of their overlays, profiled), and a plain value's JSON is
    always the same text."""
    strict = _strict_filter(original)
    seen: dict[tuple[type, Any], Any] = {}

    def tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
        kind = type(value)
        if indent is not None or kind not in _SCALARS:
            return strict(eval_ctx, value, indent)
        key = (kind, value)
        answer = seen.get(key)
        if answer is None:
            answer = seen[key] = original(eval_ctx, value)
        return answer

    tojson.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return tojson


def _strict_filter(original: Any) -> Any:
    """The filter, refusing an undefined input the StrictUndefined way first. jinja2 passes
    some filters a context before the value (`jinja_pass_arg`): so does the wrapper."""
    pass_arg = getattr(original, "jinja_pass_arg", None)
    if pass_arg is None:

        def strict(value: Any, *args: Any, **kwargs: Any) -> Any:
            return original(_defined(value), *args, **kwargs)

        return strict

    def strict_with(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        return original(context, _defined(value), *args, **kwargs)

    strict_with.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return strict_with


def template_frame(tb: TracebackType | None, in_template: Callable[[str], bool]) -> tuple[str | None, int | None]:
    """The innermost traceback frame whose file name `in_template` accepts: (file, line).
    jinja2 rewrites tracebacks so that template frames carry the template's file name (a
    string template's is `<template>`) and line."""
    where: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if in_template(filename):
            where = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return where


def _template_frame(tb: TracebackType | None, root: Path) -> tuple[str | None, int | None]:
    """The innermost frame inside a template file under `root`."""
    prefix = str(root.resolve())
    return template_frame(tb, lambda filename: filename.startswith(prefix))


def _scrub(text: str, sensitive: Iterable[str]) -> str:
    for value in sensitive:
        if value and value in text:
            text = text.replace(value, "<redacted>")
    return text


def render(
    env: jinja2.Environment,
    template_name: str,
    context: Mapping[str, Any],
    *,
    server: str,
    sensitive: Iterable[str] = (),
    manifest_path: str | None = None,
    manifest_key: str | None = None,
) -> bytes:
    """Render one template for `server`; every failure is a ConfigError naming the template
    file and line (and never a value from `sensitive`)."""
    root = Path(getattr(env.loader, "searchpath", ["."])[0])
    display = str(root / template_name)
    try:
        template = env.get_template(template_name)
        return template.render(context).encode("utf-8")
    except jinja2.TemplateNotFound as e:
        if e.name not in (None, template_name):  # one it includes (imports, extends) is missing
            file, line = _template_frame(e.__traceback__, root)
            raise ConfigError(f"{e.name}: no such template under {root}", file=file or display, line=line) from None
        raise ConfigError(
            f"template {template_name} not found under {root}",
            file=manifest_path,
            key=manifest_key,
        ) from None
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"template syntax: {_scrub(e.message or 'invalid', sensitive)}",
            file=e.filename or display,
            line=e.lineno,
        ) from None
    except SecretRefused as e:
        file, line = _template_frame(e.__traceback__, root)
        raise ConfigError(
            f"secret '{e.secret}' may not be seen by server {server}: {e.reason}",
            file=file or display,
            line=line,
        ) from None
    except jinja2.UndefinedError as e:
        file, line = _template_frame(e.__traceback__, root)
        message = _scrub(e.message or "undefined variable", sensitive)
        raise ConfigError(f"{message} (rendering for server {server})", file=file or display, line=line) from None
    except Exception as e:  # noqa: BLE001 - any failure inside a template is the template's
        file, line = _template_frame(e.__traceback__, root)
        raise ConfigError(
            f"{type(e).__name__}: {_scrub(str(e), sensitive)} (rendering for server {server})",
            file=file or display,
            line=line,
        ) from None
