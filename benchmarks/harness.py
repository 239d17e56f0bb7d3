"""What every sandbox benchmark does the same way: start as root on a fresh directory with
the machine said first, and run commands that must succeed (a failure is no measurement)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from pathlib import Path


def begin(directory: Path) -> None:
    """Refuse to run without root (the sandbox) or on a directory that exists; say the machine."""
    if os.geteuid() != 0:
        raise SystemExit("the sandbox needs root")
    if directory.exists():
        raise SystemExit(f"{directory} exists: give a fresh --dir")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)


def checked(argv: list[str], env: dict[str, str], stdin: str | None = None, *, timeout: float = 600) -> str:
    """Run argv (stdin, if given, as its input); stop the benchmark with its output when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, input=stdin, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(argv)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout
