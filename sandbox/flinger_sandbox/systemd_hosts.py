"""One systemd sandbox host: `systemd-nspawn --boot` on an overlay of the cached Debian rootfs.

systemd is PID 1 inside, with journald, logind and Debian's own sshd (ssh.service) listening on
the host's loopback address; the host shares this machine's network. Its own /etc, /opt, /var,
/home... are the overlay's upper dir, mounted in a private mount namespace so nothing shows in
this machine's mount table and a SIGKILL leaves nothing mounted.

Where this machine's PID 1 is not systemd, nspawn cannot register with machined: it runs with
`--keep-unit --register=no`, and each host is first moved into a cgroup of its own (in the
cgroup2 tree and the `name=systemd` v1 tree), or their systemds would fight over one cgroup.
The container gets a pure cgroup2 hierarchy (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1): with hybrid
cgroups it boots but never shuts down. `systemctl reboot` inside ends nspawn with 133, which the
wrapper answers by booting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from flinger.errors import FlingerError
from flinger_sandbox import keys
from flinger_sandbox.net import is_listening
from flinger_sandbox.paths import LOGIN_USER, HostPaths
from flinger_sandbox.procs import ProcessRef, spawn, terminate, wait_gone
from flinger_sandbox.rootfs import LOGIN_UID
from flinger_sandbox.state import HostRecord

BOOT_TIMEOUT = 120.0
HALT_TIMEOUT = 30.0
_REBOOT_EXIT = 133

# Arguments: host dir, machine name, rootfs, extra nspawn flags, then cgroup dirs to enter.
_WRAPPER = r"""
set -eu
dir=$1
machine=$2
lower=$3
extra=$4
shift 4
for cg in "$@"; do
    mkdir -p "$cg"
    echo "$$" >"$cg/cgroup.procs"
done
exec unshare --mount --propagation private sh -ec '
dir=$1
machine=$2
lower=$3
extra=$4
mkdir -p /run/systemd/nspawn
mount -t tmpfs tmpfs /run/systemd/nspawn
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
while :; do
    rc=0
    systemd-nspawn -q -D "$dir/merged" -M "$machine" --boot --link-journal=no \
        --console=read-only $extra || rc=$?
    [ "$rc" = 133 ] || exit "$rc"
done
' host "$dir" "$machine" "$lower" "$extra"
"""


def _booted_with_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def _cgroup_roots() -> list[Path]:
    """The cgroup2 tree and the v1 `name=systemd` tree, where this machine has them."""
    fs = Path("/sys/fs/cgroup")
    unified = fs if (fs / "cgroup.controllers").exists() else fs / "unified"
    return [root for root in (unified, fs / "systemd") if (root / "cgroup.procs").exists()]


def _tag(paths: HostPaths) -> str:
    """Short and unique per sandbox host: machine names and cgroups of two sandboxes differ."""
    return hashlib.sha256(str(paths.directory).encode()).hexdigest()[:8]


def _cgroups(paths: HostPaths) -> list[Path]:
    if _booted_with_systemd():
        return []
    return [root / "flinger-sandbox" / f"{_tag(paths)}-{paths.name}" for root in _cgroup_roots()]


def _upper(paths: HostPaths) -> Path:
    return paths.directory / "upper"


def _put(paths: HostPaths, lower: Path, relative: str, data: bytes, mode: int, uid: int = 0) -> None:
    """Write a file of the host's own into its upper dir (before the overlay is mounted).

    Each directory made on the way copies owner and mode from the rootfs: in an overlay the
    upper dir's attributes win, and a root-owned 0755 /home/deploy would break sshd's checks.
    """
    target = _upper(paths) / relative
    parts = Path(relative).parts
    for depth in range(1, len(parts)):
        sub = Path(*parts[:depth])
        made = _upper(paths) / sub
        if not made.is_dir():
            made.mkdir()
            try:
                st = (lower / sub).stat()
                os.chown(made, st.st_uid, st.st_gid)
                made.chmod(st.st_mode & 0o7777)
            except FileNotFoundError:
                made.chmod(0o755)
    target.write_bytes(data)
    os.chown(target, uid, uid)
    target.chmod(mode)


def prepare(
    paths: HostPaths, rootfs: Path, addr: str, port: int, client_public_key: str, hosts: dict[str, str]
) -> None:
    """The host's identity in its upper dir: name, machine id, host key, listen address, login key."""
    for sub in ("upper", "work", "merged"):
        (paths.directory / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    machine_id = _upper(paths) / "etc" / "machine-id"
    if not machine_id.is_file() or not machine_id.read_text().strip():
        _put(paths, rootfs, "etc/machine-id", os.urandom(16).hex().encode() + b"\n", 0o444)
    _put(paths, rootfs, "etc/hostname", f"{paths.name}\n".encode(), 0o644)
    names = "".join(f"{a} {n}\n" for n, a in hosts.items())
    _put(paths, rootfs, "etc/hosts", f"127.0.0.1 localhost\n::1 localhost\n{names}".encode(), 0o644)
    _put(paths, rootfs, "etc/ssh/ssh_host_ed25519_key", paths.host_key.read_bytes(), 0o600)
    _put(paths, rootfs, "etc/ssh/ssh_host_ed25519_key.pub", paths.host_key_pub.read_bytes(), 0o644)
    _put(paths, rootfs, "etc/ssh/sshd_config.d/10-listen.conf", f"ListenAddress {addr}:{port}\n".encode(), 0o644)
    # Host-to-host ssh (the builder's pushes) leaves from the host's own address, not 127.0.0.1.
    _put(paths, rootfs, "etc/ssh/ssh_config.d/10-bind.conf", f"BindAddress {addr}\n".encode(), 0o644)
    _put(
        paths, rootfs, f"home/{LOGIN_USER}/.ssh/authorized_keys",
        client_public_key.strip().encode() + b"\n", 0o600, uid=LOGIN_UID,
    )  # fmt: skip


def start(paths: HostPaths, rootfs: Path, addr: str, port: int) -> HostRecord:
    """Boot the host (does not wait: see wait_ready)."""
    if is_listening(addr, port):
        raise FlingerError(f"{addr}:{port} of sandbox host {paths.name} is taken")
    extra = "" if _booted_with_systemd() else "--keep-unit --register=no"
    machine = f"fs{_tag(paths)}-{paths.name}"[:64]
    argv = [
        "sh", "-c", _WRAPPER, "host",
        str(paths.directory), machine, str(rootfs), extra, *map(str, _cgroups(paths)),
    ]  # fmt: skip
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
        # /proc/sys writable, as for root on a real host (install-prereqs sets sysctls). The
        # container shares this machine's kernel: a sysctl set there is set here too.
        "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "1",
    }
    proc = spawn(argv, paths.directory / "console.log", env)
    wrapper = ProcessRef.of(proc.pid)
    if wrapper is None:
        raise FlingerError(f"sandbox host {paths.name} did not start: {_console_tail(paths)}")
    return HostRecord(paths.name, addr, port, container=wrapper)


