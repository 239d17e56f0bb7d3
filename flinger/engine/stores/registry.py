"""The registry store: the builder publishes the build to an OCI registry once per run (only
the blobs it lacks, one manifest per build), and each server's own install pulls the blobs
it lacks by digest and checks them (flinger/remote/registry.py). The builder sends each
package once, whatever the number of servers; no agent is forwarded.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from flinger.engine.remote import resolve_remote_path, run_tool, upload_tool
from flinger.engine.stores import StoreReport
from flinger.engine.stores.builder import builder_manifest
from flinger.errors import FlingerError, RemoteCommandError
from flinger.protocol.plans import PullSpec, PushPlan, RegistrySpec
from flinger.protocol.results import BuiltPackage, PushResult
from flinger.secrets import registry_credentials
from flinger.topology.model import Server, Topology

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.hosts import HostPool


class RegistryStore:
    """The builder publishes the build to an OCI registry once per run; servers pull."""

    wait_step: str | None = "publish"  # a server's step while built() publishes (or fails to)

    def __init__(self, topology: Topology, hosts: HostPool) -> None:
        self.topology = topology
        self.hosts = hosts
        self._lock = threading.Lock()
        self._packages: dict[str, BuiltPackage] | None = None
        self._published: PushResult | None = None
        self._failure: str | None = None  # the publish failed: what it said
        self._hard_failure: str | None = None  # ... and the builder's manifest could not be read either
        self._spec: RegistrySpec | None = None

    def _registry(self) -> RegistrySpec:
        """The registry as plans name it (no credential: that travels apart)."""
        if self._spec is None:
            art = self.topology.artifacts
            assert art.url is not None and art.repository is not None
            self._spec = RegistrySpec(art.url, art.repository, registry_credentials.ca_pem(self.topology),
                                      art.plain_http)  # fmt: skip
        return self._spec

    def built(self) -> dict[str, BuiltPackage]:
        """The build, published first (once per run: a second call, from any thread, waits
        for the first and shares its outcome). When the publish fails, the build is read
        from the builder's manifest instead: a server that has every package still
        converges (starts what stopped), and one that lacks a package fails at `publish`
        with the publish's own message (`deliver`)."""
        with self._lock:
            if self._hard_failure is not None:
                raise FlingerError(self._hard_failure)
            if self._packages is None:
                try:
                    self._published = self._publish()
                    self._packages = self._published.packages
                except FlingerError as exc:
                    self._failure = exc.message
                    try:
                        self._packages = builder_manifest(self.topology, self.hosts)[1]
                    except FlingerError:
                        self._hard_failure = exc.message
                        raise exc from None
            return self._packages

    def _publish(self) -> PushResult:
        builder = self.topology.builder_server()
        conn = self.hosts.get(builder.name)
        plan = PushPlan(
            artifacts_dir=resolve_remote_path(conn, self.topology.builder.artifacts_path),
            registry=self._registry(),
            credential=registry_credentials.push_credential(self.topology),
        )
        tool = upload_tool(conn, self.topology, f"$HOME/.flinger/{self.topology.name}")
        try:
            return run_tool(conn, tool, "registry-push", plan, PushResult, as_root=False)
        except RemoteCommandError as exc:
            raise FlingerError(
                f"publishing the build to {self.topology.artifacts.url} from {builder.name}: {exc.message}"
            ) from None

    def expect(self, deliveries: int) -> None:
        """Nothing to get ready: the servers pull for themselves."""

    def pull_spec(self) -> PullSpec | None:
        if self._failure is not None:  # nothing to pull from: the install says what it lacks
            return None
        credential = registry_credentials.PULL_CREDENTIAL_FILE if self.topology.artifacts.pull_credential() else None
        return PullSpec(self._registry(), credential)

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        if self._failure is not None:
            report.step("publish")
            raise FlingerError(f"{', '.join(packages)} not installed here, and {self._failure}")
        raise FlingerError(
            f"{server.name} pulls its packages from the registry itself; it asked for "
            f"{', '.join(packages)} instead (a remote tool older than this flinger?)"
        )

    def report(self) -> StoreReport:
        published = self._published or PushResult()
        return StoreReport(
            "registry",
            builder_bytes_sent=published.bytes_sent,
            manifest_digest=published.manifest_digest,
            tag=published.tag,
            pushed=published.pushed,
            publish_error=self._failure,
        )
