"""Bringing a sandbox up and down, and acting on one of its hosts (the public operations)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
from dataclasses import replace
from pathlib import Path

from flinger.errors import FlingerError
from flinger_sandbox import agent, config, keys, registry, rootfs, runit_hosts, state, systemd_hosts
from flinger_sandbox.net import is_listening, pick_addresses, wait_not_listening
from flinger_sandbox.paths import PRIVATE_MOUNTS, SandboxPaths, host_names
from flinger_sandbox.procs import ProcessRef, terminate
from flinger_sandbox.state import HostRecord, HostStatus, SandboxRecord, SandboxState
from flinger_sandbox.tools import require_environment

# sshd_config takes paths unquoted, and ssh expands % and ~ in some of them.
# The /etc overlay's mount options are split at "," and ":".
_SAFE_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@")
PRIVSEP_DIR = Path("/run/sshd")
INITS = ("runit", "systemd")


def _check_directory(directory: Path) -> Path:
    directory = directory.expanduser().resolve()
    if not set(str(directory)) <= _SAFE_PATH_CHARS:
        raise FlingerError(
            f"the sandbox directory {directory} holds characters sshd_config cannot take: "
            "use letters, digits and / . _ - only"
        )
    for target, _ in PRIVATE_MOUNTS:
        # Inside a host these paths are replaced, so the sandbox's own files would vanish.
        hidden = Path(target).resolve()
        if directory == hidden or hidden in directory.parents:
            raise FlingerError(
                f"the sandbox directory must not be under {target} (each host mounts its own "
                f"{target}): use e.g. /var/lib/flinger-sandbox"
            )
    if directory.exists() and directory.stat().st_uid != os.geteuid():
        raise FlingerError(f"the sandbox directory {directory} belongs to another user")
    return directory


def _running(record: SandboxRecord) -> list[ProcessRef]:
    procs = [p for h in record.hosts for p in h.processes()]
    if record.agent is not None:
        procs.append(record.agent)
    if record.registry is not None and record.registry.process is not None:
        procs.append(record.registry.process)
    return [p for p in procs if p.alive()]


def _host_running(record: SandboxRecord, host: HostRecord) -> bool:
    if record.init == "systemd":
        return host.container is not None and host.container.alive() and is_listening(host.addr, host.port)
    return bool(host.sshd and host.sshd.alive() and host.runsvdir and host.runsvdir.alive())


def _fully_running(record: SandboxRecord) -> bool:
    return record.agent is not None and record.agent.alive() and all(_host_running(record, h) for h in record.hosts)


def up(
    directory: Path,
    servers: int = 4,
    *,
    base_addr: str | None = None,
    port: int = 2222,
    source_dir: Path | None = None,
    init: str = "runit",
    with_registry: bool = False,
) -> SandboxState:
    """Start `servers` hosts (build1, node1..) in `directory`, or return the running sandbox.

    init "runit": sshd + runsvdir in a mount namespace (fast); "systemd": each host boots
    systemd in systemd-nspawn on a cached Debian rootfs, as real fleets run. With
    `with_registry`, also an OCI registry (sandbox/registry.py), and deploy.toml's
    [artifacts] sends packages through it (started beside a running sandbox too).
    """
    _check_arguments(init, servers, port)
    require_environment()
    directory = _check_directory(directory)
    existing = state.load(directory)
    if existing is not None:
        if _fully_running(existing) and len(existing.hosts) == servers and existing.init == init:
            if with_registry and not _registry_running(existing):
                existing = _start_registry(existing, source_dir)
            return SandboxState.of(existing)
        if _running(existing):
            raise FlingerError(
                f"a sandbox with {len(existing.hosts)} hosts already runs in {directory}: "
                "bring it down first (flinger-sandbox down)"
            )
        state.remove(directory)  # stale: everything it recorded is gone
    paths = SandboxPaths(directory)
    rootfs_tree = rootfs.ensure() if init == "systemd" else None
    by_name = _prepare(paths, servers, base_addr, port, rootfs_tree)
    record = SandboxRecord(directory=directory, port=port, init=init)
    state.save(record)
    try:
        record = _start(record, paths, by_name, rootfs_tree)
        if with_registry:
            record = _start_registry(record, source_dir)
        else:
            config.write(paths, source_dir or config.repository_root(), SandboxState.of(record).hosts, init)
    except BaseException:
        _, survivors = _stop_all(record)
        if not survivors:  # else keep the record, so `down` can try again
            state.remove(directory)
            paths.agent_socket.unlink(missing_ok=True)
        raise
    return SandboxState.of(record)


def _check_arguments(init: str, servers: int, port: int) -> None:
    if init not in INITS:
        raise FlingerError(f'init must be one of {", ".join(INITS)}, got "{init}"')
    if servers < 2:
        raise FlingerError("a sandbox needs at least 2 hosts: the builder and one node")
    if not 1 <= port <= 65535:
        raise FlingerError(f"port must be between 1 and 65535, got {port}")


def _prepare(
    paths: SandboxPaths, servers: int, base_addr: str | None, port: int, rootfs_tree: Path | None
) -> dict[str, str]:
    """Every host's files (keys, its /etc, its sshd or its rootfs overlay) and the client's
    known_hosts, before any host runs; host name -> address."""
    directory = paths.directory
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    paths.hosts_dir.mkdir(mode=0o700, exist_ok=True)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    keys.ensure_key(paths.client_key, "flinger-sandbox-client")
    by_name = dict(zip(host_names(servers), pick_addresses(base_addr, servers, port), strict=True))
    for name, addr in by_name.items():
        host = paths.host(name)
        keys.ensure_key(host.host_key, f"flinger-sandbox-{name}")
        if rootfs_tree is None:
            runit_hosts.prepare(host, addr, port)
        else:
            systemd_hosts.prepare(host, rootfs_tree, addr, port, _client_public(paths), by_name)
    # Known before any host runs: systemd hosts are ready when a strict SSH login works.
    keys.write_known_hosts(paths.known_hosts, [(a, port, paths.host(n).host_key) for n, a in by_name.items()])
    return by_name


def _start(
    record: SandboxRecord, paths: SandboxPaths, by_name: dict[str, str], rootfs_tree: Path | None
) -> SandboxRecord:
    """The agent, then every host (recorded as each starts, so `down` finds it)."""
    record = replace(record, agent=agent.start(paths))
    state.save(record)
    for name, addr in by_name.items():
        if rootfs_tree is None:
            started = runit_hosts.start(paths.host(name), addr, record.port, _client_public(paths))
        else:
            started = systemd_hosts.start(paths.host(name), rootfs_tree, addr, record.port)
        record = record.with_host(started)
        state.save(record)
    if rootfs_tree is not None:  # they boot side by side
        for booting in record.hosts:
            systemd_hosts.wait_ready(paths.host(booting.name), booting, paths.client_key, paths.known_hosts)
    return record


def _registry_running(record: SandboxRecord) -> bool:
    reg = record.registry
    return reg is not None and reg.process is not None and reg.process.alive() and is_listening(reg.addr, reg.port)


def _start_registry(record: SandboxRecord, source_dir: Path | None) -> SandboxRecord:
    """Start the registry (on the address after the last host), record it, and write
    deploy.toml with its [artifacts] table."""
    paths = SandboxPaths(record.directory)
    files = registry.RegistryFiles(paths.registry_dir)
    if record.registry is not None:
        registry.stop(record.registry)
    started = registry.start(files, registry.address_after(record.hosts[-1].addr))
    record = replace(record, registry=started)
    state.save(record)
    artifacts = registry.artifacts_table(files, started)
    config.write(
        paths, source_dir or config.repository_root(), SandboxState.of(record).hosts, record.init, artifacts=artifacts
    )
    return record


def registry_status(directory: Path) -> tuple[str, bool] | None:
    """The sandbox registry's URL and whether it answers, or None when it runs none."""
    record = state.load(directory.expanduser().resolve())
    if record is None or record.registry is None:
        return None
    return record.registry.url, _registry_running(record)


