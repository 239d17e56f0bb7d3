"""The remote tool zipapp: deterministic, self-contained, standard library only, Python 3.9."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from flinger.zipapp import build_remote_zipapp
from tests.unit.oldest_python import require_python39

REPO = Path(__file__).resolve().parents[2]
REMOTE = REPO / "flinger" / "remote"


def interpreters() -> list[str]:
    """This interpreter, and a python3.9 (the oldest we support): "python3.9" stands for it
    until a test asks (a missing one then fails in CI, and is skipped elsewhere)."""
    return [sys.executable, "python3.9"]


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("tool") / "flinger-remote.pyz"
    digest = build_remote_zipapp(dest)
    assert digest == hashlib.sha256(dest.read_bytes()).hexdigest()
    return dest


def test_zipapp_is_deterministic(pyz: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pyz"
    build_remote_zipapp(again)
    assert again.read_bytes() == pyz.read_bytes()
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o777 == 0o755


def test_zipapp_holds_only_the_remote_tool(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    assert names == sorted(names)
    assert "__main__.py" in names and "flinger/__init__.py" in names
    outside = [
        n
        for n in names
        if n not in ("__main__.py", "flinger/__init__.py")
        and not (n.startswith("flinger/remote/") and n.endswith(".py") and n.count("/") == 2)
    ]
    assert outside == []
    assert {f"flinger/remote/{p.name}" for p in REMOTE.glob("*.py")} <= set(names)


@pytest.mark.parametrize("python", interpreters())
def test_zipapp_builds_and_unpacks_without_site_packages(pyz: Path, tmp_path: Path, python: str) -> None:
    python = require_python39() if python == "python3.9" else python
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    plan = {
        "source_dir": str(src),
        "artifacts_dir": str(tmp_path / "out"),
        "packages": [
            {
                "name": "hello",
                "build": ["echo built > made.txt"],
                "paths": [{"from": "hello.txt", "to": "share/hello.txt"}, {"from": "made.txt", "to": "made.txt"}],
            }
        ],
    }
    done = subprocess.run(
        [python, "-I", "-S", str(pyz), "build"], input=json.dumps(plan), capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"] is True and result["built"] == ["hello"]
    package = tmp_path / "out" / "packages" / "hello.tar.gz"
    done = subprocess.run(
        [python, "-I", "-S", str(pyz), "unpack", str(package), str(tmp_path / "unpacked")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "unpacked" / "share" / "hello.txt").read_text() == "hello\n"
    assert (tmp_path / "unpacked" / "made.txt").read_text() == "built\n"

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        tar.addfile(info, io.BytesIO(b""))
    done = subprocess.run(
        [python, "-I", "-S", str(pyz), "unpack", str(evil), str(tmp_path / "evil")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and not (tmp_path / "evil").exists()
    assert not (tmp_path / "escape").exists()


def test_unknown_command_is_a_usage_error(pyz: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "frobnicate"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2 and "usage" in done.stderr


@pytest.mark.parametrize("module", sorted(p.name for p in REMOTE.glob("*.py")))
def test_remote_modules_import_only_the_standard_library(module: str) -> None:
    source = (REMOTE / module).read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # also: no syntax newer than 3.9
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
    foreign = {
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names
        and name != "flinger"
        and not name.startswith("flinger.remote")
    }
    assert foreign == set()


@pytest.mark.parametrize("python", interpreters())
def test_every_remote_module_imports_from_the_zipapp(pyz: Path, tmp_path: Path, python: str) -> None:
    python = require_python39() if python == "python3.9" else python
    modules = sorted(p.stem for p in REMOTE.glob("*.py") if p.stem != "__main__")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib\n"
        "for m in sys.argv[2:]:\n"
        "    mod = importlib.import_module('flinger.remote.' + m)\n"
        "    assert mod.__file__.startswith(sys.argv[1]), mod.__file__\n"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", code, str(pyz), *modules], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
