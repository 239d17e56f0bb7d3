"""The `flinger` command line: the typer app and the one error boundary.

Commands are thin: they read options, call an action, and hand results to the UI. Every
FlingerError becomes a one-line message and its exit status here, and nowhere else.
"""

from __future__ import annotations

import sys

import typer

from flinger.cli import cmd_build, cmd_deploy, cmd_overlay, cmd_prereqs  # noqa: F401 - they register their commands
from flinger.cli.app import app
from flinger.errors import ExitStatus, FlingerError


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="flinger", standalone_mode=False)
    except FlingerError as exc:
        print(f"flinger: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_status)
    except (typer.Abort, KeyboardInterrupt):
        print("flinger: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.TyperException as exc:
        # typer's own command-line parser (a vendored click): bad options, missing arguments.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"flinger: error: {exc}", file=sys.stderr)
        return int(ExitStatus.USAGE)
    return int(result) if isinstance(result, int) else 0
