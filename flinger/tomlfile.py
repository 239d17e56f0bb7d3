"""Reading TOML input files: parse with tomlkit, find each key's line, and read typed fields.

Every error raised here is a `ConfigError` naming the file, the line and the dotted key,
with a "did you mean" suggestion for unknown keys. Shared by the topology and manifest loaders.
"""

from __future__ import annotations

import difflib
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
import tomlkit.exceptions

from flinger.errors import ConfigError, ConfigErrors
from flinger.values import text_problem

MAX_ERRORS = 20  # reported for one file; the rest are counted

_BARE = re.compile(r"[A-Za-z0-9_-]+")


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class LineIndex(dict[str, int]):
    """Dotted key (and table) -> the 1-based line where it is written; `duplicates` holds the
    line of each key written a second time in the same table."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: dict[str, int] = {}


def _read_key(line: str, i: int) -> tuple[list[str], int] | None:
    """A dotted key (bare or quoted parts) from line[i:], and where it ends; None if none."""
    parts: list[str] = []
    while True:
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] in "\"'":
            quote = line[i]
            j = i + 1
            while j < len(line) and line[j] != quote:
                j += 2 if quote == '"' and line[j] == "\\" else 1
            if j >= len(line):
                return None
            parts.append(line[i + 1 : j])
            i = j + 1
        else:
            match = _BARE.match(line, i)
            if match is None:
                return None
            parts.append(match.group())
            i = match.end()
        while i < len(line) and line[i] in " \t":
            i += 1
        if i < len(line) and line[i] == ".":
            i += 1
            continue
        return parts, i


class _Scanner:
    """Where values end: strings (one- and multi-line), comments and brackets, across lines."""

    def __init__(self) -> None:
        self.open_string: str | None = None  # the delimiter of a multi-line string being read
        self.depth = 0  # arrays and inline tables still open

    @property
    def inside_value(self) -> bool:
        return self.open_string is not None or self.depth > 0

    def scan(self, line: str, i: int) -> None:
        while i < len(line):
            if self.open_string is not None:
                end = line.find(self.open_string, i)
                while end > 0 and self.open_string == '"""' and _escaped(line, end):
                    end = line.find(self.open_string, end + 1)
                if end < 0:
                    return
                i = end + 3
                while i < len(line) and line[i] == self.open_string[0]:
                    i += 1  # up to two quotes may end the string's content
                self.open_string = None
                continue
            char = line[i]
            if char == "#":
                return
            if line.startswith(('"""', "'''"), i):
                self.open_string = line[i : i + 3]
                i += 3
                continue
            if char in "\"'":
                j = i + 1
                while j < len(line) and line[j] != char:
                    j += 2 if char == '"' and line[j] == "\\" else 1
                i = j + 1
                continue
            if char in "[{":
                self.depth += 1
            elif char in "]}":
                self.depth = max(0, self.depth - 1)
            i += 1


def _escaped(line: str, at: int) -> bool:
    backslashes = 0
    while at - backslashes - 1 >= 0 and line[at - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _header(
    lines: LineIndex,
    stripped: str,
    number: int,
    prefix: list[str],
    aot_counts: dict[str, int],
    headers: set[str],
    values: set[str],
) -> list[str]:
    """A `[table]` or `[[array.of.tables]]` header line: indexed; the key prefix it starts
    (the one before when the line is no header after all)."""
    double = stripped.startswith("[[")
    key = _read_key(stripped, 2 if double else 1)
    if key is None:
        return prefix
    prefix = key[0]
    dotted = ".".join(prefix)
    if double:
        count = aot_counts.get(dotted, 0)
        aot_counts[dotted] = count + 1
        prefix = [*prefix, str(count)]
    elif dotted in headers:
        lines.duplicates.setdefault(dotted, number)
    for i in range(1, len(key[0]) + 1):  # a header inside a key that holds a value
        if ".".join(key[0][:i]) in values:
            lines.duplicates.setdefault(".".join(key[0][:i]), number)
    headers.add(".".join(prefix))
    lines.setdefault(".".join(prefix), number)
    for i in range(1, len(prefix)):
        lines.setdefault(".".join(prefix[:i]), number)
    return prefix


def line_index(text: str) -> LineIndex:
    """Map each dotted key (and table) to the line where it is written, reading strings,
    comments and multi-line values as TOML does (a key-like line inside a multi-line string
    is no key). Arrays of tables are indexed by position: `packages.a.overlay.0.template`."""
    lines = LineIndex()
    text = text.removeprefix("\ufeff")
    prefix: list[str] = []
    aot_counts: dict[str, int] = {}
    headers: set[str] = set()
    values: set[str] = set()  # keys given a value (not a table) by `key = value`
    scanner = _Scanner()
    for number, line in enumerate(text.splitlines(), start=1):
        if scanner.inside_value:
            scanner.scan(line, 0)
            continue
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            prefix = _header(lines, stripped, number, prefix, aot_counts, headers, values)
            continue
        key = _read_key(line, 0)
        if key is None or key[1] >= len(line) or line[key[1]] != "=":
            continue
        full = [*prefix, *key[0]]
        dotted = ".".join(full)
        if dotted in lines and lines[dotted] != number:
            lines.duplicates.setdefault(dotted, number)
        values.add(dotted)
        for i in range(1, len(full) + 1):
            lines.setdefault(".".join(full[:i]), number)
        scanner.scan(line, key[1] + 1)
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
    lines: LineIndex

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.path, line=locate(self.lines, key), key=key or None)

    def table(self, key: str, value: Any, allowed: Iterable[str]) -> Fields:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        fields = Fields(self, key, value)
        fields.reject_unknown(allowed)
        return fields


