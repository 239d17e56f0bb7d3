"""Command lines for OpenSSH run elsewhere (the builder's copies to the servers), rsync's
statistics, and remote paths as rsync and a remote shell take them.

Host keys are always checked strictly against a known_hosts file flinger chose.
"""

from __future__ import annotations

import shlex
import shutil

from flinger.errors import FlingerError
from flinger.ssh.config import SERVER_ALIVE_COUNT, SERVER_ALIVE_INTERVAL, Hop
from flinger.topology.model import SshSettings

# Local programs flinger runs, and the Debian/Ubuntu package that has each.
LOCAL_PROGRAMS = {"ssh": "openssh-client", "rsync": "rsync"}


def require_local(*programs: str) -> None:
    """A one-line error naming the package when a program flinger runs here is missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        packages = " ".join(dict.fromkeys(LOCAL_PROGRAMS.get(p, p) for p in missing))
        raise FlingerError(
            f"{' and '.join(missing)} not found on this machine (PATH): apt-get install {packages} (Debian/Ubuntu)"
        )


def strict_argv(settings: SshSettings, known_hosts: str, port: int, user: str) -> list[str]:
    """`ssh` (without the destination) as another host runs it to reach a server the client
    resolved (the builder's copies to the servers): strict host keys against `known_hosts`
    (written there by the client), none of that host's own ssh configuration, and the jump
    host, when deploy.toml names one, checked the same way."""
    argv = ["ssh", *_strict_options(settings, known_hosts), "-p", str(port)]
    if user:
        argv += ["-l", user]
    if settings.jump:
        argv += ["-o", f"ProxyCommand={_jump_proxy(settings, known_hosts)}"]
    return argv


def _strict_options(settings: SshSettings, known_hosts: str) -> list[str]:
    return [
        "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={max(1, int(settings.connect_timeout))}",
        # A peer that stops answering is a failure within a minute, not a hang.
        "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
        "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
    ]  # fmt: skip


def _jump_proxy(settings: SshSettings, known_hosts: str) -> str:
    """A ProxyCommand that reaches the jump host with the same strict options as the target
    (`-J` would start its own ssh for the jump with none of the -o options given here)."""
    assert settings.jump is not None
    hop = Hop.parse(settings.jump)
    argv = ["ssh", *_strict_options(settings, known_hosts)]
    if hop.port:
        argv += ["-p", str(hop.port)]
    if hop.user:
        argv += ["-l", hop.user]
    argv += ["-W", "%h:%p", "--", hop.host]
    # ssh expands %-tokens in ProxyCommand: keep a literal % in any value, but %h and %p.
    return " ".join(a if a == "%h:%p" else shlex.quote(a).replace("%", "%%") for a in argv)


RSYNC_STAT_FIELDS = {  # rsync --stats labels -> the keys flinger reports them under
    "Number of regular files transferred": "files_transferred",
    "Total file size": "total_size",
    "Total transferred file size": "transferred_size",
    "Literal data": "literal_bytes",
    "Matched data": "matched_bytes",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}


def rsync_stat(line: str) -> tuple[str, int] | None:
    """(key, number) of one `rsync --stats` line ("Literal data: 1,234 bytes"), else None."""
    label, colon, rest = line.partition(":")
    key = RSYNC_STAT_FIELDS.get(label)
    words = rest.split()
    number = words[0].replace(",", "") if words else ""
    return (key, int(number)) if colon and key is not None and number.isdigit() else None


def remote_rsync_path(path: str) -> str:
    """rsync does not expand $HOME or ~ on the remote side: make those relative to home."""
    for prefix in ("$HOME/", "~/"):
        if path.startswith(prefix):
            return path[len(prefix) :] or "."
    if path in ("$HOME", "~"):
        return "."
    return path


def remote_shell_path(path: str) -> str:
    """A path for a remote shell: quoted, with a leading $HOME or ~ left to the shell."""
    for prefix in ("$HOME/", "~/"):
        if path.startswith(prefix):
            return '"$HOME"/' + shlex.quote(path[len(prefix) :])
    if path in ("$HOME", "~"):
        return '"$HOME"'
    return shlex.quote(path)
