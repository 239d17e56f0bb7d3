"""`flinger deploy install | uninstall | clean | status | history | rollback | unlock`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from flinger.cli.app import ServersOpt, app, env_of, finish
from flinger.cli.env import Env
from flinger.errors import UsageError
from flinger.topology.model import Server

if TYPE_CHECKING:
    from flinger.engine.operations import Operation
    from flinger.engine.plan import ServerPlan
    from flinger.engine.results import ServerResult
    from flinger.engine.strategy import RolloutPolicy, Strategy

deploy_app = typer.Typer(help="Install to, or remove from, every deployment server in parallel.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

DryRun = Annotated[bool, typer.Option("--dry-run", help="print the per-server plan; change nothing")]
Offline = Annotated[
    bool, typer.Option("--offline", help="with --dry-run: the plan alone, without asking the servers what they run")
]
FailFast = Annotated[bool, typer.Option("--fail-fast", help="start no new server once one has failed")]
LockWait = Annotated[float, typer.Option("--lock-wait", min=0, help="seconds to wait for another deploy's lock")]
AllowStale = Annotated[
    bool,
    typer.Option("--allow-stale", help="install even a build or overlay older than what it was made from"),
]
AllowEmpty = Annotated[
    bool, typer.Option("--allow-empty", help="install even to servers that get no package (their services stop)")
]


def _rollout_policy(batch: str | None, max_failures: str, **rest: Any) -> RolloutPolicy:
    """The --batch / --max-failures options (and the rest of a policy) as a RolloutPolicy."""
    from flinger.engine.strategy import RolloutPolicy, parse_amount

    if rest.get("canary_wait") and not rest.get("canary"):
        raise UsageError("--canary-wait needs --canary N")
    return RolloutPolicy(
        batch=parse_amount(batch, "--batch", minimum=1) if batch is not None else None,
        max_failures=parse_amount(max_failures, "--max-failures", minimum=0),
        **rest,
    )


def _checked_plans(env: Env, chosen: list[Server], allow_empty: bool) -> list[ServerPlan]:
    """The install plans, their notes said (the same in a dry run and a real one), and a
    server that would get no package at all refused unless asked: one role typo would
    otherwise switch it to an empty release and stop every service it runs."""
    from flinger.engine.plan import plan_deploy

    plans = plan_deploy(env.topology(), env.manifest(), chosen)
    for plan in plans:
        for note in plan.notes:
            env.ui.warn(f"{plan.server}: {note}")
    empty = [p.server for p in plans if not p.packages]
    if empty and not allow_empty:
        roles = sorted({r for p in env.manifest().packages.values() for r in p.roles})
        raise UsageError(
            f"no package is meant for {', '.join(empty)} (their roles: "
            + "; ".join(f"{n}: {', '.join(env.topology().servers[n].roles) or 'none'}" for n in empty)
            + f"; the manifest's packages ask for: {', '.join(roles)}): installing would stop every service "
            "there. Fix the roles, or pass --allow-empty"
        )
    return plans


def _stale(env: Env) -> list[str]:
    from flinger.actions.provenance import stale_steps
    from flinger.overlay.store import read_index

    index = read_index(env.topology().state_dir)
    return stale_steps(env.topology(), env.manifest(), index.made_from if index is not None else None)


def _refuse_stale(env: Env, allow_stale: bool) -> None:
    """A build or overlay older than what it was made from is not installed unless asked."""
    stale = _stale(env)
    if stale and not allow_stale:
        raise UsageError("not installing stale bits: " + "; ".join(stale) + " (or pass --allow-stale)")
    for what in stale:
        env.ui.warn(f"--allow-stale: {what}")


def _open_overlays(env: Env, plans: list[ServerPlan]) -> dict[str, dict[str, bytes]]:
    """Each planned server's overlay, decrypted in memory from the sealed state."""
    if not any(p.overlay_files for p in plans):
        return {}  # nothing to open: each server says "run flinger overlay first"
    state = env.state()
    return {p.server: files for p in plans if p.overlay_files and (files := state.overlay(p.server)) is not None}


