"""A server as a deploy operation first meets it: trusted, connected, paths resolved, the
remote tool in place; and the deploy lock given back when an operation must do it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flinger.engine.plan import staging_runs_dir
from flinger.engine.remote import resolve_remote_path, run_tool, tool_check, upload_tool
from flinger.errors import RemoteCommandError
from flinger.protocol.plans import LockPlan
from flinger.protocol.results import LockResult
from flinger.topology.model import Server

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.hosts import Transport
    from flinger.engine.run import Run


@dataclass
class Session:
    conn: Transport
    tool: str  # the remote tool's path there
    install_dir: str
    staging: str  # the staging dir, resolved
    runs: str  # where this install dir's runs stage: <staging>/runs/<key>
    run_dir: str  # this run's own: <runs>/<run id> (made when the operation stages files)


def open_session(run: Run, server: Server, report: Reporter, *, step: str, stages: bool = False) -> Session:
    """Refuse an untrusted server before connecting; connect; resolve the install and staging
    dirs; in `step`, ship the tool (and, when the operation `stages` files, make this run's
    staging dir). Making the dirs and asking for the tool there ride the connection's start:
    no round trip of their own."""
    run.hosts.check_trusted(server)
    report.step("connect")
    conn = run.hosts.get(server.name)
    deployment = run.topology.deployment
    # the dirs as deploy.toml spells them ($HOME left to the shell there), then resolved
    first = tool_check(deployment.staging_dir, _staged(deployment.staging_dir, run) if stages else ())
    checked = conn.open(first=first)
    staging = resolve_remote_path(conn, deployment.staging_dir)
    install_dir = resolve_remote_path(conn, deployment.install_dir)
    dirs = _staged(staging, run)
    report.step(step)
    tool = upload_tool(conn, run.topology, deployment.staging_dir, dirs=dirs if stages else (), checked=checked)
    return Session(conn, tool, install_dir, staging, runs=dirs[1], run_dir=dirs[2])


def _staged(staging: str, run: Run) -> tuple[str, str, str]:
    """The runs dir under `staging`, this install dir's in it, and this run's own."""
    runs = staging_runs_dir(staging, run.topology.deployment.install_dir)  # named as deploy.toml spells it
    return f"{staging}/runs", runs, f"{runs}/{run.run_id}"


def release_lock(run: Run, session: Session, report: Reporter) -> None:
    """Give this run's lock up (after a failure left it held); a problem is only noted."""
    plan = LockPlan("release", session.install_dir, run.holder)
    try:
        run_tool(session.conn, session.tool, "lock", plan, LockResult)
    except RemoteCommandError as exc:
        report.line(f"lock release: {exc.message}")
