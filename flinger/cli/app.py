"""The typer application: global options and the commands (each thin: options → action → UI)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from flinger.cli.env import Env
from flinger.errors import ExitStatus
from flinger.progress import Info
from flinger.ssh.fanout import ServerResult, exit_status
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
) -> None:
    ctx.obj = Env(
        config=config, parallel=parallel, json=json_, verbose=verbose, ui=UI(json_mode=json_, verbose=verbose)
    )


def env_of(ctx: typer.Context) -> Env:
    assert isinstance(ctx.obj, Env)
    return ctx.obj


ServersOpt = Annotated[
    str | None, typer.Option("--servers", help="comma-separated server names (default: the deployment servers)")
]


def finish(env: Env, title: str, results: list[ServerResult], extra: dict[str, Any] | None = None) -> int:
    """Print the summary (or JSON) of a fan-out and return the exit status."""
    status = exit_status(results)
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
    source = (f"packages through the registry {art['url']}/{art['repository']}" if art["store"] == "registry"
              else "packages pushed by the builder")
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
    """Show host key fingerprints and record them in [ssh] known_hosts (explicit first use)."""
    from flinger.actions.trust import run_trust

    env = env_of(ctx)
    chosen = env.select_servers(servers, include_builder=True)
    board = env.ui.board([s.name for s in chosen], "trust")
    with board.running():
        results = run_trust(env.topology(), chosen, replace=replace, parallel=env.parallel, events=board)
    return finish(env, "trust", results, {"known_hosts": str(env.topology().ssh.known_hosts)})


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
        results = run_exec(
            env.topology(), chosen, command, parallel=env.parallel, events=board, use_privilege=privileged
        )
    if not env.json:  # the lines were shown as they came; --json keeps stdout and stderr apart
        for r in results:
            r.details.pop("stdout", None)
            r.details.pop("stderr", None)
    return finish(env, "exec", results)


@app.command()
def sync(ctx: typer.Context) -> int:
    """Copy the source tree to the builder with rsync (delta, --delete, excludes)."""
    from flinger.actions.sync import plan_sync, run_sync

    env = env_of(ctx)
    plan = plan_sync(env.topology())
    env.ui.note(plan.describe())
    board = env.ui.board([env.topology().builder.server], "sync")
    with board.running():
        result = run_sync(plan, on_progress=lambda line: board(Info(env.topology().builder.server, line)))
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


sandbox_app = typer.Typer(
    help="A local multi-host test bed: real sshd hosts on loopback addresses.", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")
DirOpt = Annotated[Path, typer.Option("--dir", help="sandbox directory")]
class Init(StrEnum):
    runit = "runit"
    systemd = "systemd"


InitOpt = Annotated[
    Init,
    typer.Option(
        "--init",
        help="runit: fast namespaced hosts; systemd: each host boots systemd (systemd-nspawn on a "
        "cached Debian rootfs), as real fleets run",
    ),
]
DEFAULT_SANDBOX = Path("/var/lib/flinger-sandbox")  # not under /root, /opt or /srv: the hosts mount over those


@sandbox_app.command("up")
def sandbox_up(
    ctx: typer.Context,
    servers: Annotated[int, typer.Option("--servers", min=2, max=200, help="hosts, the first is the builder")] = 4,
    directory: DirOpt = DEFAULT_SANDBOX,
    init: InitOpt = Init.runit,
    registry: Annotated[
        bool,
        typer.Option("--registry", help="also run an OCI registry (TLS, password) that deploys go through"),
    ] = False,
) -> int:
    """Start N sshd hosts (one builder, N-1 servers) and write DIR/deploy.toml."""
    from flinger import sandbox

    env = env_of(ctx)
    state = sandbox.up(directory.resolve(), servers, init=init.value, with_registry=registry)
    if env.json:
        env.ui.emit_json(
            {
                "command": "sandbox up",
                "config": str(state.config_path),
                "hosts": {k: list(v) for k, v in state.hosts.items()},
                "registry": state.registry_url,
            }
        )
        return 0
    env.ui.table(
        f"sandbox {state.directory}", ("host", "address", "port"), [(n, a, p) for n, (a, p) in state.hosts.items()]
    )
    if state.registry_url:
        env.ui.note(f"registry: {state.registry_url} (deploy.toml's [artifacts] sends packages through it)")
    env.ui.note(f'config: {state.config_path}\nagent:  eval "$(flinger sandbox env --dir {directory})"')
    return 0


@sandbox_app.command("down")
def sandbox_down(ctx: typer.Context, directory: DirOpt = DEFAULT_SANDBOX) -> int:
    """Stop every process the sandbox started (by pid)."""
    from flinger import sandbox

    stopped = sandbox.down(directory.resolve())
    env_of(ctx).ui.note(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


@sandbox_app.command("status")
def sandbox_status(ctx: typer.Context, directory: DirOpt = DEFAULT_SANDBOX) -> int:
    """Show each sandbox host and whether its sshd and its service manager (runsvdir or systemd) are alive,
    and the registry's state when it runs one."""
    from flinger import sandbox

    env = env_of(ctx)
    rows = sandbox.status(directory.resolve())
    registry = sandbox.registry_status(directory.resolve())
    if env.json:
        env.ui.emit_json([vars(r) for r in rows])
    else:
        env.ui.table(
            "sandbox",
            ("host", "address", "port", "sshd", "init"),
            [
                (r.name, r.addr, r.port, "up" if r.sshd_alive else "down", "up" if r.supervisor_alive else "down")
                for r in rows
            ],
        )
        if registry is not None:
            env.ui.note(f"registry: {registry[0]} {'up' if registry[1] else 'down'}")
    registry_ok = registry is None or registry[1]
    return 0 if rows and all(r.sshd_alive for r in rows) and registry_ok else int(ExitStatus.UNREACHABLE)


