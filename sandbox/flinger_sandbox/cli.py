"""The `flinger-sandbox` command line: a local multi-host test bed, and the demo on it.

`up | down | status | env` manage the sandbox; `demo` starts one and runs flinger's whole
workflow against it, each step through flinger's own command line (in this process).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flinger.cli import run_app
from flinger.errors import ExitStatus, FlingerError
from flinger.ui import UI
from flinger_sandbox.paths import DEFAULT_DIRECTORY

app = typer.Typer(
    name="flinger-sandbox",
    help="A local multi-host test bed for flinger: real sshd hosts on loopback addresses.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion: commands, and --example names
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
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


@app.callback()
def _global(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="print results as JSON on stdout")] = False,
) -> None:
    ctx.obj = UI(json_mode=json_, verbose=False)


def _ui(ctx: typer.Context) -> UI:
    assert isinstance(ctx.obj, UI)
    return ctx.obj


@app.command("up")
def up(
    ctx: typer.Context,
    servers: Annotated[int, typer.Option("--servers", min=2, max=200, help="hosts, the first is the builder")] = 4,
    directory: DirOpt = DEFAULT_DIRECTORY,
    init: InitOpt = Init.runit,
    registry: Annotated[
        bool,
        typer.Option("--registry", help="also run an OCI registry (TLS, password) that deploys go through"),
    ] = False,
) -> int:
    """Start N sshd hosts (one builder, N-1 servers) and write DIR/deploy.toml."""
    import flinger_sandbox as sandbox

    ui = _ui(ctx)
    state = sandbox.up(directory.resolve(), servers, init=init.value, with_registry=registry)
    if ui.json_mode:
        ui.emit_json(
            {
                "command": "sandbox up",
                "config": str(state.config_path),
                "hosts": {k: list(v) for k, v in state.hosts.items()},
                "registry": state.registry_url,
            }
        )
        return 0
    ui.table(
        f"sandbox {state.directory}", ("host", "address", "port"), [(n, a, p) for n, (a, p) in state.hosts.items()]
    )
    if state.registry_url:
        ui.note(f"registry: {state.registry_url} (deploy.toml's [artifacts] sends packages through it)")
    ui.note(f'config: {state.config_path}\nagent:  eval "$(flinger-sandbox env --dir {directory})"')
    return 0


@app.command("down")
def down(
    ctx: typer.Context,
    directory: DirOpt = DEFAULT_DIRECTORY,
    purge: Annotated[
        bool, typer.Option("--purge", help="also remove the hosts' files, keys and state: the next up starts fresh")
    ] = False,
) -> int:
    """Stop every process the sandbox started (by pid); keys and host files stay unless --purge."""
    import flinger_sandbox as sandbox

    stopped = sandbox.down(directory.resolve(), purge=purge)
    _ui(ctx).note(f"stopped: {', '.join(stopped) or 'nothing was running'}" + ("; purged" if purge else ""))
    return 0


@app.command("status")
def status(ctx: typer.Context, directory: DirOpt = DEFAULT_DIRECTORY) -> int:
    """Show each sandbox host and whether its sshd and its service manager (runsvdir or systemd) are alive,
    and the registry's state when it runs one."""
    import flinger_sandbox as sandbox

    ui = _ui(ctx)
    rows = sandbox.status(directory.resolve())
    registry = sandbox.registry_status(directory.resolve())
    if ui.json_mode:
        ui.emit_json([vars(r) for r in rows])
    elif not rows:
        ui.note(f"no sandbox running in {directory} (start one: flinger-sandbox up --dir {directory})")
    else:
        ui.table(
            "sandbox",
            ("host", "address", "port", "sshd", "init"),
            [
                (r.name, r.addr, r.port, "up" if r.sshd_alive else "down", "up" if r.supervisor_alive else "down")
                for r in rows
            ],
        )
        if registry is not None:
            ui.note(f"registry: {registry[0]} {'up' if registry[1] else 'down'}")
    registry_ok = registry is None or registry[1]
    return 0 if rows and all(r.sshd_alive for r in rows) and registry_ok else int(ExitStatus.UNREACHABLE)


@app.command("env")
def env(directory: DirOpt = DEFAULT_DIRECTORY) -> int:
    """Print shell lines that export SSH_AUTH_SOCK and FLINGER_CONFIG for the sandbox."""
    import flinger_sandbox as sandbox

    typer.echo(sandbox.env(directory.resolve()))
    return 0


def _example_names() -> list[str]:
    from flinger_sandbox.demo import examples

    try:
        return examples()
    except FlingerError:  # not run from a source tree: no examples to offer
        return []


@app.command()
def demo(
    ctx: typer.Context,
    servers: Annotated[int, typer.Option("--servers", min=3, max=64, help="sandbox hosts (one is the builder)")] = 4,
    directory: DirOpt = DEFAULT_DIRECTORY,
    down_after: Annotated[bool, typer.Option("--down", help="stop the sandbox at the end")] = False,
    init: InitOpt = Init.runit,
    example: Annotated[
        str | None,
        typer.Option(
            "--example",
            help="deploy this seed example (examples/NAME; default: quorum, the system in packaging/): "
            + ", ".join(_example_names()),
            autocompletion=lambda incomplete: [n for n in _example_names() if n.startswith(incomplete)],
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=256, help="flinger's --parallel in every step")
    ] = 16,
) -> int:
    """Start a local sandbox and run flinger's whole workflow on the example quorum system."""
    import flinger_sandbox as sandbox
    from flinger.cli import run as run_flinger
    from flinger_sandbox.demo import run_demo

    ui = _ui(ctx)
    target = directory.resolve()
    try:
        report = run_demo(
            target, servers, lambda argv: run_flinger(["--parallel", str(parallel), *argv]), ui.note,
            init=init.value, example=example,
        )  # fmt: skip
    finally:
        if down_after:
            sandbox.down(target)
    if example not in (None, "quorum"):
        ui.success(f"demo complete: the {example} example is deployed, its services active and healthy")
        return 0
    ui.table("quorum nodes", ("server", "/status"), list(report.nodes.items()))
    sealed = [n for n, s in report.nodes.items() if s != "unsealed"]
    if sealed:
        ui.error(f"not unsealed: {', '.join(sealed)}")
        return int(ExitStatus.FAILED)
    ui.success(f"demo complete: {len(report.nodes)} quorum nodes unsealed")
    if not down_after:
        ui.note(f"the sandbox is still running: flinger-sandbox down --dir {directory}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "flinger-sandbox", sys.argv[1:] if argv is None else argv))
