"""The Debian root file system that systemd sandbox hosts boot: made once with mmdebstrap, cached.

Every systemd host is an overlay on this one tree, so it is built once per machine (about
280 MB, 20-70 s from the Debian mirror) and shared read-only. What goes in is what a stock,
minimal Debian server has plus the login every sandbox host has: a `deploy` user with
passwordless `sudo -n`. sshd keeps Debian's configuration and limits; the drop-in only turns
passwords and root logins off. Units that make no sense in a container sharing this machine's
network are masked. The cache key is a digest of everything that decides the tree's content,
so a change here builds a new tree instead of booting a stale one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO

from flinger.errors import FlingerError
from flinger_sandbox.paths import LOGIN_USER

SUITE = "bookworm"
CACHE_DIR = Path("/var/cache/flinger-sandbox")
LOGIN_UID = 1000

PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "sudo", "python3",
    "rsync", "iproute2", "procps", "curl", "ca-certificates", "netbase", "less",
)  # fmt: skip

# Timers, gettys and network managers of a real machine: in a container that shares this
# machine's network and clock they would fail or fight the machine's own.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "console-getty.service", "getty@tty1.service",
    "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service",
)  # fmt: skip

SSHD_DROP_IN = "\n".join(
    [
        "# flinger sandbox: keys only, no root; every limit stays Debian's default",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "UseDNS no",
        "",
    ]
)

# Run in the new tree (chroot). No value is spliced in but the constants above.
_CUSTOMIZE = f"""
set -eu
useradd --create-home --shell /bin/bash --uid {LOGIN_UID} {LOGIN_USER}
usermod -p '*' {LOGIN_USER}
echo '{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/{LOGIN_USER}
chmod 440 /etc/sudoers.d/{LOGIN_USER}
install -d -m 700 -o {LOGIN_USER} -g {LOGIN_USER} /home/{LOGIN_USER}/.ssh
mkdir -p /var/log/journal
rm -f /etc/ssh/ssh_host_*
: >/etc/machine-id
systemctl mask {" ".join(MASKED_UNITS)} >/dev/null 2>&1
"""


def cache_key() -> str:
    """A digest of what decides the tree's content."""
    text = "\n".join([SUITE, ",".join(PACKAGES), ",".join(MASKED_UNITS), SSHD_DROP_IN, _CUSTOMIZE])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs_path(cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"{SUITE}-{cache_key()}"


def missing_tools() -> list[str]:
    """Debian packages this machine needs for systemd hosts (empty when all are there)."""
    need = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"}
    return [package for program, package in need.items() if shutil.which(program) is None]


def ensure(cache_dir: Path = CACHE_DIR, *, log: Path | None = None) -> Path:
    """The cached tree, built first if there is none yet; its path."""
    tree = rootfs_path(cache_dir)
    if (tree / ".flinger-rootfs").is_file():
        return tree
    missing = missing_tools()
    if missing:
        raise FlingerError(f"systemd sandbox hosts need: apt-get install {' '.join(missing)}")
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = tree.with_name(tree.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    log = log or cache_dir / f"{tree.name}.log"
    with log.open("wb") as out:
        _run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial)],
            out, log,
        )  # fmt: skip
        _run(["chroot", str(partial), "sh", "-c", _CUSTOMIZE], out, log)
    (partial / "etc/ssh/sshd_config.d/00-flinger-sandbox.conf").write_text(SSHD_DROP_IN)
    (partial / ".flinger-rootfs").write_text(cache_key() + "\n")
    os.replace(partial, tree)
    return tree


def _run(argv: list[str], out: IO[bytes], log: Path) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        raise FlingerError(
            f"building the systemd host root file system failed: {argv[0]} exited "
            f"{done.returncode}: {lines[-1] if lines else 'no output'} (log: {log})"
        )