def _other_plan(env: Env, action: str, chosen: list[Server]) -> list[dict[str, Any]]:
    """What a dry run of uninstall, clean or status would do on each server."""
    deployment = env.topology().deployment
    removes = "services and files recorded in the install receipt" if action in ("uninstall", "clean") else None
    return [
        {
            "server": s.name,
            "addr": s.addr,
            "steps": [
                {"step": "ship tool", "to": f"{deployment.staging_dir}/flinger-remote.pyz"},
                {"step": action, "install_dir": deployment.install_dir, "removes": removes},
                *([{"step": "remove staging", "path": deployment.staging_dir}] if action == "clean" else []),
            ],
        }
        for s in chosen
    ]


def _dry_run(
    env: Env,
    action: str,
    servers: ServersOpt,
    *,
    allow_empty: bool = False,
    rollout: RolloutPolicy | None = None,
    offline: bool = True,
) -> int:
    from flinger.engine.strategy import BatchRollout, RolloutPolicy

    chosen = env.select_servers(servers)
    document: list[dict[str, Any]]
    if action == "install":
        from flinger.engine.install import Install

        plans = _checked_plans(env, chosen, allow_empty)
        for what in _stale(env):
            env.ui.warn(f"stale: {what}")
        batches = BatchRollout(rollout or RolloutPolicy()).batches(Install(plans).waves(chosen))
        batch_of = {name: b for b in batches for name in b.servers}
        document = [
            {**p.as_json(), "batch": batch_of[p.server].number, "canary": batch_of[p.server].canary} for p in plans
        ]
        if not offline:
            return _preview(env, chosen, plans, document)
    else:
        document = _other_plan(env, action, chosen)
    if env.json:
        env.ui.emit_json({"command": f"deploy {action}", "dry_run": True, "servers": document})
        return 0
    _print_plan(env, document)
    return 0


def _preview(env: Env, chosen: list[Server], plans: list[ServerPlan], document: list[dict[str, Any]]) -> int:
    """The plan, then what it would change on each server (each asked what it runs)."""
    from flinger.engine.preview import Preview
    from flinger.secrets.sealing import SealError

    try:
        overlays: dict[str, dict[str, bytes]] | None = _open_overlays(env, plans)
    except SealError as exc:  # the rest is compared all the same
        env.ui.warn(f"overlay files not compared: {exc.message}")
        overlays = None
    if not env.json:
        _print_plan(env, document)
    return _run(env, Preview(plans, overlays), chosen, extra={"plan": document})


def _print_plan(env: Env, document: list[dict[str, Any]]) -> None:
    for entry in document:
        env.ui.out.print(
            f"[bold]{entry['server']}[/bold] ({entry['addr']})"
            + (f" wave {entry['wave']}" if "wave" in entry else "")
            + (f" batch {entry['batch']}" + (" (canary)" if entry.get("canary") else "") if "batch" in entry else "")
        )
        for step in entry["steps"]:
            name = step["step"]
            rest = ", ".join(f"{k}={v}" for k, v in step.items() if k != "step" and v not in (None, [], ""))
            env.ui.out.print(f"  {name}: {rest}", markup=False)


def _run(
    env: Env,
    operation: Operation,
    chosen: list[Server],
    *,
    strategy: Strategy | None = None,
    fail_fast: bool = False,
    lock_wait: float = 0.0,
    confirm_within: float = 30.0,
    extra: dict[str, Any] | None = None,
) -> int:
    """Run a deploy operation on the chosen servers, with the live board; the summary
    (`extra`: more for --json)."""
    from flinger.engine.execute import execute
    from flinger.engine.run import Settings, open_run

    title = f"deploy {operation.name}"
    board = env.ui.board([s.name for s in chosen], title)
    settings = Settings(parallel=env.parallel, lock_wait=lock_wait, fail_fast=fail_fast, confirm_within=confirm_within)
    with open_run(env.topology(), env.manifest(), sink=board, settings=settings) as run, run.brake.held():
        with board.running():
            results = execute(run, operation, chosen, strategy)
        said: dict[str, Any] = {"log_dir": str(run.log_dir), "stopped_by": run.brake.by, **(extra or {})}
        said.update(operation.finish(run, results))
        if operation.name == "install":
            sent = run.store.report()
            said["artifacts"] = vars(sent)
            if not env.json:
                where = "published to the registry" if sent.store == "registry" else "pushed to servers"
                env.ui.note(f"the builder sent {sent.builder_bytes_sent:,} bytes ({where})")
        if not env.json:
            _say_fleet(env, said)
            if said.get("dry_run"):
                _show_diffs(env, results)
        if run.brake.pulled and not env.json:
            stopped = [r.server for r in results if r.status.value == "interrupted"]
            env.ui.warn(f"stopped by {run.brake.by}: {', '.join(stopped) or 'no server'} not started; the others "
                        "finished their step (below)")  # fmt: skip
        status = finish(env, title, results, said, stopped=run.brake.pulled)
    if not env.json:
        env.ui.note(f"logs: {run.log_dir}")
    return status


