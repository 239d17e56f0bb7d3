"""Reading TOML input files: parse with tomlkit, find each key's line, and read typed fields.

Every error raised here is a `ConfigError` naming the file, the line and the dotted key,
with a "did you mean" suggestion for unknown keys. Shared by the topology and manifest loaders.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from flinger.errors import ConfigError

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_key(raw: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", raw)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def line_index(text: str) -> dict[str, int]:
    """Map each dotted key (and table) to the 1-based line where it is written.

    Arrays of tables are indexed by position: `packages.a.overlay.0.template`.
    """
    lines: dict[str, int] = {}
    prefix: list[str] = []
    aot_counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("#"):
            prefix = _split_key(header.group(1))
            dotted = ".".join(prefix)
            if line.lstrip().startswith("[["):
                count = aot_counts.get(dotted, 0)
                aot_counts[dotted] = count + 1
                prefix = [*prefix, str(count)]
            lines.setdefault(".".join(prefix), number)
            for i in range(1, len(prefix)):
                lines.setdefault(".".join(prefix[:i]), number)
            continue
        key = _KEYLINE.match(line)
        if key:
            full = [*prefix, *_split_key(key.group(1))]
            for i in range(1, len(full) + 1):
                lines.setdefault(".".join(full[:i]), number)
    return lines


def locate(lines: dict[str, int], key: str) -> int | None:
    """The line of `key`, or of its nearest enclosing key (inline tables and arrays)."""
    parts = key.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None


@dataclass
class TomlFile:
    """A parsed TOML file: plain data plus the line of each key."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int]

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.path, line=locate(self.lines, key), key=key or None)

    def table(self, key: str, value: Any, allowed: Iterable[str]) -> Fields:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        fields = Fields(self, key, value)
        fields.reject_unknown(allowed)
        return fields


def load_toml(path: Path) -> TomlFile:
    """Parse `path`; a missing file or a syntax error is a ConfigError (exit 2)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        message = str(exc).split(" at line ")[0]
        raise ConfigError(f"invalid TOML: {message}", file=path, line=exc.line) from None
    return TomlFile(path=path, data=doc.unwrap(), lines=line_index(text))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f'a string ("{value}")' if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Fields:
    """Typed access to one table's keys, with errors that name file, line and dotted key."""

    def __init__(self, file: TomlFile, prefix: str, table: dict[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.table = table

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.file.error(self.key(name), message)

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for name in self.table:
            if name not in allowed:
                raise self.error(name, f"unknown key{suggest(name, allowed)}")

    def has(self, name: str) -> bool:
        return name in self.table

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.table:
            if required:
                where = f"[{self.prefix}]" if self.prefix else "the top level"
                raise self.file.error(self.prefix, f'missing required key "{name}" in {where}')
            return None
        return self.table[name]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, required)
        if value is None:
            return default  # type: ignore[return-value]
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_kind(value)}")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def opt_str(self, name: str) -> str | None:
        return self.string(name) if name in self.table else None

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        required: bool = False,
        low: int | None = None,
        high: int | None = None,
    ) -> int:
        value = self._get(name, required)
        if value is None:
            return default  # type: ignore[return-value]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(name, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {_kind(value)}")
        if value <= 0:
            raise self.error(name, f"must be positive, got {value}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_kind(value)}")
        return value

    def str_list(self, name: str, default: tuple[str, ...] = (), *, required: bool = False) -> tuple[str, ...]:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, list):
            raise self.error(name, f"expected an array of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}.{i}", f"expected a string, got {_kind(item)}")
        return tuple(value)

    def str_map(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table of strings, got {_kind(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise self.error(f"{name}.{k}", f"expected a string, got {_kind(v)}")
            out[k] = str(v)
        return out

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            options = ", ".join(choices)
            raise self.error(name, f'must be one of {options}, got "{value}"{suggest(value, choices)}')
        return value

    def sub(self, name: str, allowed: Iterable[str], *, required: bool = False) -> Fields:
        value = self._get(name, required)
        return self.file.table(self.key(name), {} if value is None else value, allowed)