def _console_tail(paths: HostPaths) -> str:
    try:
        lines = [ln for ln in (paths.directory / "console.log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no console log"
    return (lines[-1].strip() if lines else "nothing logged") + f" (log: {paths.directory / 'console.log'})"


def wait_ready(paths: HostPaths, record: HostRecord, client_key: Path, known_hosts: Path) -> None:
    """Until the login user can log in over SSH (systemd refuses logins while it boots)."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(client_key), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=2", "-p", str(record.port), f"{LOGIN_USER}@{record.addr}", "true",
    ]  # fmt: skip
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if record.container is None or not record.container.alive():
            raise FlingerError(f"sandbox host {paths.name} stopped while booting: {_console_tail(paths)}")
        if is_listening(record.addr, record.port):
            done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=30)
            if done.returncode == 0:
                return
        time.sleep(0.2)
    raise FlingerError(
        f"sandbox host {paths.name} took longer than {BOOT_TIMEOUT:.0f}s to accept an SSH login: {_console_tail(paths)}"
    )


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def nspawn_pids(record: HostRecord) -> list[int]:
    """The host's systemd-nspawn process (SIGTERM to it asks the host's systemd to halt)."""
    if record.container is None or not record.container.alive():
        return []
    return _children(record.container.pid)


def leader(record: HostRecord) -> int | None:
    """The pid (in this machine's view) of the host's PID 1, its systemd."""
    if record.container is None or not record.container.alive():
        return None
    for nspawn in _children(record.container.pid):
        for pid in _children(nspawn):
            return pid
    return None


def stop(record: HostRecord, paths: HostPaths) -> tuple[bool, list[ProcessRef]]:
    """A clean poweroff (SIGTERM to nspawn), then SIGKILL after HALT_TIMEOUT; cgroups removed."""
    wrapper = record.container
    running = wrapper is not None and wrapper.alive()
    survivors: list[ProcessRef] = []
    if wrapper is not None and running:
        nspawns = [ref for pid in nspawn_pids(record) if (ref := ProcessRef.of(pid)) is not None]
        for nspawn in nspawns:
            nspawn.signal(signal.SIGTERM)
        if wait_gone([wrapper], HALT_TIMEOUT):
            inner = [ProcessRef.of(pid) for n in nspawns for pid in _children(n.pid)]
            targets = [p for p in [*inner, *nspawns, wrapper] if p is not None]
            survivors = terminate(targets, signal.SIGKILL)
    for cgroup in _cgroups(paths):
        _remove_cgroup(cgroup)
    return running, survivors


def _remove_cgroup(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()
    with contextlib.suppress(OSError):
        cgroup.parent.rmdir()  # flinger-sandbox/, once no host uses it


def in_host(record: HostRecord, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command as root inside the host's namespaces (no SSH), e.g. systemctl."""
    pid = leader(record)
    if pid is None:
        raise FlingerError(f"sandbox host {record.name} is not running")
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-a", *command], capture_output=True, text=True, check=False, timeout=60
    )


def set_sshd(record: HostRecord, running: bool) -> None:
    """Stop or start the host's sshd (open sessions stay, as with `systemctl stop ssh`)."""
    done = in_host(record, "systemctl", "start" if running else "stop", "ssh.service")
    if done.returncode != 0:
        raise FlingerError(f"sandbox host {record.name}: systemctl: {done.stderr.strip() or done.returncode}")


def install_host_key(record: HostRecord, paths: HostPaths) -> None:
    """Copy the host's (new) key into the running host, through its own mount namespace."""
    pid = leader(record)
    if pid is None:
        raise FlingerError(f"sandbox host {record.name} is not running")
    etc_ssh = Path(f"/proc/{pid}/root/etc/ssh")
    for source, name, mode in (
        (paths.host_key, "ssh_host_ed25519_key", 0o600),
        (paths.host_key_pub, "ssh_host_ed25519_key.pub", 0o644),
    ):
        keys.write_private_file(etc_ssh / name, source.read_text(), mode)
