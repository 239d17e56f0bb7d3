"""Fixtures every tier of the tests uses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True, scope="session")
def _own_identity_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """flinger makes the operator an age identity on first use (~/.config/flinger): the
    tests' goes to a temporary XDG_CONFIG_HOME, never the developer's; FLINGER_IDENTITY unset."""
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "FLINGER_IDENTITY")}
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    os.environ.pop("FLINGER_IDENTITY", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