def _say_fleet(env: Env, extra: dict[str, Any]) -> None:
    """What the run's end says of the fleet: its releases (history), the release this run
    installed and where the fleet stands (install), servers of one role apart (status),
    the servers a dry run would not change."""
    if extra.get("dry_run"):
        env.ui.note(f"no change: {', '.join(extra['unchanged']) or 'none'}")
    rows = extra.get("fleet_releases")
    if rows:
        env.ui.table("fleet releases, newest first", ("release", "state", "created", "running on", "kept on"), [
            (r["id"], r["state"] + (f" ({r['note']})" if r["note"] else ""), r["created"],
             ", ".join(r["running"]) or "-", ", ".join(r["kept"]) or "-")
            for r in rows
        ])  # fmt: skip
    if extra.get("fleet_release"):
        env.ui.note(f"fleet release {extra['fleet_release']}: {extra.get('release_state')}")
    releases = extra.get("fleet", {}).get("releases", {})
    if len(releases) > 1:
        env.ui.warn("the fleet runs " + str(len(releases)) + " releases: "
                    + "; ".join(f"{r} on {', '.join(s)}" for r, s in sorted(releases.items())))  # fmt: skip
    if extra.get("fleet_problem"):
        env.ui.error(extra["fleet_problem"])


def _show_diffs(env: Env, results: list[ServerResult]) -> None:
    """Each server's overlay diffs (a dry run's, printed once the run is over: each headed by
    its server and file), and the changed files not shown, with why."""

    def say(text: str) -> None:
        env.ui.out.print(text, markup=False, highlight=False, soft_wrap=True)

    for r in results:
        overlay = r.details.get("diff", {}).get("overlay", {})
        for rel, text in overlay.get("diffs", {}).items():
            say(f"{r.server}: {rel}:")
            for line in text.splitlines():
                say(f"  {line}")
        for rel, why in overlay.get("not_shown", {}).items():
            say(f"{r.server}: {rel}: not shown: {why}")


Canary = Annotated[
    int, typer.Option("--canary", min=0, help="a first batch of N servers, checked again after --canary-wait")
]
CanaryWait = Annotated[
    float, typer.Option("--canary-wait", min=0, help="seconds the canary must stay healthy before the rest")
]


@deploy_app.command("install")
def install(
    ctx: typer.Context,
    servers: ServersOpt = None,
    dry_run: DryRun = False,
    fail_fast: FailFast = False,
    lock_wait: LockWait = 0.0,
    allow_empty: AllowEmpty = False,
    allow_stale: AllowStale = False,
    offline: Offline = False,
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="servers per batch, N or P% (default: a whole wave at once)"),
    ] = None,
    canary: Canary = 0,
    canary_wait: CanaryWait = 0.0,
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="failed servers (N or P%) the rollout goes on despite")
    ] = "0",
    no_rollback: Annotated[
        bool, typer.Option("--no-rollback", help="when the rollout stops, leave switched servers as they are")
    ] = False,
    confirm_timeout: Annotated[
        float,
        typer.Option(
            "--confirm-timeout",
            min=0,
            help="seconds a switched server waits for this client's "
            "confirmation before it switches itself back (0: it does not wait)",
        ),
    ] = 30.0,
) -> int:
    """Push packages from the builder, send each server its overlay, switch release, start services.

    In batches with --batch: when more servers fail than --max-failures allows, no later batch
    starts and every server this run switched goes back to the release it had."""
    from flinger.actions.check import check_artifacts
    from flinger.engine.install import Install
    from flinger.engine.strategy import BatchRollout

    env = env_of(ctx)
    policy = _rollout_policy(batch, max_failures, canary=canary, canary_wait=canary_wait, rollback=not no_rollback)
    if dry_run:
        return _dry_run(env, "install", servers, allow_empty=allow_empty, rollout=policy, offline=offline)
    chosen = env.select_servers(servers)
    plans = _checked_plans(env, chosen, allow_empty)
    _refuse_stale(env, allow_stale)
    check_artifacts(env.topology())  # the registry's password files and CA: exit 2 before any server
    overlays = _open_overlays(env, plans)  # every one opened (identity, integrity) before any server
    return _run(env, Install(plans, overlays), chosen, strategy=BatchRollout(policy), fail_fast=fail_fast,
                lock_wait=lock_wait, confirm_within=confirm_timeout)  # fmt: skip


