"""Command lines for the OpenSSH client, used where bulk bytes ride OpenSSH (rsync).

Host keys are always checked strictly against a known_hosts file flinger chose.
"""

from __future__ import annotations

import shlex

from flinger.topology.model import Server, SshSettings


def ssh_argv(server: Server, settings: SshSettings, *, known_hosts: str | None = None) -> list[str]:
    """`ssh` with strict host-key options for `server` (without the destination)."""
    argv = [
        "ssh",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts or settings.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, int(settings.connect_timeout))}",
        # A peer that stops answering is a failure within a minute, not a hang.
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if not settings.use_ssh_config:
        argv[1:1] = ["-F", "/dev/null"]
    if server.port:
        argv += ["-p", str(server.port)]
    if server.user:
        argv += ["-l", server.user]
    if settings.jump:
        argv += ["-J", settings.jump]
    return argv


def rsync_rsh(server: Server, settings: SshSettings, *, known_hosts: str | None = None) -> str:
    """The value of rsync's `-e`: a shell-quoted ssh command line."""
    return shlex.join(ssh_argv(server, settings, known_hosts=known_hosts))


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
