"""What a value in deploy.toml or the package manifest may hold, beyond its TOML type.

Each check returns None when the value is fine, else what is wrong, in words for the operator
(the loaders add file, line and key). Values travel into shells, unit files, sshd and rsync
command lines on many machines: a name is a plain name, an address is a host name or an IP
literal, and a path that reaches a remote shell or a unit file is written in characters that
need no quoting anywhere, so no quoting rule can ever be got wrong.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from flinger.protocol import names

# Reordering and invisible characters: a value that shows one thing and is another.
_BIDI_AND_INVISIBLE = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
)
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+@:,=-]+$")
_HOST_KEY = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def text_problem(value: str) -> str | None:
    """Control characters, line breaks, bidi controls and zero-width characters are refused in
    every string (a tab is allowed)."""
    for char in value:
        if char == "\t":
            continue
        if char in "\r\n":
            return "must be a single line"
        if char in _BIDI_AND_INVISIBLE:
            return f"holds an invisible or text-reordering character (U+{ord(char):04X})"
        if unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn"):
            return f"holds a control or unassigned character (U+{ord(char):04X})"
    return None


def name_problem(value: str, what: str = "a name") -> str | None:
    """The one plain-name rule (flinger/protocol/names.py), which the remote tool also checks."""
    return names.problem(value, what)


def user_problem(value: str) -> str | None:
    if len(value) <= 32 and _USER.match(value):
        return None
    return f'"{value}" is not a user or group name'


def host_problem(value: str) -> str | None:
    """A DNS host name or an IPv4/IPv6 literal (no port, no path, no brackets)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if (
        0 < len(name) <= 253
        and all(_LABEL.match(label) for label in name.split("."))
        and not name.replace(".", "").isdigit()
    ):
        return None
    hint = " (a port goes in `port`, not in the address)" if ":" in value and "." in value else ""
    if "/" in value:
        hint = ' (no "/": a network prefix or a path is not an address)'
    return f'"{value}" is not a host name or IP address{hint}'


def jump_problem(value: str) -> str | None:
    """[user@]host[:port]."""
    user, _, hostport = value.rpartition("@")
    host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
    if user and user_problem(user):
        return f'"{value}": {user_problem(user)}'
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f'"{value}": the port must be a number from 1 to 65535'
    problem = host_problem(host.strip("[]"))
    return f'"{value}": {problem}' if problem else None


def remote_path_problem(value: str, *, home: bool) -> str | None:
    """An absolute path (or ~/..., $HOME/... where `home`) of safe characters only."""
    rest = value
    if home and (value in ("~", "$HOME") or value.startswith(("~/", "$HOME/"))):
        rest = value.split("/", 1)[1] if "/" in value else ""
    elif not value.startswith("/"):
        return f'"{value}" must be an absolute path' + (" (or start with ~/ or $HOME/)" if home else "")
    if rest and not _SAFE_PATH.match(rest):
        bad = sorted({c for c in rest if not _SAFE_PATH.match(c)})
        shown = " ".join(repr(c) for c in bad[:5])
        return (
            f'"{value}" holds characters a remote shell or unit file would read differently ({shown}): '
            "use letters, digits and . _ / + @ : , = -"
        )
    if "/../" in f"{rest}/" or rest.startswith("../"):
        return f'"{value}" must not contain ".."'
    return None


def host_key_problem(value: str) -> str | None:
    if _HOST_KEY.match(value):
        return None
    return f'"{value}" is not an SSH key fingerprint like "SHA256:" followed by 43 base64 characters'
