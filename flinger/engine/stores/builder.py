"""The builder store: the builder rsyncs packages to each server (one rsync, one handshake
per server), over the client's agent forwarded to the builder alone, with host keys checked
against what the client verified (the pool's bulk copy, flinger/engine/hosts.py). The
builder sends N copies for N servers.
"""

from __future__ import annotations

import json
import shlex
import threading
from typing import TYPE_CHECKING

from flinger.engine.remote import resolve_remote_path
from flinger.engine.stores import StoreReport
from flinger.errors import FlingerError
from flinger.protocol.codec import ProtocolError, decode
from flinger.protocol.plans import PullSpec
from flinger.protocol.results import BuiltPackage
from flinger.ssh.openssh import rsync_stat
from flinger.topology.model import Server, Topology

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.hosts import HostPool

PUSH_STATS = ("bytes_sent", "literal_bytes", "transferred_size")  # what a push reports


def builder_manifest(topology: Topology, hosts: HostPool) -> tuple[str, dict[str, BuiltPackage]]:
    """The artifacts dir on the builder and the packages its manifest.json records (what
    `build package` wrote)."""
    conn = hosts.get(topology.builder.server)
    artifacts = resolve_remote_path(conn, topology.builder.artifacts_path)
    path = f"{artifacts}/manifest.json"
    out = conn.run(f"cat {shlex.quote(path)}", check=False)
    if out.exit_code != 0:
        raise FlingerError(f"{conn.server.name}: cannot read {path}: {out.stderr.strip() or 'missing'}")
    try:
        recorded = json.loads(out.stdout)
        packages = recorded.get("packages") if isinstance(recorded, dict) else None
        if not isinstance(packages, dict):
            raise ProtocolError("it has no packages")
        return artifacts, {str(n): decode(BuiltPackage, p, f"packages.{n}", strict=False) for n, p in packages.items()}
    except ValueError as exc:  # ProtocolError is one
        raise FlingerError(f"{conn.server.name}: {path} is not a build manifest: {exc}") from None


class BuilderRsync:
    """The builder rsyncs packages to each server."""

    wait_step: str | None = None  # the builder's manifest is read at once, beside the servers' connects

    def __init__(self, topology: Topology, hosts: HostPool) -> None:
        self.topology = topology
        self.hosts = hosts
        self._read: tuple[str, dict[str, BuiltPackage]] | None = None
        self._lock = threading.Lock()
        self._sent = 0

    def _side(self) -> tuple[str, dict[str, BuiltPackage]]:
        """Where the artifacts are and what was built (read once per run, on first use)."""
        with self._lock:
            if self._read is None:
                self._read = builder_manifest(self.topology, self.hosts)
            return self._read

    def built(self) -> dict[str, BuiltPackage]:
        return self._side()[1]

    def pull_spec(self) -> PullSpec | None:
        return None

    def expect(self, deliveries: int) -> None:
        """Each delivery is a command on the builder: the connections they need are opened
        now, beside the servers' own connects, not when the first of them finds the others full."""
        self.hosts.reserve(self.topology.builder.server, deliveries)

    def report(self) -> StoreReport:
        return StoreReport("builder", builder_bytes_sent=self._sent)

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        if self.hosts.bulk is None:
            raise FlingerError('this transport cannot copy between hosts: use [artifacts] store = "registry"')
        artifacts, built = self._side()
        # "/./" keeps the paths below it (--relative): packages/<file> lands in run_dir/packages/
        sources = [f"{artifacts}/./{built[p].file}" for p in packages]
        result = self.hosts.bulk.relay(
            self.topology.builder_server(),
            sources,
            server,
            run_dir,
            lambda text: report.line(text) if "rror" in text else None,
        )
        stats = [rsync_stat(line.strip()) for line in result.stdout.splitlines()]
        pushed = {key: number for key, number in filter(None, stats) if key in PUSH_STATS}
        with self._lock:
            self._sent += pushed.get("bytes_sent", 0)
        return pushed
