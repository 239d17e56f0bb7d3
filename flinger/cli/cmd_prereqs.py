"""`flinger install-prereqs [--check]`: OS packages, sysctls, accounts and dirs on every host."""

from __future__ import annotations

from typing import Annotated

import typer

from flinger.cli.app import app, env_of, finish

PrereqServersOpt = Annotated[
    str | None,
    typer.Option("--servers", help="comma-separated server names (default: the builder and the deployment servers)"),
]


@app.command("install-prereqs")
def install_prereqs(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="only report what would change; change nothing")] = False,
    servers: PrereqServersOpt = None,
    skip_scripts: Annotated[
        bool,
        typer.Option("--skip-scripts", help="packages, sysctls, accounts and dirs only: not the manifest's scripts"),
    ] = False,
) -> int:
    """Install the manifest's prerequisites on the builder and deployment servers (idempotent)."""
    from flinger.actions.prereqs import run_prereqs

    env = env_of(ctx)
    topology, manifest = env.topology(), env.manifest()
    chosen = [s.name for s in env.select_servers(servers, include_builder=True)]
    title = "install-prereqs --check" if check else "install-prereqs"
    if skip_scripts:
        title += " --skip-scripts"
    board = env.ui.board(chosen, title)
    with board.running():
        results = run_prereqs(
            topology, manifest, check=check, parallel=env.parallel, events=board, servers=chosen,
            skip_scripts=skip_scripts,
        )  # fmt: skip
    return finish(env, title, results, {"check": check})