def registry_files(directory: Path) -> registry.RegistryFiles:
    """The files of the sandbox registry in `directory` (its CA, password, blobs)."""
    return registry.RegistryFiles(SandboxPaths(directory.expanduser().resolve()).registry_dir)


def _client_public(paths: SandboxPaths) -> str:
    """The client key as an authorized_keys line."""
    return " ".join(keys.public_key(paths.client_key))


def _write_known_hosts(record: SandboxRecord) -> None:
    paths = SandboxPaths(record.directory)
    keys.write_known_hosts(paths.known_hosts, [(h.addr, h.port, paths.host(h.name).host_key) for h in record.hosts])


def _stop_host(record: SandboxRecord, host: HostRecord) -> tuple[bool, list[ProcessRef]]:
    if record.init == "systemd":
        return systemd_hosts.stop(host, SandboxPaths(record.directory).host(host.name))
    return runit_hosts.stop(host)


def _stop_all(record: SandboxRecord) -> tuple[list[str], list[ProcessRef]]:
    stopped: list[str] = []
    survivors: list[ProcessRef] = []
    alive = {h.name for h in record.hosts if any(p.alive() for p in h.processes())}
    if record.init == "systemd":  # a clean halt takes seconds: ask them all first
        for host in record.hosts:
            for pid in systemd_hosts.nspawn_pids(host):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
    for host in record.hosts:
        was_running, left = _stop_host(record, host)
        if was_running or host.name in alive:
            stopped.append(host.name)
        survivors += left
    if record.agent is not None:
        survivors += terminate([record.agent])
    if record.registry is not None:
        survivors += registry.stop(record.registry)
    return stopped, survivors


