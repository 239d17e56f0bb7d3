"""`flinger up`: deploy what is in the tree, in one command: check, sync, build package,
overlay, deploy install; it stops at the first step that fails, and only the last one
touches a server. Each step says what it did as on its own (with --json, one document per
step); the exit status is the first failing step's, or the install's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from flinger.cli.app import ServersOpt, app, env_of
from flinger.cli.cmd_build import build_package
from flinger.cli.cmd_deploy import AllowEmpty, FailFast, install
from flinger.cli.cmd_overlay import overlay


@app.command()
def up(
    ctx: typer.Context,
    servers: ServersOpt = None,
    fail_fast: FailFast = False,
    allow_empty: AllowEmpty = False,
    batch: Annotated[
        str | None, typer.Option("--batch", help="servers per batch, N or P% (default: a whole wave at once)")
    ] = None,
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="failed servers (N or P%) the rollout goes on despite")
    ] = "0",
) -> int:
    """Deploy what is in the tree: check, sync, build package, overlay, deploy install,
    stopping at the first step that fails (no server is touched before the install)."""
    from flinger.actions.check import run_check
    from flinger.cli.app import sync

    env = env_of(ctx)
    run_check(env.topology(), env.manifest())  # bad input or a template error: exit 2 before anything
    steps: list[tuple[str, Callable[[], int]]] = [
        ("sync", lambda: sync(ctx)),
        ("build package", lambda: build_package(ctx)),
        ("overlay", lambda: overlay(ctx)),
        (
            "deploy install",
            lambda: install(
                ctx,
                servers=servers,
                fail_fast=fail_fast,
                allow_empty=allow_empty,
                batch=batch,
                max_failures=max_failures,
            ),
        ),
    ]
    for name, step in steps:
        env.ui.note(f"up: {name}")
        status = step()
        if status != 0:
            touched = "" if name == "deploy install" else "; no server was touched"
            env.ui.error(f"up: stopped at `{name}` (exit {status}){touched}")
            return status
    return 0
