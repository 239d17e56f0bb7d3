"""`Secret`: a value that never shows itself in a repr, str, format, log line or traceback."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Generic, NoReturn, TypeVar

_V = TypeVar("_V", bytes, str)


class Secret(Generic[_V]):
    """Wraps bytes or str. Every way of turning it into text shows only a short fingerprint
    (8 hex digits of SHA-256: enough to tell two values apart, not to recover a random one);
    `.reveal()` is the one explicit way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: _V) -> None:
        if not isinstance(value, (bytes, str)):
            raise TypeError("Secret wraps bytes or str")
        self._value: _V = value

    def reveal(self) -> _V:
        """The value itself: call it only where the value must go (a private file, a template)."""
        return self._value

    def _bytes(self) -> bytes:
        v = self._value
        return v.encode() if isinstance(v, str) else v

    @property
    def fingerprint(self) -> str:
        """A short, safe-to-show identifier of the value."""
        return "SHA256:" + hashlib.sha256(self._bytes()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Secret(<redacted> {self.fingerprint}…)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        # Whatever the format spec, never the value.
        return repr(self)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._bytes(), other._bytes())

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._bytes()).digest()))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not pickled: reveal() it explicitly where it must go")

    def __getstate__(self) -> Any:
        raise TypeError("a Secret is not pickled: reveal() it explicitly where it must go")
