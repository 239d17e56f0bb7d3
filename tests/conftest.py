"""Fixtures every tier of the tests uses."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example_copy(tmp_path: Path) -> Callable[[str], Path]:
    """Copy examples/<name> to tmp_path (without any local state) and return its deploy.toml."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(".flinger", "out", "__pycache__"))
        return dest / "deploy.toml"

    return copy
