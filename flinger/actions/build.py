"""`flinger build check | package`: run the remote tool's `build` on the builder.

The client turns the manifest into a build plan (data), ships the remote tool into the
builder's artifacts dir, and streams the build: each package is a row of its own.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from flinger.engine.hosts import open_hosts
from flinger.engine.remote import ZIPAPP_NAME, as_progress, local_zipapp, resolve_remote_path, run_tool
from flinger.errors import RemoteCommandError
from flinger.manifest.model import Manifest, Package
from flinger.progress import Sink, nowhere
from flinger.protocol.messages import Event
from flinger.protocol.plans import BuildPlan, PackageSource, PathMap
from flinger.protocol.results import BuildResult, PackageOutcome
from flinger.topology.model import Topology


def package_source(pkg: Package) -> PackageSource:
    src = pkg.source
    return PackageSource(
        name=pkg.name,
        type=src.type,
        version=pkg.version,
        build=list(src.build),
        paths=[PathMap(p.src, p.dst) for p in src.paths],
        inputs=list(src.inputs),
        url=src.url,
        sha256=src.sha256,
        to=src.to,
        packages=list(src.packages),
    )


@dataclass
class BuildOutcome:
    ok: bool
    packages: dict[str, PackageOutcome]
    artifacts_dir: str
    setup_hints: dict[str, str] = field(default_factory=dict)

    @property
    def built(self) -> list[str]:
        return [n for n, p in self.packages.items() if p.state == "built"]


def run_build(
    topology: Topology,
    manifest: Manifest,
    *,
    check_only: bool = False,
    no_cache: bool = False,
    events: Sink = nowhere,
) -> BuildOutcome:
    """Build (or check) every package on the builder; each package's outcome. Progress goes
    to `events`, one row per package."""
    hints = {name: pkg.setup_hint for name, pkg in manifest.packages.items() if pkg.setup_hint}
    hosts = open_hosts(topology)
    try:
        conn = hosts.get(topology.builder.server)
        source_dir = resolve_remote_path(conn, topology.builder.source_dir)
        artifacts = resolve_remote_path(conn, topology.builder.artifacts_path)
        plan = BuildPlan(
            source_dir=source_dir,
            artifacts_dir=artifacts,
            packages=[package_source(p) for p in manifest.packages.values()],
            check_only=check_only,
            no_cache=no_cache,
            jobs=2,
        )
        conn.run(
            f"test -d {shlex.quote(source_dir)} || "
            "{ echo 'no source tree on the builder: run flinger sync' >&2; exit 3; }"
        )
        conn.run(f"mkdir -p {shlex.quote(artifacts)}")
        local, _ = local_zipapp(topology)
        tool = f"{artifacts}/{ZIPAPP_NAME}"
        conn.put_file(local, tool, mode=0o644)

        def on_event(event: Event) -> None:
            events(as_progress(event, topology.builder.server))

        try:
            result = run_tool(conn, tool, "build", plan, BuildResult, as_root=False, on_event=on_event)
        except RemoteCommandError as exc:
            if not isinstance(exc.result, BuildResult) or not exc.result.packages:
                raise  # the tool failed before any package did (a bad plan, a missing python3)
            result = exc.result
        outcomes = {name: result.packages.get(name, PackageOutcome("skipped")) for name in manifest.packages}
        return BuildOutcome(ok=result.ok, packages=outcomes, artifacts_dir=artifacts, setup_hints=hints)
    finally:
        hosts.close()
