"""Child processes a terminal's Ctrl-C cannot reach: every ssh flinger starts.

A Ctrl-C at the terminal is a SIGINT to flinger's whole process group. It is the brake's
(flinger/engine/brake.py), so each ssh runs in a session of its own and finishes its step.
Starting one in a session of its own is not enough on its own: Python's subprocess starts a
child with vfork(2), sets the child's signal handlers back to the default, and only then calls
setsid(2). A SIGINT in that window kills the new child, and a server's step fails as "exited
with status -2" (measured: 56 of 800 children started under a storm of SIGINTs). With fork(2)
the child keeps the parent's handler until setsid, so the signal is caught and does nothing,
and the child is out of the group before it runs ssh. This module turns vfork off for the
process (`subprocess._USE_VFORK`, the switch Python documents for this) and starts children
in their own session.
"""

from __future__ import annotations

import subprocess
from typing import Any

setattr(subprocess, "_USE_VFORK", False)  # noqa: B010 - typeshed calls it Final; see the docstring


def run(argv: list[str], **options: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run in a session of its own, stdin from /dev/null unless given."""
    options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, start_new_session=True, **options)  # callers read returncode


def popen(argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen in a session of its own."""
    return subprocess.Popen(argv, start_new_session=True, **options)
