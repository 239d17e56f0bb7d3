"""The oldest Python the remote tool and the example service support (3.9), for the tests that
run code on it. python3.9 on PATH, else a pyenv-built 3.9; in CI a missing one is a failure,
never a silent skip."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest


def _runs(path: str) -> bool:
    try:
        done = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


def find_python39() -> str | None:
    """A python3.9 that really runs (a pyenv shim may name one that does not), or None."""
    candidates = [shutil.which("python3.9") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")), reverse=True)
    candidates += ["/usr/bin/python3.9", "/usr/local/bin/python3.9"]
    return next((c for c in candidates if c and _runs(c)), None)


def require_python39() -> str:
    """The python3.9 to run on; skips (or, with CI set, fails) when there is none."""
    found = find_python39()
    if found is None:
        reason = "no working python3.9 here (the oldest supported Python): install one, e.g. with pyenv"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this must not be skipped")
        pytest.skip(reason)
    return found
