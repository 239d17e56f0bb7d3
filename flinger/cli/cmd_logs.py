"""`flinger logs [SERVICE] [--servers] [--since] [-n N] [-f]`: the services' own logs from
every chosen server, each line prefixed with its server; Ctrl-C stops a follow at once."""

from __future__ import annotations

from typing import Annotated

import typer

from flinger.cli.app import ServersOpt, app, env_of, finish


@app.command()
def logs(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Argument(help="one service (default: every service of each server)")] = None,
    servers: ServersOpt = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, max=100000, help="last lines of each log")] = 50,
    since: Annotated[
        str | None, typer.Option("--since", help='journald only: from this time on ("1 hour ago", "2026-12-03 10:00")')
    ] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep printing new lines until Ctrl-C")] = False,
) -> int:
    """Show the services' logs (journald, svlogd, SMF or their log_file) on the chosen servers."""
    from flinger.actions.logs import LogQuery, chosen_servers, log_command, services_on
    from flinger.actions.remote_exec import run_exec

    env = env_of(ctx)
    topology, manifest = env.topology(), env.manifest()
    query = LogQuery(service, lines, since, follow)
    chosen = chosen_servers(topology, manifest, env.select_servers(servers), query)
    commands = {s.name: log_command(services_on(topology, manifest, s, service), query) for s in chosen}
    board = env.ui.board([s.name for s in chosen], f"logs{' ' + service if service else ''}")
    with board.running():
        results, stopped = run_exec(
            topology,
            chosen,
            lambda server: commands[server.name],
            parallel=max(env.parallel, len(chosen)) if follow else env.parallel,  # every follow at once
            events=board,
            use_privilege=True,
        )
    if not env.json:
        for r in results:
            r.details.pop("stdout", None)
            r.details.pop("stderr", None)
    return finish(env, "logs", results, stopped=stopped)
