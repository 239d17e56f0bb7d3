"""`flinger trust`: fetch host keys, show their fingerprints, and record them (explicit first use)."""

from __future__ import annotations

import threading
from typing import Any

from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.hosts import open_hosts
from flinger.engine.results import ServerResult
from flinger.errors import HostKeyError, UsageError
from flinger.progress import Sink, nowhere
from flinger.ssh import known_hosts
from flinger.ssh.hostkeys import fingerprint
from flinger.topology.model import Server, Topology


def run_trust(
    topology: Topology,
    servers: list[Server],
    *,
    replace: bool = False,
    parallel: int = 16,
    events: Sink = nowhere,
) -> list[ServerResult]:
    """Record each server's key in [ssh] known_hosts; a changed key needs `replace`."""
    path = topology.ssh.known_hosts
    record_lock = threading.Lock()  # keys are fetched in parallel, written one at a time
    hosts = open_hosts(topology)
    keys = hosts.keys
    if keys is None:
        raise UsageError("this transport has no host keys to trust")

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        port = server.port or 22
        report.step("key exchange")
        key = keys.fetch(server)
        seen = fingerprint(key)
        report.details.update({"fingerprint": seen, "key_type": key.get_name()})
        if server.host_key is not None and server.host_key != seen:
            raise HostKeyError(f"{server.name}: host key {seen} does not match the pinned host_key {server.host_key}")
        with record_lock:
            return _record(server, key, port)

    def _record(server: Server, key: Any, port: int) -> dict[str, Any]:
        seen = fingerprint(key)
        known = known_hosts.read(path)
        if known.is_revoked(key):
            raise HostKeyError(f"{server.name}: host key {seen} is marked @revoked in {path}; not recording it")
        recorded = known.lookup(server.addr, port)
        same_type = recorded.get(key.get_name())
        before = fingerprint(same_type) if same_type is not None else None
        if before is not None and before != seen and not replace:
            raise HostKeyError(
                f"{server.name}: host key CHANGED from {before} to {seen}; if the server was re-keyed, "
                f"run again with --replace"
            )
        if before is not None and before != seen:
            changed = known_hosts.replace(path, server.addr, port, key)
        else:
            changed = known_hosts.append(path, server.addr, port, key)
        state = "recorded" if before is None else ("replaced" if changed else "already trusted")
        return {
            "fingerprint": seen,
            "key_type": key.get_name(),
            "previous": before,
            "state": state,
            "summary": f"{seen} {key.get_name()} ({state})",
        }

    try:
        return fan_out(servers, work, parallel=parallel, events=events)
    finally:
        hosts.close()
