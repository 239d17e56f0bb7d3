"""`flinger exec`: run one command on many servers in parallel, output prefixed by server."""

from __future__ import annotations

from typing import Any

from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.hosts import open_hosts
from flinger.engine.results import ServerResult
from flinger.errors import RemoteCommandError
from flinger.progress import Sink, nowhere
from flinger.ssh.connection import privileged
from flinger.topology.model import Server, Topology


def run_exec(
    topology: Topology,
    servers: list[Server],
    command: str,
    *,
    parallel: int,
    events: Sink = nowhere,
    use_privilege: bool = False,
) -> list[ServerResult]:
    """Run `command` (a shell command line, given by the operator) on each server."""
    hosts = open_hosts(topology)

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        report.step("connect")
        conn = hosts.get(server.name)
        conn.open()
        report.step("run")
        line = privileged(command, server.privilege) if use_privilege else command
        result = conn.run(line, on_line=lambda _stream, text: report.line(text), check=False)
        report.details.update(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
        if result.exit_code != 0:  # failed, with its output kept apart in --json
            raise RemoteCommandError(command, result.exit_code, result.tail)
        return dict(report.details)

    try:
        return fan_out(servers, work, parallel=parallel, events=events)
    finally:
        hosts.close()
