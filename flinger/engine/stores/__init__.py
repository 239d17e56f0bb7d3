"""Where a server's packages come from: the artifact store seam of `deploy install`.

An `ArtifactStore` says which packages are built (name -> digest and file), what a server's
install plan carries to fetch them itself (a registry to pull from), and delivers the ones
a server lacks into that run's staging dir when the server cannot fetch them. `STORES` is
the registry, by the name deploy.toml's `[artifacts] store` gives: a new store is one module
and one entry here.
- "builder" (builder.py, the default): the builder rsyncs packages straight to each server
  over the client's forwarded agent; N copies for N servers.
- "registry" (registry.py): the builder publishes the build to an OCI registry once per run,
  each server's own install pulls what it lacks; each package leaves the builder once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from flinger.protocol.plans import PullSpec
from flinger.protocol.results import BuiltPackage
from flinger.topology.model import Server, Topology

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.hosts import HostPool


@dataclass
class StoreReport:
    """What the builder sent in a run (--json's `artifacts`, and the benchmarks')."""

    store: str
    builder_bytes_sent: int = 0
    manifest_digest: str | None = None
    tag: str | None = None
    pushed: list[str] = field(default_factory=list)
    publish_error: str | None = None


class ArtifactStore(Protocol):
    # the step a server's report is in while built() gets the store ready (None: no step of its own)
    wait_step: str | None

    def built(self) -> dict[str, BuiltPackage]:
        """Every built package, by name."""
        ...

    def pull_spec(self) -> PullSpec | None:
        """What a server's install plan carries to pull what it lacks itself (None: it
        answers what it lacks, and `deliver` brings it)."""
        ...

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        """Put `packages` into `run_dir`/packages on `server`; transfer statistics."""
        ...

    def expect(self, deliveries: int) -> None:
        """Up to `deliveries` may come at the same time: get ready for them now (in the
        background; a failure is the delivery's own)."""
        ...

    def report(self) -> StoreReport: ...


@dataclass(frozen=True)
class StoreKind:
    make: Callable[[Topology, HostPool], ArtifactStore]
    forwards_agent: bool  # the builder gets the client's agent: it logs in to the servers itself


def _builder(topology: Topology, hosts: HostPool) -> ArtifactStore:
    from flinger.engine.stores.builder import BuilderRsync

    return BuilderRsync(topology, hosts)


def _registry(topology: Topology, hosts: HostPool) -> ArtifactStore:
    from flinger.engine.stores.registry import RegistryStore

    return RegistryStore(topology, hosts)


STORES: dict[str, StoreKind] = {
    "builder": StoreKind(_builder, forwards_agent=True),
    "registry": StoreKind(_registry, forwards_agent=False),
}


def staged_tarball(built: dict[str, BuiltPackage], package: str) -> str:
    """Where a server finds a package's tarball, relative to its run's staging dir."""
    return f"packages/{Path(built[package].file).name}"
