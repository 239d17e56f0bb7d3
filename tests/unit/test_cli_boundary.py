"""The one error boundary: --version, and an unexpected exception as one line (exit 1)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from flinger.cli import run

REPO = Path(__file__).resolve().parents[2]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_version() -> None:
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("flinger ") and len(out.split()) == 2


def test_an_unexpected_error_is_one_line_and_traceback_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(REPO / "examples" / "orion", tmp_path / "orion")
    config = str(tmp_path / "orion" / "deploy.toml")

    def broken(*_args: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("flinger.actions.check.run_check", broken)
    code, _, err = cli("-c", config, "check")
    assert code == 1
    assert err.strip().splitlines() == [
        "flinger: internal error: RuntimeError: boom; run again with --traceback to see where"
    ]
    code, _, err = cli("--traceback", "-c", config, "check")
    assert code == 1 and "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
