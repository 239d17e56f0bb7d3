"""The tool's check (flinger/engine/remote.py `tool_check`), as the server's shell runs it with
the connection's start: deploy.toml's paths, $HOME left to that shell, every name quoted."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from flinger.engine.remote import ZIPAPP_NAME, shell_path, tool_check


def _sh(command: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True)


def test_the_check_makes_the_dirs_private_under_home_and_says_the_tools_digest(tmp_path: Path) -> None:
    home = tmp_path / "a home; with $(odd) 'names'"
    home.mkdir()
    staging = "~/st ag'ing"
    dirs = (f"{staging}/runs", f"{staging}/runs/home_app", f"{staging}/runs/home_app/20261203T000000.000Z-1")
    done = _sh(tool_check(staging, dirs), home)
    assert done.returncode == 0 and done.stdout == "", done.stderr  # no tool there yet
    for d in ("st ag'ing", *(d[2:] for d in dirs)):
        assert (home / d).is_dir() and (home / d).stat().st_mode & 0o777 == 0o700, d
    (home / "st ag'ing" / ZIPAPP_NAME).write_bytes(b"tool")
    again = _sh(tool_check("$HOME/st ag'ing", dirs), home)  # the same dirs again: nothing to make
    assert again.returncode == 0 and again.stdout.split()[0] == hashlib.sha256(b"tool").hexdigest()


def test_a_path_reaches_the_shell_as_one_word_whatever_it_holds(tmp_path: Path) -> None:
    for path, expected in (
        ("~", str(tmp_path)),
        ("$HOME", str(tmp_path)),
        ("~/x y", f"{tmp_path}/x y"),
        ("/abs/$(touch pwned)/`id`", "/abs/$(touch pwned)/`id`"),
        ("$HOME/'q'", f"{tmp_path}/'q'"),
    ):
        said = _sh(f"printf %s {shell_path(path)}", tmp_path)
        assert said.stdout == expected, path
    assert not (tmp_path / "pwned").exists()


def test_a_check_that_cannot_make_its_dirs_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = _sh(tool_check("~/file/st"), tmp_path)
    assert done.returncode != 0 and done.stdout == ""  # the client then runs it on its own, for its error
