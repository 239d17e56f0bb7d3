"""`flinger exec` (and `flinger logs`): run a command on many servers in parallel, output
prefixed by server; one Ctrl-C ends every command at once, on the servers too (exit 130)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flinger.engine.brake import Brake
from flinger.engine.fanout import Reporter, fan_out
from flinger.engine.hosts import open_hosts
from flinger.engine.results import ServerResult
from flinger.errors import RemoteCommandError, StoppedError
from flinger.progress import Sink, nowhere
from flinger.ssh.connection import privileged, stoppable
from flinger.topology.model import Server, Topology


def run_exec(
    topology: Topology,
    servers: list[Server],
    command: str | Callable[[Server], str],
    *,
    parallel: int,
    events: Sink = nowhere,
    use_privilege: bool = False,
) -> tuple[list[ServerResult], bool]:
    """Run `command` (a shell command line given by the operator, or one per server) on each
    server; (the results, whether Ctrl-C or SIGTERM stopped them)."""
    hosts = open_hosts(topology)
    brake = Brake()

    def work(server: Server, report: Reporter) -> dict[str, Any]:
        report.step("connect")
        conn = hosts.get(server.name)
        conn.open()
        report.step("run")
        text = command(server) if callable(command) else command
        wrapped = stoppable(text, server.python)
        line = privileged(wrapped, server.privilege) if use_privilege else wrapped
        result = conn.run(line, on_line=lambda _stream, out: report.line(out), check=False, stop=brake.event)
        if brake.pulled:
            report.details["stopped"] = brake.by
            raise StoppedError(f"stopped by {brake.by} while it ran: the command was ended there")
        report.details.update(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
        if result.exit_code != 0:  # failed, with its output kept apart in --json
            raise RemoteCommandError(text, result.exit_code, result.tail)
        return dict(report.details)

    try:
        return fan_out(servers, work, parallel=parallel, events=events, brake=brake), brake.pulled
    finally:
        hosts.close()