@sandbox_app.command("env")
def sandbox_env(directory: DirOpt = DEFAULT_SANDBOX) -> int:
    """Print shell lines that export SSH_AUTH_SOCK for the sandbox agent."""
    from flinger import sandbox

    typer.echo(sandbox.env(directory.resolve()))
    return 0


@app.command()
def demo(
    ctx: typer.Context,
    servers: Annotated[int, typer.Option("--servers", min=3, max=64, help="sandbox hosts (one is the builder)")] = 4,
    directory: DirOpt = DEFAULT_SANDBOX,
    down: Annotated[bool, typer.Option("--down", help="stop the sandbox at the end")] = False,
    init: InitOpt = Init.runit,
    example: Annotated[
        str | None,
        typer.Option(
            "--example", help="deploy this seed example (examples/NAME; default: quorum, the system in packaging/)"
        ),
    ] = None,
) -> int:
    """Start a local sandbox and run the whole workflow on the example quorum system."""
    from flinger import sandbox
    from flinger.actions.demo import run_demo
    from flinger.cli import run as run_cli

    env = env_of(ctx)
    target = directory.resolve()
    try:
        report = run_demo(target, servers, run_cli, env.ui.note, init=init.value, example=example)
    finally:
        if down:
            sandbox.down(target)
    if example not in (None, "quorum"):
        env.ui.success(f"demo complete: the {example} example is deployed, its services active and healthy")
        return 0
    env.ui.table("quorum nodes", ("server", "/status"), list(report.nodes.items()))
    sealed = [n for n, s in report.nodes.items() if s != "unsealed"]
    if sealed:
        env.ui.error(f"not unsealed: {', '.join(sealed)}")
        return int(ExitStatus.FAILED)
    env.ui.success(f"demo complete: {len(report.nodes)} quorum nodes unsealed")
    if not down:
        env.ui.note(f"the sandbox is still running: flinger sandbox down --dir {directory}")
    return 0