def load_toml(path: Path) -> TomlFile:
    """Parse `path`; any bytes at all give a TomlFile or a ConfigError (exit 2), nothing else."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a FIFO or a device would block or never end
            raise ConfigError("not a regular file (a pipe, socket or device)", file=path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded"
        raise ConfigError(message, file=path, line=line) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write
    lines = line_index(text)
    try:
        # unwrap() too can find a key written twice (in a table split over two headers).
        data = tomlkit.parse(text).unwrap()
    except (tomlkit.exceptions.ParseError, tomlkit.exceptions.KeyAlreadyPresent) as exc:
        message = str(exc).split(" at line ")[0]
        dotted = next(iter(lines.duplicates), None)
        if "already exists" in message:  # tomlkit's line is where it noticed, not the key's
            raise ConfigError(
                f"invalid TOML: {message.rstrip('.')} (a key may be set once per table)",
                file=path,
                line=lines.duplicates.get(dotted) if dotted else None,
                key=dotted,
            ) from None
        raise ConfigError(f"invalid TOML: {message}", file=path, line=getattr(exc, "line", None)) from None
    except (tomlkit.exceptions.TOMLKitError, ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        # tomlkit refuses some documents with other errors than ParseError (e.g. a key that
        # is both a table and a value): still bad input, never a crash.
        raise ConfigError(f"invalid TOML: {exc or type(exc).__name__}", file=path) from None
    return TomlFile(path=path, data=data, lines=lines)


T = TypeVar("T")


class Collector:
    """Errors of one file, so that `check` reports each of them, not just the first."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def attempt(self, load: Callable[[], T]) -> T | None:
        """load(); a ConfigError is kept (None returned) and loading goes on."""
        try:
            return load()
        except ConfigErrors as many:
            self.errors.extend(many.errors)
        except ConfigError as error:
            self.errors.append(error)
        return None

    def raise_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors[:MAX_ERRORS], total=len(self.errors))


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
        self.check_text(name, value)
        return value

    def check_text(self, name: str, value: str) -> None:
        problem = text_problem(value)
        if problem is not None:
            raise self.error(name, problem)

    def checked(self, name: str, value: str, problem: str | None) -> str:
        """`value` when `problem` (from flinger.values) is None, else the error for `name`."""
        if problem is not None:
            raise self.error(name, problem)
        return value

    def tables(self, name: str) -> dict[str, Any]:
        """A table of tables ([name.X] sections): X -> its table (each checked by the caller)."""
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table ([{self.key(name)}.NAME] sections), got {_kind(value)}")
        return value

    def array(self, name: str, what: str) -> list[Any]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"expected {what}, got {_kind(value)}")
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
            self.check_text(f"{name}.{i}", item)
        return tuple(value)

    def variables(self, name: str) -> dict[str, Any]:
        """A table of template variables: names a template can write as `vars.NAME`, values
        strings, numbers, booleans or arrays of them."""
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table of variables, got {_kind(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not _IDENTIFIER.match(key):
                raise self.error(f"{name}.{key}", "a variable name is letters, digits and _, not starting with a digit")
            items = item if isinstance(item, list) else [item]
            for one in items:
                if isinstance(one, dict | list) or not isinstance(one, str | int | float | bool):
                    raise self.error(
                        f"{name}.{key}", f"expected a string, number, boolean or array of them, got {_kind(one)}"
                    )
                if isinstance(one, str):
                    self.check_text(f"{name}.{key}", one)
            out[str(key)] = list(item) if isinstance(item, list) else (str(item) if isinstance(item, str) else item)
        return out

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
            self.check_text(f"{name}.{k}", k)
            self.check_text(f"{name}.{k}", str(v))
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
