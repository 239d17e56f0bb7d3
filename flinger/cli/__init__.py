"""The `flinger` command line: the typer app and the one error boundary.

Commands are thin: they read options, call an action, and hand results to the UI. Every
FlingerError becomes a one-line message and its exit status here, and nowhere else.
"""

from __future__ import annotations

import signal
import sys
import traceback

import typer

from flinger.cli import cmd_build, cmd_deploy, cmd_logs, cmd_overlay, cmd_prereqs, cmd_up  # noqa: F401 - they register their commands
from flinger.cli.app import app
from flinger.errors import ConfigErrors, ExitStatus, FlingerError


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    status = run(argv)
    if status == ExitStatus.INTERRUPTED:
        # The summary is out: one more Ctrl-C while the interpreter shuts down (when Python
        # puts back the default handler) must not turn exit 130 into death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)


def run(argv: list[str] | None = None) -> int:
    """Run the `flinger` command line; its exit status."""
    return run_app(app, "flinger", sys.argv[1:] if argv is None else argv)


def run_app(typer_app: typer.Typer, prog: str, args: list[str]) -> int:
    """Run a typer app inside the one error boundary (flinger-sandbox uses it too)."""
    command = typer.main.get_command(typer_app)
    try:
        result = command.main(args=args, prog_name=prog, standalone_mode=False)
    except ConfigErrors as exc:
        for line in exc.lines():
            print(f"{prog}: error: {line}", file=sys.stderr)
        return int(exc.exit_status)
    except FlingerError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return int(exc.exit_status)
    except (typer.Abort, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.TyperException as exc:
        # typer's own command-line parser (a vendored click): bad options, missing arguments.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return int(ExitStatus.USAGE)
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected error becomes a message
        if "--traceback" in args:
            traceback.print_exc()
        else:
            # One line: the exception's text may hold values of the input; never its locals.
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            print(
                f"{prog}: internal error: {type(exc).__name__}: {detail}; run again with --traceback to see where",
                file=sys.stderr,
            )
        return int(ExitStatus.FAILED)
    return int(result) if isinstance(result, int) else 0
