"""`flinger logs`: each chosen server's service logs, read where its manager keeps them
(journald; runit's svlogd `current`; SMF's log; a service's own `log_file`), through the
server's privilege tool (the deploy user is seldom in systemd-journal), merged with a server
prefix by `exec`'s fan-out; `-f` follows until Ctrl-C, which ends them at once."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from flinger.engine.plan import plan_deploy
from flinger.errors import UsageError
from flinger.manifest.model import Manifest
from flinger.protocol.plans import ServiceRoots, ServiceSpec
from flinger.topology.model import Server, Topology


@dataclass(frozen=True)
class LogQuery:
    service: str | None  # None: every service of the server
    lines: int = 50
    since: str | None = None  # journald's --since ("1 hour ago", "2026-12-03 10:00")
    follow: bool = False


def services_on(topology: Topology, manifest: Manifest, server: Server, service: str | None) -> list[ServiceSpec]:
    """The services the manifest runs on `server` (those named `service`, if given)."""
    (plan,) = plan_deploy(topology, manifest, [server], stored={})
    return [s for s in plan.services if service is None or s.name == service]


def chosen_servers(topology: Topology, manifest: Manifest, servers: list[Server], query: LogQuery) -> list[Server]:
    """The servers that run the service asked for; a name no server runs is exit 2."""
    found = [s for s in servers if services_on(topology, manifest, s, query.service)]
    if not found:
        known = sorted({p.service_name for p in manifest.packages.values() if p.service is not None})
        what = f'service "{query.service}"' if query.service else "a service"
        raise UsageError(f"no chosen server runs {what} (services: {', '.join(known) or 'none'})")
    return found


def log_command(services: list[ServiceSpec], query: LogQuery) -> str:
    """The shell line that prints (and with follow, follows) these services' logs."""
    n = str(query.lines)
    journald = [s for s in services if s.manager == "systemd" and not s.log_files]
    files: list[str] = []
    parts: list[str] = []
    for s in services:
        if s.log_files:
            files += s.log_files
        elif s.manager == "runit":
            files.append(f"{ServiceRoots().sv_dir}/{s.name}/log/main/current")
    if journald:
        argv = ["journalctl", "--no-pager", "--output", "short-iso", "--lines", n]
        argv += ["--since", query.since] if query.since else []
        argv += ["--follow"] if query.follow else []
        for s in journald:
            argv += ["--unit", f"{s.name}.service"]
        parts.append(shlex.join(argv))
    smf = [s for s in services if s.manager == "smf" and not s.log_files]
    logs = " ".join(f'"$(svcs -L {shlex.quote(f"svc:/site/{s.name}:default")})"' for s in smf)
    if files or logs:
        tail = ["tail", "-n", n] + (["-F"] if query.follow else [])
        parts.append(" ".join([shlex.join(tail + files), logs]).strip())
    return " & ".join(parts) + (" & wait" if len(parts) > 1 else "")