def down(directory: Path, *, purge: bool = False) -> list[str]:
    """Stop every process the sandbox in `directory` started; return the hosts stopped.

    Keys and host directories stay for the next `up` unless `purge`.
    """
    directory = directory.expanduser().resolve()
    paths = SandboxPaths(directory)
    record = state.load(directory)
    stopped: list[str] = []
    if record is not None:
        stopped, survivors = _stop_all(record)
        if survivors:
            pids = ", ".join(str(p.pid) for p in survivors)
            raise FlingerError(f"sandbox processes survived SIGKILL: {pids}")
        listening = [h.name for h in record.hosts if not wait_not_listening(h.addr, h.port, runit_hosts.STOP_TIMEOUT)]
        if listening:
            raise FlingerError(f"something still listens on the address of {', '.join(listening)}")
        state.remove(directory)
    paths.agent_socket.unlink(missing_ok=True)
    if purge:
        _purge(paths)
    return stopped


def _purge(paths: SandboxPaths) -> None:
    """Remove what `up` created (and only that); the directory itself if left empty."""
    for tree in (paths.hosts_dir, paths.registry_dir):
        if tree.exists():
            shutil.rmtree(tree)
    for path in (
        paths.client_key,
        paths.client_key.with_name(paths.client_key.name + ".pub"),
        paths.known_hosts,
        paths.config,
        paths.agent_log,
    ):
        path.unlink(missing_ok=True)
    flinger_state = paths.directory / ".flinger"
    if flinger_state.is_dir():
        shutil.rmtree(flinger_state)
    try:
        paths.directory.rmdir()
    except OSError:
        pass  # the user keeps other files there


def _load_running(directory: Path) -> SandboxRecord:
    directory = directory.expanduser().resolve()
    record = state.load(directory)
    if record is None:
        raise FlingerError(f"no sandbox in {directory}: start one with flinger-sandbox up")
    return record


