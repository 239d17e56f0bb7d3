"""`flinger build check | package`: build on the builder, stream output, report per package."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from flinger.cli.app import app, env_of
from flinger.cli.env import Env
from flinger.errors import ExitStatus

build_app = typer.Typer(
    help="Build on the builder: check (run build commands) or package (tarballs).", no_args_is_help=True
)
app.add_typer(build_app, name="build")


def _build(env: Env, *, check_only: bool, no_cache: bool) -> int:
    from flinger.actions.build import run_build

    manifest = env.manifest()
    title = "build check" if check_only else "build package"
    board = env.ui.board(list(manifest.packages), f"{title} on {env.topology().builder.server}")
    with board.running():
        outcome = run_build(env.topology(), manifest, check_only=check_only, no_cache=no_cache, events=board)
    status = ExitStatus.OK if outcome.ok else ExitStatus.FAILED
    if outcome.ok and not check_only:
        from flinger.actions.provenance import record_build

        record_build(env.topology(), manifest)  # what this build was made from (deploy install checks it)
    if env.json:
        env.ui.emit_json(
            {
                "command": title,
                "exit_status": int(status),
                "artifacts_dir": outcome.artifacts_dir,
                "packages": [
                    {"name": name, **asdict(p), "setup_hint": outcome.setup_hints.get(name)}
                    for name, p in outcome.packages.items()
                ],
            }
        )
        return int(status)
    rows = []
    for name, p in outcome.packages.items():
        detail = p.error or ""
        if p.state == "failed" and p.command:
            detail = f"`{p.command}` exited with status {p.exit_status}"
        rows.append((name, p.state, (p.sha256 or "")[:16], "" if p.size is None else f"{p.size:,}", detail))
    env.ui.table(f"{title}: {outcome.artifacts_dir}", ("package", "result", "sha256", "bytes", "detail"), rows)
    for name, p in outcome.packages.items():
        if p.state != "failed":
            continue
        what = f"`{p.command}` exited with status {p.exit_status}" if p.command else (p.error or "failed")
        env.ui.error(f"{name}: {what}")
        for line in p.tail[-15:]:
            env.ui.note(f"  [{name}] {line}")
        if name in outcome.setup_hints:
            env.ui.note(f"  hint for {name}: {outcome.setup_hints[name]}")
    if outcome.ok:
        env.ui.success(
            f"{len(outcome.built)} built, {sum(p.state == 'cached' for p in outcome.packages.values())} unchanged"
        )
    return int(status)


@build_app.command("check")
def build_check(ctx: typer.Context) -> int:
    """Run each package's build commands on the builder (no packaging)."""
    return _build(env_of(ctx), check_only=True, no_cache=True)


@build_app.command("package")
def build_package(
    ctx: typer.Context,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="rebuild every package")] = False,
) -> int:
    """Build deterministic package tarballs on the builder (unchanged inputs are not rebuilt)."""
    return _build(env_of(ctx), check_only=False, no_cache=no_cache)
