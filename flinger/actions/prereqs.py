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
from pathlib import Path
from typing import Any

from flinger.actions.remote_tool import resolve_remote_path, run_tool, upload_tool
from flinger.errors import FlingerError, UsageError
from flinger.manifest.loader import manifest_error
from flinger.manifest.model import Manifest, Prereqs
from flinger.progress import Sink, nowhere
from flinger.remote.prereqs import CHANGED, FAILED, WOULD_CHANGE
from flinger.ssh.connection import ConnectionPool
from flinger.ssh.fanout import Reporter, ServerResult, fan_out
from flinger.tomlfile import suggest
from flinger.topology.model import Server, Topology

BUILDER_TARGET = "builder"
EVERY_SERVER = "*"
Plan = dict[str, Any]


def _plain(value: Any) -> Any:
    """A TOML value as plain JSON-ready Python (bool before int: bool is an int)."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _union(into: list[str], items: Iterable[str]) -> None:
    for item in items:
        if item not in into:
            into.append(item)


def _merge_keyed(
    manifest: Manifest, into: dict[str, dict[str, Any]], owners: dict[str, str], part: Prereqs, kind: str, key: str
) -> None:
    """Merge users (by name) or dirs (by path); the same one declared twice must agree."""
    entries = part.users if kind == "users" else part.dirs
    for index, raw in enumerate(entries):
        entry = {str(k): _plain(v) for k, v in raw.items()}
        ident = str(entry[key])
        if ident in into and into[ident] != entry:
            raise manifest_error(
                manifest,
                f"prereqs.{part.target}.{kind}.{index}",
                f'{kind[:-1]} "{ident}" is also declared differently in prereqs.{owners[ident]}',
            )
        into[ident] = entry
        owners[ident] = part.target


def merge_prereqs(manifest: Manifest, parts: list[Prereqs], server: Server) -> Plan:
    """One server's plan from the prereqs that apply to it, in order; conflicts are errors."""
    apt: list[str] = []
    pkg: list[str] = []
    groups: list[str] = []
    sysctl: dict[str, str] = {}
    sysctl_owner: dict[str, str] = {}
    users: dict[str, dict[str, Any]] = {}
    user_owner: dict[str, str] = {}
    dirs: dict[str, dict[str, Any]] = {}
    dir_owner: dict[str, str] = {}
    scripts: list[dict[str, Any]] = []
    for part in parts:
        _union(apt, part.apt)
        _union(pkg, part.pkg)
        _union(groups, part.groups)
        for key, value in part.sysctl.items():
            if key in sysctl and sysctl[key] != value:
                raise manifest_error(
                    manifest,
                    f"prereqs.{part.target}.sysctl.{key}",
                    f'"{value}" conflicts with "{sysctl[key]}" from prereqs.{sysctl_owner[key]} '
                    f"(both apply to {server.name})",
                )
            sysctl[key], sysctl_owner[key] = value, part.target
        _merge_keyed(manifest, users, user_owner, part, "users", "name")
        _merge_keyed(manifest, dirs, dir_owner, part, "dirs", "path")
        if part.script and all(s["name"] != part.script for s in scripts):
            scripts.append({"name": part.script, "target": part.target})
    return {
        "os": "illumos" if server.service_manager == "smf" else "auto",
        "apt": apt,
        "pkg": pkg,
        "sysctl": sysctl,
        "groups": groups,
        "users": list(users.values()),
        "dirs": list(dirs.values()),
        "scripts": scripts,
    }


def plan_prereqs(topology: Topology, manifest: Manifest) -> dict[str, Plan]:
    """server name -> its plan, for the builder and every deployment server (builder first).

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
    plans: dict[str, Plan] = {}
    for name in names:
        server = topology.servers[name]
        targets: list[str] = []
        if name == topology.builder.server:
            targets.append(BUILDER_TARGET)
        if name in topology.deployment.servers:
            _union(targets, [EVERY_SERVER, *server.roles])
        plan = merge_prereqs(manifest, [by_target[t] for t in targets if t in by_target], server)
        for script in plan["scripts"]:
            script.update(_script_source(topology, manifest, script["name"], script["target"]))
            if name == topology.builder.server:
                source_dir = topology.builder.source_dir.rstrip("/")
                script["path"] = f"{source_dir}/{script['name']}"
                script["cwd"] = source_dir
            else:
                script["upload"] = True
                script["path"] = f"{topology.deployment.staging_dir.rstrip('/')}/prereqs-{script['sha256'][:16]}.sh"
        plans[name] = plan
    return plans


def _script_source(topology: Topology, manifest: Manifest, name: str, target: str) -> dict[str, Any]:
    local = (topology.source_dir / name).resolve()
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise manifest_error(
            manifest, f"prereqs.{target}.script", f"cannot read {local}: {exc.strerror or exc}"
        ) from None
    return {"local": str(local), "sha256": hashlib.sha256(data).hexdigest()}


def is_empty(plan: Plan) -> bool:
    return not any(plan[k] for k in ("apt", "pkg", "sysctl", "groups", "users", "dirs", "scripts"))


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
        plans = {name: dict(plan, scripts=[]) for name, plan in plans.items()}
    chosen = list(plans) if servers is None else servers
    for name in chosen:
        if name not in plans:
            raise UsageError(f'"{name}" is neither the builder nor a deployment server: it has no prerequisites')
    pool = ConnectionPool(topology.servers, topology.ssh)

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        plan = dict(plans[server.name], check=check)
        details: dict[str, Any] = {"changed": 0, "would_change": 0, "items": [], "failures": []}
        report.details = details
        if is_empty(plan):
            details["summary"] = "nothing declared"
            return details
        report.step("connect")
        conn = pool.get(server.name)
        conn.open()
        report.step("upload tool")
        tool = upload_tool(conn, topology, topology.deployment.staging_dir)
        scripts = []
        uploaded: list[str] = []
        for script in plan["scripts"]:
            remote = resolve_remote_path(conn, script["path"])
            if script.get("upload"):
                conn.put_file(Path(script["local"]), remote, mode=0o600)
                uploaded.append(remote)
            cwd = resolve_remote_path(conn, script["cwd"]) if script.get("cwd") else None
            scripts.append({"name": script["name"], "path": remote, "sha256": script["sha256"], "cwd": cwd})
        plan["scripts"] = scripts

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") != "item":
                return
            state = str(event.get("state"))
            label = f"{event.get('kind')} {event.get('name')}"
            if state == CHANGED:
                details["changed"] += 1
            elif state == WOULD_CHANGE:
                details["would_change"] += 1
            if state in (CHANGED, WOULD_CHANGE, FAILED):
                details["items"].append({"item": label, "state": state, "detail": event.get("detail", "")})
                report.line(f"{label}: {state} ({event.get('detail', '')})")
            if state == FAILED:
                details["failures"].append(str(event.get("detail") or label))
            report.info(f"{label}: {state}")

        report.step("check" if check else "install")
        try:
            result = run_tool(conn, server, tool, ["prereqs"], plan, on_event=on_event, on_text=report.line)
        finally:
            details["summary"] = summary_text(
                details["changed"], details["would_change"], len(details["failures"]), check
            )
            if uploaded:
                # The outcome above matters more than a leftover script in the private staging dir.
                with contextlib.suppress(FlingerError):
                    conn.run(f"rm -f {shlex.join(uploaded)}", check=False)
        details["unchanged"] = int(result.get("unchanged", 0))
        return details

    try:
        return fan_out([topology.servers[n] for n in chosen], work, parallel=parallel, events=events)
    finally:
        pool.close()
