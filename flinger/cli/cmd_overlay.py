"""`flinger overlay` and `flinger secret verify | combine | set | recipients`: per-server
secrets on the client, in the deployment's sealed state."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from flinger.cli.app import app, env_of
from flinger.errors import ExitStatus, UsageError

secret_app = typer.Typer(
    help="Check threshold shares, recover the deployment secret, set given secrets, show who can open the state.",
    no_args_is_help=True,
)
app.add_typer(secret_app, name="secret")


@app.command()
def overlay(
    ctx: typer.Context,
    rotate: Annotated[bool, typer.Option("--rotate", help="new secret, shares, CA and certificates")] = False,
    keep_secret: Annotated[
        bool, typer.Option("--keep-secret", help="also store the full secret on the client (0600)")
    ] = False,
) -> int:
    """Make each server's overlay: a threshold share, a key + certificate, rendered configs."""
    from flinger.overlay.make import make_overlay

    env = env_of(ctx)
    report = make_overlay(env.topology(), env.manifest(), rotate=rotate, keep_secret=keep_secret, state=env.state())
    for message in report.messages:
        env.ui.note(message)
    if env.json:
        env.ui.emit_json({"command": "overlay", "exit_status": 0, **report.to_json()})
        return 0
    rows = [
        (
            s.server,
            "-" if s.share_index is None else str(s.share_index),
            s.cert_sha256[:16],
            str(len(s.files)),
            str(len(s.written)) if s.written else "unchanged",
        )
        for s in report.servers
    ]
    env.ui.table(f"overlay {report.overlay_dir}", ("server", "share", "cert sha256", "files", "written"), rows)
    if env.verbose:
        for s in report.servers:
            for f in s.files:
                env.ui.debug(f"{s.server}: {f}")
    threshold = f"threshold {report.threshold} of {report.total}" if report.threshold else "no shares"
    env.ui.success(
        f"overlay ready for {len(report.servers)} servers ({threshold}; secret {report.secret_fingerprint or '-'}; "
        f"generation {report.generation})"
    )
    return 0


@secret_app.command("verify")
def verify(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", help="only this server's share")] = None,
) -> int:
    """Check every server's share against the public verifier (commitments)."""
    from flinger.actions.secret_cmds import verify_shares

    env = env_of(ctx)
    checks = verify_shares(env.topology(), env.state(), server)
    ok = all(c.valid for c in checks)
    if env.json:
        env.ui.emit_json(
            {"command": "secret verify", "exit_status": 0 if ok else 1, "shares": [c.to_json() for c in checks]}
        )
    else:
        env.ui.table(
            "shares",
            ("server", "index", "valid", "file", "reason"),
            [(c.server, c.index or "-", "yes" if c.valid else "NO", c.path, c.reason or "") for c in checks],
        )
    return int(ExitStatus.OK if ok else ExitStatus.FAILED)


@secret_app.command("combine")
def combine(
    ctx: typer.Context,
    shares: Annotated[list[Path] | None, typer.Argument(help="share files (at least threshold of them)")] = None,
    servers: Annotated[
        str | None, typer.Option("--servers", help="use these servers' shares from the sealed state (a,b,...)")
    ] = None,
    reveal: Annotated[bool, typer.Option("--reveal", help="print the secret itself, not only its fingerprint")] = False,
) -> int:
    """Recover the deployment secret from threshold valid shares; prints its fingerprint."""
    from flinger.actions.secret_cmds import combine_share_files, combine_state_shares

    env = env_of(ctx)
    if shares and servers:
        raise UsageError("give share files or --servers, not both")
    if servers:
        names = [s.name for s in env.select_servers(servers)]
        result = combine_state_shares(env.state(), names, reveal=reveal)
    else:
        result = combine_share_files(list(shares or []), reveal=reveal)
    if env.json:
        env.ui.emit_json({"command": "secret combine", "exit_status": 0, **result.to_json()})
        return 0
    env.ui.success(f"recovered the {result.deployment} secret from {len(result.used)} shares: {result.fingerprint}")
    if result.secret is not None:
        env.ui.out.print(result.secret.reveal(), markup=False, highlight=False)
    return 0


@secret_app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a secret the manifest declares with given = true")],
    server: Annotated[str | None, typer.Option("--server", help="this server's value only (scope = server)")] = None,
) -> int:
    """Set a secret issued elsewhere (a password, a token): its value is read from stdin
    (asked for without echo on a terminal) and sealed into the state; never an argument."""
    from flinger.actions.secret_cmds import set_secret

    env = env_of(ctx)
    manifest, topology = env.manifest(), env.topology()
    set_secret(manifest, topology, None, name, "", server)  # a name or server that cannot be set: said before asking
    value = _read_value(name)
    message = set_secret(manifest, topology, env.state(), name, value, server)
    if env.json:
        env.ui.emit_json({"command": "secret set", "exit_status": 0, "secret": name, "server": server})
    else:
        env.ui.success(message)
    return 0


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name} (not echoed): ")
    else:
        value = sys.stdin.read(65537)
        if value.endswith("\n"):
            value = value[:-1].removesuffix("\r")
    return value


@secret_app.command("recipients")
def recipients(ctx: typer.Context) -> int:
    """Who the deployment's state is encrypted to; re-encrypts it first when deploy.toml's
    [state] recipients changed (every command that opens the state does that too)."""
    env = env_of(ctx)
    described = env.state().describe()
    if env.json:
        env.ui.emit_json({"command": "secret recipients", "exit_status": 0, **described})
        return 0
    env.ui.table(
        f"state {described['state']} (serial {described['serial']})",
        ("recipient",),
        [(r,) for r in described["recipients"]],
    )
    return 0
