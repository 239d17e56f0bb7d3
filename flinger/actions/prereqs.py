"""`flinger install-prereqs`: per-server prerequisite plans from the manifest, and running them.

The builder gets the manifest's `[prereqs.builder]`; each deployment server gets
`[prereqs."*"]` plus the prereqs of each of its roles, merged (a server that is both gets
both). The plan is data (`plan_prereqs`); `run_prereqs` ships the remote tool to each host's
staging dir and runs its `prereqs` command as root, on every host in parallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.hosts import open_hosts
from flinger.engine.remote import into_report, resolve_remote_path, run_tool, upload_tool
from flinger.engine.results import ServerResult
from flinger.errors import FlingerError, RemoteCommandError, UsageError
from flinger.manifest.loader import manifest_error
from flinger.manifest.model import Manifest, Prereqs
from flinger.progress import Sink, nowhere
from flinger.protocol.codec import encode
from flinger.protocol.plans import DirSpec, PrereqsPlan, ScriptSpec, UserSpec
from flinger.protocol.results import PrereqsResult
from flinger.tomlfile import suggest
from flinger.topology.model import Server, Topology

BUILDER_TARGET = "builder"
EVERY_SERVER = "*"
T = TypeVar("T", UserSpec, DirSpec)


@dataclass
class HostPrereqs:
    """One host's prerequisites: the plan its `prereqs` command gets (scripts named by their
    path there, `~` not yet resolved), and the scripts the client uploads first (path there ->
    the client's copy)."""

    plan: PrereqsPlan
    uploads: dict[str, Path] = field(default_factory=dict)


def _union(into: list[str], items: Iterable[str]) -> None:
    for item in items:
        if item not in into:
            into.append(item)


def _merge_keyed(
    manifest: Manifest, into: dict[str, T], owners: dict[str, str], part: Prereqs, kind: str, entries: Iterable[T]
) -> None:
    """Merge users (by name) or dirs (by path); the same one declared twice must agree."""
    for index, entry in enumerate(entries):
        ident = entry.name if isinstance(entry, UserSpec) else entry.path
        if ident in into and into[ident] != entry:
            raise manifest_error(
                manifest,
                f"prereqs.{part.target}.{kind}.{index}",
                f'{kind[:-1]} "{ident}" is also declared differently in prereqs.{owners[ident]}',
            )
        into[ident] = entry
        owners[ident] = part.target


def merge_prereqs(manifest: Manifest, parts: list[Prereqs], server: Server) -> tuple[PrereqsPlan, list[Prereqs]]:
    """One server's plan from the prereqs that apply to it, in order; conflicts are errors.
    Also the parts whose script it runs (scripts are placed by plan_prereqs)."""
    plan = PrereqsPlan(os="illumos" if server.service_manager == "smf" else "auto")
    sysctl_owner: dict[str, str] = {}
    users: dict[str, UserSpec] = {}
    user_owner: dict[str, str] = {}
    dirs: dict[str, DirSpec] = {}
    dir_owner: dict[str, str] = {}
    scripted: list[Prereqs] = []
    for part in parts:
        _union(plan.apt, part.apt)
        _union(plan.pkg, part.pkg)
        _union(plan.groups, part.groups)
        for key, value in part.sysctl.items():
            if key in plan.sysctl and plan.sysctl[key] != value:
                raise manifest_error(
                    manifest,
                    f"prereqs.{part.target}.sysctl.{key}",
                    f'"{value}" conflicts with "{plan.sysctl[key]}" from prereqs.{sysctl_owner[key]} '
                    f"(both apply to {server.name})",
                )
            plan.sysctl[key], sysctl_owner[key] = value, part.target
        _merge_keyed(manifest, users, user_owner, part, "users", part.users)
        _merge_keyed(manifest, dirs, dir_owner, part, "dirs", part.dirs)
        if part.script and all(p.script != part.script for p in scripted):
            scripted.append(part)
    plan.users, plan.dirs = list(users.values()), list(dirs.values())
    return plan, scripted


def plan_prereqs(topology: Topology, manifest: Manifest) -> dict[str, HostPrereqs]:
    """server name -> its prerequisites, for the builder and every deployment server (builder
    first).

    Scripts are named relative to the source tree; each gets the SHA-256 of the client's
    copy, so a host never runs a stale one. On the builder a script runs from the synced
    tree; on a deployment server (which has no source tree) it is uploaded first.
    """
    by_target = {p.target: p for p in manifest.prereqs}
    known = {BUILDER_TARGET, EVERY_SERVER} | {r for s in topology.servers.values() for r in s.roles}
    for target in by_target:
        if target not in known:
            raise manifest_error(
                manifest,
                f"prereqs.{target}",
                f'no server has the role "{target}" (use "builder", "*" or a role){suggest(target, known)}',
            )
    names = [topology.builder.server, *(n for n in topology.deployment.servers if n != topology.builder.server)]
    plans: dict[str, HostPrereqs] = {}
    for name in names:
        server = topology.servers[name]
        targets: list[str] = []
        if name == topology.builder.server:
            targets.append(BUILDER_TARGET)
        if name in topology.deployment.servers:
            _union(targets, [EVERY_SERVER, *server.roles])
        plan, scripted = merge_prereqs(manifest, [by_target[t] for t in targets if t in by_target], server)
        host = HostPrereqs(plan)
        for part in scripted:
            assert part.script is not None
            local, digest = _script_source(topology, manifest, part.script, part.target)
            if name == topology.builder.server:
                source_dir = topology.builder.source_dir.rstrip("/")
                plan.scripts.append(ScriptSpec(part.script, f"{source_dir}/{part.script}", digest, source_dir))
            else:
                path = f"{topology.deployment.staging_dir.rstrip('/')}/prereqs-{digest[:16]}.sh"
                plan.scripts.append(ScriptSpec(part.script, path, digest))
                host.uploads[path] = local
        plans[name] = host
    return plans


def _script_source(topology: Topology, manifest: Manifest, name: str, target: str) -> tuple[Path, str]:
    local = (topology.source_dir / name).resolve()
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise manifest_error(
            manifest, f"prereqs.{target}.script", f"cannot read {local}: {exc.strerror or exc}"
        ) from None
    return local, hashlib.sha256(data).hexdigest()


def is_empty(plan: PrereqsPlan) -> bool:
    return not any((plan.apt, plan.pkg, plan.sysctl, plan.groups, plan.users, plan.dirs, plan.scripts))


def summary_text(changed: int, would_change: int, failed: int, check: bool) -> str:
    """ "no changes" / "N changed" / "N would change" (and failures)."""
    parts = []
    if check and would_change:
        parts.append(f"{would_change} would change")
    elif changed:
        parts.append(f"{changed} changed")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts) or "no changes"


