"""`flinger trust`: fetch host keys the way a connection reaches each host (its jump hosts
first), show their fingerprints, and record them (explicit first use)."""

from __future__ import annotations

from typing import Any

from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.hosts import open_hosts
from flinger.engine.results import ServerResult
from flinger.errors import UsageError
from flinger.progress import Sink, nowhere
from flinger.topology.model import Server, Topology


def run_trust(
    topology: Topology,
    servers: list[Server],
    *,
    replace: bool = False,
    parallel: int = 16,
    events: Sink = nowhere,
) -> list[ServerResult]:
    """Record each server's key where OpenSSH looks for it; a changed key needs `replace`."""
    hosts = open_hosts(topology)
    keys = hosts.keys
    if keys is None:
        hosts.close()
        raise UsageError("this transport has no host keys to trust")

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        report.step("key exchange")
        done = keys.trust(server, replace=replace)
        for hop in done[:-1]:
            report.info(f"jump host {hop.host.removeprefix('jump:')}: {hop.fingerprint} {hop.kind} ({hop.state})")
        own = done[-1]
        return {
            "fingerprint": own.fingerprint,
            "key_type": own.kind,
            "name": own.name,
            "previous": own.previous,
            "state": own.state,
            "known_hosts": own.file,
            "jump_hosts": [
                {"host": h.host.removeprefix("jump:"), "fingerprint": h.fingerprint, "state": h.state}
                for h in done[:-1]
            ],
            "summary": f"{own.fingerprint} {own.kind} ({own.state})",
        }

    try:
        return fan_out(servers, work, parallel=parallel, events=events)
    finally:
        hosts.close()
