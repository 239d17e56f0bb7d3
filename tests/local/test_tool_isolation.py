"""The remote tool runs isolated from the server's Python setup (flinger/engine/remote.py
tool_line): a PYTHONPATH, a user site or a .pth file there cannot put code into it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flinger.engine.remote import tool_line
from flinger.zipapp import build_remote_zipapp
from tests.oldest_python import require_python39


@pytest.mark.parametrize("python", ["python3", "python3.9"])  # the oldest supported takes the flags too
def test_a_shadowing_module_on_pythonpath_does_not_reach_the_tool(tmp_path: Path, python: str) -> None:
    python = require_python39() if python == "python3.9" else python
    tool = tmp_path / "flinger-remote.pyz"
    build_remote_zipapp(tool)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "json.py").write_text("raise SystemExit('the shadowing module ran')\n")  # the tool imports json
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    plain = subprocess.run(
        [python, str(tool), "--help"], env=env, capture_output=True, text=True, cwd=shadow, check=False
    )
    assert "the shadowing module ran" in plain.stderr  # without the flags it would
    isolated = subprocess.run(
        ["sh", "-c", tool_line(python, str(tool), "--help")],
        env=env, capture_output=True, text=True, cwd=shadow, check=False,
    )  # fmt: skip
    assert "the shadowing module ran" not in isolated.stderr, isolated.stderr
    assert "usage: flinger-remote" in isolated.stdout + isolated.stderr
