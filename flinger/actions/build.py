"""`flinger build check | package`: run the remote tool's `build` on the builder over SSH.

The client turns the manifest into a build plan (data), ships the remote tool into the
builder's artifacts dir, and streams the build: output lines prefixed by package name.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from flinger.actions.remote_tool import ZIPAPP_NAME, local_zipapp, resolve_remote_path, run_tool
from flinger.errors import RemoteCommandError
from flinger.manifest.model import Manifest, Package
from flinger.progress import Finished, Output, Sink, Started, Step, nowhere
from flinger.ssh.connection import ConnectionPool
from flinger.topology.model import Topology


def package_plan(pkg: Package) -> dict[str, Any]:
    src = pkg.source
    return {
        "name": pkg.name,
        "version": pkg.version,
        "type": src.type,
        "build": list(src.build),
        "paths": [{"from": p.src, "to": p.dst} for p in src.paths],
        "inputs": list(src.inputs),
        "url": src.url,
        "sha256": src.sha256,
        "to": src.to,
        "packages": list(src.packages),
    }


def plan_build(manifest: Manifest, *, check_only: bool, no_cache: bool, jobs: int) -> dict[str, Any]:
    """The build plan without host paths (filled in once the builder's home is known)."""
    return {
        "check_only": check_only,
        "no_cache": no_cache,
        "jobs": jobs,
        "packages": [package_plan(p) for p in manifest.packages.values()],
    }


@dataclass
class PackageOutcome:
    name: str
    state: str = "waiting"  # built | cached | checked | failed | skipped
    sha256: str | None = None
    size: int | None = None
    command: str | None = None
    exit_status: int | None = None
    tail: list[str] = field(default_factory=list)
    error: str | None = None
    setup_hint: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class BuildOutcome:
    ok: bool
    packages: dict[str, PackageOutcome]
    artifacts_dir: str

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
    plan = plan_build(manifest, check_only=check_only, no_cache=no_cache, jobs=2)
    outcomes = {name: PackageOutcome(name, setup_hint=pkg.setup_hint) for name, pkg in manifest.packages.items()}
    pool = ConnectionPool(topology.servers, topology.ssh)
    builder = topology.builder_server()
    try:
        conn = pool.get(builder.name)
        source_dir = resolve_remote_path(conn, topology.builder.source_dir)
        artifacts = resolve_remote_path(conn, topology.builder.artifacts_path)
        plan.update(source_dir=source_dir, artifacts_dir=artifacts)
        conn.run(
            f"test -d {shlex.quote(source_dir)} || "
            "{ echo 'no source tree on the builder: run flinger sync' >&2; exit 3; }"
        )
        conn.run(f"mkdir -p {shlex.quote(artifacts)}")
        local, _ = local_zipapp(topology)
        tool = f"{artifacts}/{ZIPAPP_NAME}"
        conn.put_file(local, tool, mode=0o644)

        def on_event(event: dict[str, Any]) -> None:
            name = str(event.get("package", ""))
            out = outcomes.get(name)
            kind = event["event"]
            if out is None:
                return
            if kind == "output":
                events(Output(name, str(event.get("line", ""))))
            elif kind in ("start", "command", "download"):
                if kind == "start":
                    events(Started(name))
                events(Step(name, str(event.get("command") or kind)))
            elif kind in ("built", "cached", "checked", "failed", "skipped"):
                out.state = kind if not (kind == "checked" and not event.get("ok", True)) else "failed"
                out.sha256 = event.get("sha256", out.sha256)
                out.size = event.get("size", out.size)
                out.command = event.get("command")
                out.exit_status = event.get("exit_status")
                out.tail = list(event.get("tail") or [])
                out.error = event.get("error") or event.get("reason")
                events(Step(name, kind))
                events(Finished(name, "ok" if out.state in ("built", "cached", "checked") else "failed"))

        try:
            run_tool(conn, builder, tool, ["build"], plan, as_root=False, on_event=on_event)
            ok = True
        except RemoteCommandError as exc:
            ok = False
            if all(o.state != "failed" for o in outcomes.values()):
                # The tool failed before any package did (a bad plan, a missing python3).
                raise RemoteCommandError(exc.command, exc.exit_code, exc.tail) from None
        return BuildOutcome(ok=ok, packages=outcomes, artifacts_dir=artifacts)
    finally:
        pool.close()