def run_prereqs(
    topology: Topology,
    manifest: Manifest,
    *,
    check: bool,
    parallel: int,
    events: Sink = nowhere,
    servers: list[str] | None = None,
    skip_scripts: bool = False,
) -> list[ServerResult]:
    """Check (or install) every host's prerequisites in parallel; one result per host.
    `skip_scripts`: everything but the manifest's scripts (which may fetch software)."""
    plans = plan_prereqs(topology, manifest)
    if skip_scripts:
        plans = {name: HostPrereqs(replace(host.plan, scripts=[])) for name, host in plans.items()}
    chosen = list(plans) if servers is None else servers
    for name in chosen:
        if name not in plans:
            raise UsageError(f'"{name}" is neither the builder nor a deployment server: it has no prerequisites')
    hosts = open_hosts(topology)

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        host = plans[server.name]
        if is_empty(host.plan):
            return {"changed": 0, "would_change": 0, "items": [], "failures": [], "summary": "nothing declared"}
        report.step("connect")
        conn = hosts.get(server.name)
        conn.open()
        report.step("upload tool")
        tool = upload_tool(conn, topology, topology.deployment.staging_dir)
        uploaded = [resolve_remote_path(conn, path) for path in host.uploads]
        for remote, local in zip(uploaded, host.uploads.values(), strict=True):
            conn.put_file(local, remote, mode=0o600)
        scripts = [
            replace(s, path=resolve_remote_path(conn, s.path), cwd=resolve_remote_path(conn, s.cwd) if s.cwd else None)
            for s in host.plan.scripts
        ]
        report.step("check" if check else "install")
        try:
            result = run_tool(conn, tool, "prereqs", replace(host.plan, scripts=scripts, check=check), PrereqsResult,
                              on_event=into_report(report), on_text=report.line)  # fmt: skip
        except RemoteCommandError as exc:
            if isinstance(exc.result, PrereqsResult):
                report.details.update(_details(exc.result, check))
            raise
        finally:
            if uploaded:
                # The outcome above matters more than a leftover script in the private staging dir.
                with contextlib.suppress(FlingerError):
                    conn.run(f"rm -f {shlex.join(uploaded)}", check=False)
        return _details(result, check)

    try:
        return fan_out([topology.servers[n] for n in chosen], work, parallel=parallel, events=events)
    finally:
        hosts.close()


def _details(result: PrereqsResult, check: bool) -> dict[str, Any]:
    """What --json says of a host's prerequisites (and its summary line)."""
    return {
        "changed": result.changed,
        "would_change": result.would_change,
        "unchanged": result.unchanged,
        "items": [{"item": f"{i.kind} {i.name}", "state": i.state, "detail": i.detail} for i in result.items],
        "failures": result.failures,
        "summary": summary_text(result.changed, result.would_change, len(result.failures), check),
        "result": encode(result),
    }