def status(directory: Path) -> list[HostStatus]:
    """Each recorded host and whether its sshd and runsvdir run (empty when no sandbox)."""
    record = state.load(directory.expanduser().resolve())
    if record is None:
        return []
    return [
        HostStatus(
            name=h.name,
            addr=h.addr,
            port=h.port,
            sshd_alive=(h.sshd is not None and h.sshd.alive())
            if record.init == "runit"
            else is_listening(h.addr, h.port),
            supervisor_alive=(h.runsvdir is not None and h.runsvdir.alive())
            if record.init == "runit"
            else systemd_hosts.leader(h) is not None,
        )
        for h in record.hosts
    ]


def state_of(directory: Path) -> SandboxState:
    """The SandboxState of the sandbox recorded in `directory` (running or not)."""
    return SandboxState.of(_load_running(directory))


def env(directory: Path) -> str:
    """Shell lines to `eval`: the sandbox agent and its deploy.toml."""
    record = _load_running(directory)
    paths = SandboxPaths(record.directory)
    return (
        f"export SSH_AUTH_SOCK={shlex.quote(str(paths.agent_socket))}\n"
        f"export FLINGER_CONFIG={shlex.quote(str(paths.config))}\n"
    )


def stop_host(directory: Path, name: str) -> None:
    """Stop only that host's sshd, so it refuses connections (its services keep running)."""
    record = _load_running(directory)
    host = record.host(name)
    if record.init == "systemd":
        systemd_hosts.set_sshd(host, running=False)
        if not wait_not_listening(host.addr, host.port, runit_hosts.STOP_TIMEOUT):
            raise FlingerError(f"sshd of sandbox host {name} still listens")
        return
    survivors = runit_hosts.stop_sshd(host)
    if survivors:
        raise FlingerError(f"sshd of sandbox host {name} (pid {host.sshd and host.sshd.pid}) did not stop")
    state.save(record.with_host(replace(host, sshd=None)))


def start_host(directory: Path, name: str) -> None:
    """Start that host's sshd again (the whole host if its runsvdir is gone too)."""
    record = _load_running(directory)
    host = record.host(name)
    paths = SandboxPaths(record.directory).host(name)
    if record.init == "systemd":
        systemd_hosts.set_sshd(host, running=True)
        systemd_hosts.wait_ready(paths, host, SandboxPaths(record.directory).client_key,
                                 SandboxPaths(record.directory).known_hosts)  # fmt: skip
        return
    if host.sshd is not None and host.sshd.alive():
        return
    if host.runsvdir is not None and host.runsvdir.alive():
        started = runit_hosts.start_sshd_in_namespace(paths, host)
    else:
        runit_hosts.stop(host)  # whatever is left of it
        if is_listening(host.addr, host.port):
            raise FlingerError(f"{host.addr}:{host.port} of sandbox host {name} is taken")
        started = runit_hosts.start(paths, host.addr, host.port, _client_public(SandboxPaths(record.directory)))
    state.save(record.with_host(started))


def rotate_host_key(directory: Path, name: str) -> None:
    """Give that host a new host key and restart its sshd; known_hosts keeps the old key
    (so clients see a changed key) until `refresh_known_hosts`."""
    record = _load_running(directory)
    host = record.host(name)
    paths = SandboxPaths(record.directory).host(name)
    keys.generate_key(paths.host_key, f"flinger-sandbox-{name}")
    if record.init == "systemd":
        systemd_hosts.install_host_key(host, paths)
        done = systemd_hosts.in_host(host, "systemctl", "restart", "ssh.service")
        if done.returncode != 0:
            raise FlingerError(f"sandbox host {name}: restarting sshd failed: {done.stderr.strip()}")
        return
    if host.sshd is not None and host.sshd.alive():
        stop_host(directory, name)
        start_host(directory, name)


def refresh_known_hosts(directory: Path) -> Path:
    """Rewrite <dir>/known_hosts with every host's current key; return its path."""
    record = _load_running(directory)
    _write_known_hosts(record)
    return SandboxPaths(record.directory).known_hosts
