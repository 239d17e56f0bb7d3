"""Assembling a release (flinger/remote/release.py): a copy that fails says why in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flinger.remote import release
from flinger.remote.switch import StepFailed


def test_an_overlay_copy_that_fails_names_the_first_cause_not_a_list_of_tuples(tmp_path: Path) -> None:
    source = tmp_path / "overlay"
    source.mkdir()
    (source / "config.toml").write_text("x = 1\n")
    for name in ("a.pipe", "b.pipe"):  # files copytree cannot copy: each one an error of shutil.Error
        os.mkfifo(source / name)
    with pytest.raises(StepFailed) as failed:
        release._copy_overlay(str(source), str(tmp_path / "release" / "overlay"), None)
    message = str(failed.value)
    assert failed.value.step == "release"
    assert message.startswith("copying the overlay into the release: ")
    assert "is a named pipe" in message and message.endswith("(and 1 more)")
    assert "[(" not in message and "\n" not in message
