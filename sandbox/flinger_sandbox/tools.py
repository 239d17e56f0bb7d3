"""The programs the sandbox runs, which Debian packages provide them, and the root check."""

from __future__ import annotations

import os
import shutil

from flinger.errors import FlingerError

SSHD = "/usr/sbin/sshd"

# program -> Debian package providing it (sshd by absolute path: it must be re-executable).
TOOLS: tuple[tuple[str, str], ...] = (
    (SSHD, "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-agent", "openssh-client"),
    ("ssh-add", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("rsync", "rsync"),
    ("runsvdir", "runit"),
    ("sv", "runit"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("mount", "mount"),
    ("hostname", "hostname"),
    ("sudo", "sudo"),
    ("useradd", "passwd"),
    ("usermod", "passwd"),
    ("/usr/lib/openssh/sftp-server", "openssh-sftp-server"),
)


def missing_tools() -> list[str]:
    """Debian packages to install before the sandbox can run (empty when all are there)."""
    packages: list[str] = []
    for program, package in TOOLS:
        found = os.access(program, os.X_OK) if program.startswith("/") else shutil.which(program)
        if not found and package not in packages:
            packages.append(package)
    return packages


def require_environment() -> None:
    """Refuse, with what to do about it, when not root or when a program is missing."""
    missing = missing_tools()
    if missing:
        raise FlingerError(f"the sandbox needs programs that are not installed: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        raise FlingerError(
            "the sandbox must run as root: each host mounts its own /etc, /root, /opt, /srv "
            "and /home in a private mount namespace"
        )
