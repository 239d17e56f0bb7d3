"""A server as a deploy operation first meets it: trusted, connected, paths resolved, the
remote tool in place; and the deploy lock given back when an operation must do it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flinger.engine.plan import staging_runs_dir
from flinger.engine.remote import resolve_remote_path, run_tool, upload_tool
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


def open_session(run: Run, server: Server, report: Reporter, *, step: str, stages: bool = False) -> Session:
    """Refuse an untrusted server before connecting; connect; resolve the install and staging
    dirs; in `step`, ship the tool (and, when the operation `stages` files, make this install
    dir's runs dir with the same round trip)."""
    run.hosts.check_trusted(server)
    report.step("connect")
    conn = run.hosts.get(server.name)
    conn.open()
    deployment = run.topology.deployment
    staging = resolve_remote_path(conn, deployment.staging_dir)
    install_dir = resolve_remote_path(conn, deployment.install_dir)
    runs = staging_runs_dir(staging, install_dir)
    report.step(step)
    tool = upload_tool(conn, run.topology, deployment.staging_dir, dirs=(f"{staging}/runs", runs) if stages else ())
    return Session(conn, tool, install_dir, staging, runs)


def release_lock(run: Run, session: Session, report: Reporter) -> None:
    """Give this run's lock up (after a failure left it held); a problem is only noted."""
    plan = LockPlan("release", session.install_dir, run.holder)
    try:
        run_tool(session.conn, session.tool, "lock", plan, LockResult)
    except RemoteCommandError as exc:
        report.line(f"lock release: {exc.message}")
