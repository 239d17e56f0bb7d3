"""The one rule for a plain name: servers, roles, packages, services, secrets, releases.

A plain name starts with a letter or digit and goes on with letters, digits, `.`, `_` and
`-`, at most 64 characters: it reaches shells, unit file names, paths and JSON keys on many
machines, so it holds nothing any of them reads differently. Python 3.9, standard library.
"""

import re
from typing import Optional

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_LENGTH = 64


def problem(value: str, what: str = "a name") -> Optional[str]:
    """None when `value` is a plain name, else what is wrong, in words for the operator."""
    if isinstance(value, str) and len(value) <= MAX_LENGTH and _NAME.match(value):
        return None
    return '"%s" is not %s: use letters, digits, ".", "_" and "-", starting with a letter or digit' % (value, what)
