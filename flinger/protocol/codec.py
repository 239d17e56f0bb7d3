"""Dataclasses to and from JSON, checked field by field on the way in.

`decode(Cls, data)` builds a `Cls` from parsed JSON and refuses what does not fit its type
hints, naming the field path (`plan.services[1].health.timeout: expected a number`); `encode`
is the way back. Field types may be str, int, float, bool, Optional, List, Dict[str, X],
Any (kept as it came) or another dataclass. Standard library only, Python 3.9: the remote
tool decodes its plans with it, the client its results.
"""

import dataclasses
import sys
import typing
from typing import Any, Dict, List, Type, TypeVar

T = TypeVar("T")
_HINTS: Dict[type, Dict[str, Any]] = {}


class ProtocolError(ValueError):
    """A message does not fit its type: the path of the first field that does not."""


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        module = sys.modules[cls.__module__].__dict__
        _HINTS[cls] = typing.get_type_hints(cls, globalns=module)
    return _HINTS[cls]


def encode(value: Any) -> Any:
    """A dataclass (and what it holds) as plain JSON-ready values; None fields are left out,
    so an optional field an older reader does not know is absent, not null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: Dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is not None:
                out[field.name] = encode(item)
        return out
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    return value


def decode(cls: Type[T], data: Any, where: str = "", strict: bool = True) -> T:
    """`data` (parsed JSON) as a `cls`; ProtocolError naming the first field that does not fit.
    With `strict`, a key the dataclass does not have is refused too (plans); without, it is
    ignored (receipts written by other versions)."""
    return typing.cast(T, _decode(cls, data, where or cls.__name__, strict))


def _decode(kind: Any, data: Any, where: str, strict: bool) -> Any:
    origin = typing.get_origin(kind)
    if kind is Any:
        return data
    if origin is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if data is None:
            return None
        return _decode(options[0], data, where, strict)
    if origin in (list, List):
        if not isinstance(data, list):
            raise ProtocolError("%s: expected a list, got %s" % (where, _name(data)))
        (item,) = typing.get_args(kind)
        return [_decode(item, x, "%s[%d]" % (where, i), strict) for i, x in enumerate(data)]
    if origin in (dict, Dict):
        if not isinstance(data, dict):
            raise ProtocolError("%s: expected an object, got %s" % (where, _name(data)))
        _key, item = typing.get_args(kind)
        return {str(k): _decode(item, v, "%s.%s" % (where, k), strict) for k, v in data.items()}
    if dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, data, where, strict)
    return _scalar(kind, data, where)


def _decode_dataclass(cls: Any, data: Any, where: str, strict: bool) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError("%s: expected an object, got %s" % (where, _name(data)))
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if strict and unknown:
        raise ProtocolError("%s: unknown key %r" % (where, unknown[0]))
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _decode(hints[name], data[name], "%s.%s" % (where, name), strict)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ProtocolError("%s: missing key %r" % (where, name))
    return cls(**values)


def _scalar(kind: Any, data: Any, where: str) -> Any:
    if kind is bool:
        ok = isinstance(data, bool)
    elif kind is int:
        ok = isinstance(data, int) and not isinstance(data, bool)
    elif kind is float:
        ok = isinstance(data, (int, float)) and not isinstance(data, bool)
        data = float(data) if ok else data
    elif kind is str:
        ok = isinstance(data, str)
    else:
        raise ProtocolError("%s: a field of type %r cannot be read" % (where, kind))
    if not ok:
        raise ProtocolError("%s: expected %s, got %s" % (where, _KINDS[kind], _name(data)))
    return data


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _name(data: Any) -> str:
    if data is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(data), type(data).__name__)  # fmt: skip
