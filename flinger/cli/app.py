"""The typer application: global options and the commands (each thin: options → action → UI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from flinger.cli.env import Env
from flinger.engine.results import ServerResult, exit_status
from flinger.errors import ExitStatus
from flinger.progress import Info
from flinger.secrets.sealing import IDENTITY_ENV
from flinger.ui import UI

app = typer.Typer(
    name="flinger",
    help="Deploy a distributed system onto many servers over SSH.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            number = installed("flinger")
        except PackageNotFoundError:
            number = "unknown (not installed)"
        typer.echo(f"flinger {number}")
        raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="deploy.toml (default ./deploy.toml, then $FLINGER_CONFIG)")
    ] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=256, help="servers worked on at once")] = 16,
    json_: Annotated[bool, typer.Option("--json", help="print results as JSON on stdout")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="more detail (paths and fingerprints, never secrets)")
    ] = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="on an internal error, show the Python traceback")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="print flinger's version")
    ] = False,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            help="the key that opens the deployment's sealed state (default $FLINGER_IDENTITY, "
            "else ~/.ssh/id_ed25519 and ~/.config/flinger/identity.txt)",
        ),
    ] = None,
) -> None:
    if identity is not None:
        os.environ[IDENTITY_ENV] = str(identity)
    ctx.obj = Env(
        config=config, parallel=parallel, json=json_, verbose=verbose, ui=UI(json_mode=json_, verbose=verbose)
    )
    ctx.obj.ui.trace()


def env_of(ctx: typer.Context) -> Env:
    assert isinstance(ctx.obj, Env)
    return ctx.obj


def complete_servers(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of --servers: the names in deploy.toml (-c, ./deploy.toml or
    $FLINGER_CONFIG), after those already given (a,b,...)."""
    from flinger.errors import FlingerError
    from flinger.topology import find_config, load_topology

    root = ctx.find_root()
    try:
        topology = load_topology(find_config(root.params.get("config")))
    except (FlingerError, OSError):
        return []
    given, _, last = incomplete.rpartition(",")
    taken = set(given.split(",")) if given else set()
    prefix = f"{given}," if given else ""
    return [prefix + name for name in topology.servers if name.startswith(last) and name not in taken]


ServersOpt = Annotated[
    str | None,
    typer.Option(
        "--servers",
        help="comma-separated server names (default: the deployment servers)",
        autocompletion=complete_servers,
    ),
]


def finish(
    env: Env, title: str, results: list[ServerResult], extra: dict[str, Any] | None = None, *, stopped: bool = False
) -> int:
    """Print the summary (or JSON) of a fan-out and return the exit status (130 when the
    operator stopped it, whatever the servers that were at work did)."""
    status = ExitStatus.INTERRUPTED if stopped else exit_status(results)
    if status is ExitStatus.OK and (extra or {}).get("fleet_problem"):
        status = ExitStatus.FAILED  # every server is well, the fleet is not (deploy status: skew)
    if env.json:
        env.ui.emit_json(
            {"command": title, "exit_status": int(status), "servers": [r.as_json() for r in results], **(extra or {})}
        )
    else:
        env.ui.summary(title, results)
    return int(status)


@app.command()
def check(ctx: typer.Context) -> int:
    """Validate deploy.toml and the package manifest (no network)."""
    from flinger.actions.check import run_check

    env = env_of(ctx)
    report = run_check(env.topology(), env.manifest())
    for warning in report.warnings:
        env.ui.warn(warning)
    if env.json:
        env.ui.emit_json(report.as_json())
        return 0
    env.ui.table(
        f"deployment {report.name}: {report.config}",
        ("server", "address", "roles", "builder", "deploy", "manager"),
        report.server_rows,
    )
    env.ui.table(
        f"packages: {report.manifest}", ("package", "service", "source", "roles", "servers"), report.package_rows
    )
    art = report.artifacts
    source = (
        f"packages through the registry {art.url}/{art.repository}"
        if art.store == "registry"
        else "packages pushed by the builder"
    )
    env.ui.success(
        f"ok: {len(report.server_rows)} servers, {len(report.package_rows)} packages, threshold {report.threshold}; "
        + source
    )
    return 0


@app.command()
def trust(
    ctx: typer.Context,
    servers: ServersOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="accept a CHANGED key (after checking it out of band)")
    ] = False,
) -> int:
    """Show host key fingerprints and record them where ssh looks (explicit first use; jump
    hosts on the way are trusted first)."""
    from flinger.actions.trust import run_trust

    env = env_of(ctx)
    chosen = env.select_servers(servers, include_builder=True)
    board = env.ui.board([s.name for s in chosen], "trust")
    with board.running():
        results = run_trust(env.topology(), chosen, replace=replace, parallel=env.parallel, events=board)
    known = env.topology().ssh.known_hosts
    return finish(env, "trust", results, {"known_hosts": str(known) if known else "ssh_config's UserKnownHostsFile"})


@app.command("exec")
def exec_(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help="shell command line to run on each server")],
    servers: ServersOpt = None,
    privileged: Annotated[
        bool, typer.Option("--privileged", help="run through each server's privilege tool (sudo/pfexec)")
    ] = False,
) -> int:
    """Run a command on servers in parallel; each output line is prefixed with the server name."""
    from flinger.actions.remote_exec import run_exec

    env = env_of(ctx)
    chosen = env.select_servers(servers)
    board = env.ui.board([s.name for s in chosen], f"exec: {command}")
    with board.running():
        results, stopped = run_exec(
            env.topology(), chosen, command, parallel=env.parallel, events=board, use_privilege=privileged
        )
    if not env.json:  # the lines were shown as they came; --json keeps stdout and stderr apart
        for r in results:
            r.details.pop("stdout", None)
            r.details.pop("stderr", None)
    return finish(env, "exec", results, stopped=stopped)


@app.command()
def sync(ctx: typer.Context) -> int:
    """Copy the source tree to the builder with rsync (delta, --delete, excludes)."""
    from flinger.actions.provenance import record_sync, tree_fingerprint
    from flinger.actions.sync import plan_sync, run_sync

    env = env_of(ctx)
    plan = plan_sync(env.topology())
    tree = tree_fingerprint(env.topology())  # what is sent: a deploy of an older build is refused
    env.ui.note(plan.describe())
    board = env.ui.board([env.topology().builder.server], "sync")
    with board.running():
        result = run_sync(
            plan, env.topology(), on_progress=lambda line: board(Info(env.topology().builder.server, line))
        )
    record_sync(env.topology(), tree)
    stats = result.stats
    if env.json:
        env.ui.emit_json(
            {
                "command": "sync",
                "exit_status": 0,
                "stats": stats,
                "transferred": result.transferred,
                "deleted": result.deleted,
            }
        )
        return 0
    env.ui.success(
        f"synced to {plan.destination}: {len(result.transferred)} files sent, {len(result.deleted)} deleted, "
        f"{stats.get('bytes_sent', 0):,} bytes sent ({stats.get('literal_bytes', 0):,} literal, "
        f"{stats.get('matched_bytes', 0):,} matched), tree {stats.get('total_size', 0):,} bytes"
    )
    return 0
