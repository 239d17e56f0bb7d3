"""One sandbox host: its sshd_config, and starting/stopping its sshd + runsvdir in a namespace.

A host is `unshare --mount --uts` running a fixed sh script that puts an overlay over /etc (so
the host has its own users, sudoers and hosts file while this machine's /etc stays untouched),
bind-mounts the host's own directories over /root, /opt, /srv, /etc/sv, /etc/service and /home,
makes the non-root login user (key login, passwordless `sudo -n`), starts
`runsvdir -P /etc/service` in the background and then execs sshd. unshare and sh both exec, so
the pid we spawn *is* the sshd, and everything sshd forks (login sessions, what users start)
shares the private mounts. sshd_config sets no session or startup limit, so OpenSSH's defaults
apply and root logins are refused: what works here works on a stock Debian host.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from flinger.errors import FlingerError
from flinger_sandbox.net import wait_listening, wait_not_listening
from flinger_sandbox.paths import LOGIN_USER, PRIVATE_MOUNTS, HostPaths
from flinger_sandbox.procs import (
    ProcessRef,
    discard,
    mount_namespace,
    processes_in_namespace,
    spawn,
    terminate,
    wait_gone,
)
from flinger_sandbox.state import HostRecord
from flinger_sandbox.tools import SSHD

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# What sessions and supervised services inherit: nothing of the caller's environment.
HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

# Arguments: host dir, host name, login user, its public key, then (mount target, backing dir)
# pairs. Values only ever arrive as positional parameters, never spliced into the script text.
_HOST_SCRIPT = r"""
set -eu
host_dir=$1
host_name=$2
user=$3
pubkey=$4
shift 4
mount -t overlay overlay \
    -o "lowerdir=/etc,upperdir=$host_dir/etc-upper,workdir=$host_dir/etc-work" /etc
while [ "$#" -gt 1 ]; do
    [ -d "$1" ] || mkdir -p "$1"
    mount --bind "$2" "$1"
    shift 2
done
hostname "$host_name"
id -u "$user" >/dev/null 2>&1 || useradd --shell /bin/bash --home-dir "/home/$user" "$user"
usermod -p '*' "$user"  # no password, but not locked: sshd refuses locked accounts
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0755 -o "$user" -g "$(id -g "$user")" "$home"
install -d -m 0700 -o "$user" -g "$(id -g "$user")" "$home/.ssh"
printf '%s\n' "$pubkey" >"$home/.ssh/authorized_keys"
chown "$user:$(id -g "$user")" "$home/.ssh/authorized_keys"
chmod 600 "$home/.ssh/authorized_keys"
cd /
runsvdir -P /etc/service 'log: ..........................................................' \
    </dev/null >>"$host_dir/runsvdir.log" 2>&1 &
echo "$!" >"$host_dir/runsvdir.pid"
exec "$SANDBOX_SSHD" -D -e -f "$host_dir/sshd_config"
"""

_BACKING_MODES = {"root": 0o700}


def sshd_config(paths: HostPaths, addr: str, port: int) -> str:
    """The sshd_config of a sandbox host: Debian's settings and limits, a key login only."""
    return "\n".join(
        [
            f"# sandbox host {paths.name}, written by flinger-sandbox up",
            f"ListenAddress {addr}:{port}",
            f"HostKey {paths.host_key}",
            f"PidFile {paths.sshd_pid_file}",
            "PermitRootLogin no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM yes",
            "AllowAgentForwarding yes",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ]
    )