@deploy_app.command("uninstall")
def uninstall(
    ctx: typer.Context, servers: ServersOpt = None, dry_run: DryRun = False, lock_wait: LockWait = 0.0
) -> int:
    """Stop and remove the services and exactly the files flinger installed."""
    from flinger.engine.operations import Uninstall

    env = env_of(ctx)
    if dry_run:
        return _dry_run(env, "uninstall", servers)
    return _run(env, Uninstall(), env.select_servers(servers), lock_wait=lock_wait)


@deploy_app.command("clean")
def clean(ctx: typer.Context, servers: ServersOpt = None, dry_run: DryRun = False, lock_wait: LockWait = 0.0) -> int:
    """Uninstall, then remove the staging directory."""
    from flinger.engine.operations import Clean

    env = env_of(ctx)
    if dry_run:
        return _dry_run(env, "clean", servers)
    return _run(env, Clean(), env.select_servers(servers), lock_wait=lock_wait)


@deploy_app.command("status")
def status(ctx: typer.Context, servers: ServersOpt = None, dry_run: DryRun = False) -> int:
    """Per server: reachable or not, installed release and package digests, service state."""
    from flinger.engine.operations import Status

    env = env_of(ctx)
    return _dry_run(env, "status", servers) if dry_run else _run(env, Status(), env.select_servers(servers))


@deploy_app.command("history")
def history(ctx: typer.Context, servers: ServersOpt = None) -> int:
    """Per server: the releases kept there, which one is current, when and by whom installed."""
    from flinger.engine.operations import History

    env = env_of(ctx)
    return _run(env, History(), env.select_servers(servers))


@deploy_app.command("rollback")
def rollback(
    ctx: typer.Context,
    servers: ServersOpt = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="the fleet release to go back to (default: the last completed one before)"),
    ] = None,
    lock_wait: LockWait = 0.0,
    batch: Annotated[
        str | None, typer.Option("--batch", help="servers per batch, N or P% (default: a whole wave at once)")
    ] = None,
    canary: Canary = 0,
    canary_wait: CanaryWait = 0.0,
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="failed servers (N or P%) the rollback goes on despite")
    ] = "0",
    restore_rotated: Annotated[
        bool,
        typer.Option("--restore-rotated-secrets", help="go back to a release from before a rotation of its secrets"),
    ] = False,
) -> int:
    """Switch every chosen server back to one earlier fleet release, in install's order.

    The default is the fleet's last completed release before the newest one running (never
    one that was rolled back or interrupted). Every chosen server is asked first; if they do
    not all keep it, or it would bring rotated-out secrets back, nothing changes (exit 2).
    In batches with --batch: when more servers fail than --max-failures allows, the rest are
    not started (each failed one is back on the release it ran)."""
    from flinger.engine.install import Install
    from flinger.engine.plan import plan_deploy
    from flinger.engine.rollback import FleetRollback
    from flinger.engine.strategy import BatchRollout
    from flinger.protocol.names import problem

    if to is not None and problem(to, "a release"):
        raise UsageError(f"--to: {problem(to, 'a release')}")
    policy = _rollout_policy(batch, max_failures, canary=canary, canary_wait=canary_wait, rollback=False)
    env = env_of(ctx)
    chosen = env.select_servers(servers)
    waves = Install(plan_deploy(env.topology(), env.manifest(), chosen)).waves(chosen)
    operation = FleetRollback(to, chosen, waves, restore_rotated=restore_rotated)
    return _run(env, operation, chosen, strategy=BatchRollout(policy), lock_wait=lock_wait)


@deploy_app.command("unlock")
def unlock(ctx: typer.Context, servers: ServersOpt = None) -> int:
    """Break a stale deploy lock (after checking its holder is gone)."""
    from flinger.engine.operations import Unlock

    env = env_of(ctx)
    return _run(env, Unlock(), env.select_servers(servers))