def _etc_file(paths: HostPaths, relative: str, text: str, mode: int) -> None:
    """Write a file of the host's own /etc (into its overlay's upper dir, before it mounts)."""
    target = paths.etc_upper / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def prepare(paths: HostPaths, addr: str, port: int) -> None:
    """Create the host's directories and write its sshd_config, sudoers and hosts file."""
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for _, backing_name in PRIVATE_MOUNTS:
        backing = paths.directory / backing_name
        backing.mkdir(exist_ok=True)
        backing.chmod(_BACKING_MODES.get(backing_name, 0o755))
    for overlay_dir in (paths.etc_upper, paths.etc_work):
        overlay_dir.mkdir(mode=0o755, exist_ok=True)
    _etc_file(paths, f"sudoers.d/flinger-sandbox-{LOGIN_USER}", f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n", 0o440)
    _etc_file(paths, "hosts", f"127.0.0.1 localhost\n::1 localhost\n{addr} {paths.name}\n", 0o644)
    paths.sshd_config.write_text(sshd_config(paths, addr, port))
    check = subprocess.run([SSHD, "-t", "-f", str(paths.sshd_config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        detail = (check.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlingerError(f"sshd rejects {paths.sshd_config}: {detail}")


def _last_log_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "nothing logged"


def _spawn(argv: list[str], paths: HostPaths) -> subprocess.Popen[bytes]:
    return spawn(argv, paths.sshd_log, {**HOST_ENV, "SANDBOX_SSHD": SSHD})


def _await_sshd(proc: subprocess.Popen[bytes], paths: HostPaths, addr: str, port: int) -> ProcessRef:
    sshd = ProcessRef.of(proc.pid)
    if sshd is not None and wait_listening(addr, port, START_TIMEOUT, lambda: proc.poll() is None):
        return sshd
    discard(proc)
    raise FlingerError(
        f"sandbox host {paths.name} did not listen on {addr}:{port}: "
        f"{_last_log_line(paths.sshd_log)} (log: {paths.sshd_log})"
    )


def start(paths: HostPaths, addr: str, port: int, client_public_key: str) -> HostRecord:
    """Start the host (namespace, mounts, login user, runsvdir, sshd); wait until sshd listens."""
    paths.runsvdir_pid_file.unlink(missing_ok=True)
    mounts = [str(v) for target, _ in PRIVATE_MOUNTS for v in (target, paths.backing(target))]
    argv = [
        "unshare", "--mount", "--uts", "--propagation", "private",
        "sh", "-c", _HOST_SCRIPT, "sandbox-host", str(paths.directory), paths.name,
        LOGIN_USER, client_public_key.strip(), *mounts,
    ]  # fmt: skip
    proc = _spawn(argv, paths)
    sshd = _await_sshd(proc, paths, addr, port)
    namespace = mount_namespace(sshd.pid)
    runsvdir = None
    try:
        runsvdir = ProcessRef.of(int(paths.runsvdir_pid_file.read_text().strip()))
    except (OSError, ValueError):
        pass
    record = HostRecord(paths.name, addr, port, sshd, runsvdir, namespace)
    if namespace is None or namespace == mount_namespace(os.getpid()):
        stop(record)
        raise FlingerError(f"sandbox host {paths.name} did not get its own mount namespace")
    if runsvdir is None or mount_namespace(runsvdir.pid) != namespace:
        stop(record)
        raise FlingerError(f"runsvdir of sandbox host {paths.name} did not start (log: {paths.runsvdir_log})")
    return record


def start_sshd_in_namespace(paths: HostPaths, record: HostRecord) -> HostRecord:
    """Start only sshd again, inside the namespace the host's runsvdir still runs in."""
    runsvdir = record.runsvdir
    if runsvdir is None or record.namespace is None or not runsvdir.alive():
        raise FlingerError(f"sandbox host {paths.name} has no running runsvdir to join")
    if mount_namespace(runsvdir.pid) != record.namespace:
        raise FlingerError(f"runsvdir of sandbox host {paths.name} left its namespace")
    ns = f"/proc/{runsvdir.pid}/ns"
    argv = [
        "nsenter", f"--mount={ns}/mnt", f"--uts={ns}/uts", "--wd=/",
        SSHD, "-D", "-e", "-f", str(paths.sshd_config),
    ]  # fmt: skip
    proc = _spawn(argv, paths)
    sshd = _await_sshd(proc, paths, record.addr, record.port)
    return HostRecord(record.name, record.addr, record.port, sshd, runsvdir, record.namespace)


def stop_sshd(record: HostRecord) -> list[ProcessRef]:
    """Stop the host's sshd listener (sessions already open stay); return survivors."""
    survivors = terminate([record.sshd] if record.sshd else [], timeout=STOP_TIMEOUT)
    if not survivors:
        wait_not_listening(record.addr, record.port, STOP_TIMEOUT)
    return survivors


def _verified_namespaces(record: HostRecord) -> set[str]:
    """The host's mount namespace, only while a recorded process of ours still proves it."""
    found = {ns for p in record.processes() if (ns := p.mount_namespace()) is not None}
    # Never the namespace flinger itself or init runs in: that would be the whole machine.
    found -= {ns for ns in (mount_namespace(os.getpid()), mount_namespace(1)) if ns}
    if record.namespace is not None:
        found &= {record.namespace}
    return found


def _members(namespaces: set[str]) -> list[ProcessRef]:
    return [p for ns in sorted(namespaces) for p in processes_in_namespace(ns)]


def stop(record: HostRecord) -> tuple[bool, list[ProcessRef]]:
    """Stop the whole host: runsvdir (HUP: its runsv stop their services), sshd, and anything
    else still running in the host's namespace. Returns (was running, survivors)."""
    namespaces = _verified_namespaces(record)
    members = _members(namespaces)
    running = any(p.alive() for p in record.processes()) or bool(members)
    if record.runsvdir is not None:
        record.runsvdir.signal(signal.SIGHUP)
    if record.sshd is not None:
        record.sshd.signal(signal.SIGTERM)
    wait_gone([*record.processes(), *members], STOP_TIMEOUT)
    # Whatever is left, including what daemonized away from sshd or runsv meanwhile.
    survivors = terminate([*record.processes(), *_members(namespaces)], timeout=STOP_TIMEOUT)
    return running, survivors
