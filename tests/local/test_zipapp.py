"""The remote tool zipapp: deterministic, self-contained, standard library only, Python 3.9."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from flinger.protocol.plans import BuildPlan, InstallPlan, PackageRef, PackageSource, PathMap
from flinger.zipapp import build_remote_zipapp
from tests.oldest_python import require_python39
from tests.remote_helpers import run_remote

REPO = Path(__file__).resolve().parents[2]
REMOTE = REPO / "flinger" / "remote"
PROTOCOL = REPO / "flinger" / "protocol"
SHIPPED = sorted([*REMOTE.glob("*.py"), *PROTOCOL.glob("*.py")])  # what the tool carries


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
    sources = [n for n in names if n.endswith(".py")]
    outside = [
        n
        for n in sources
        if n not in ("__main__.py", "flinger/__init__.py")
        and not (n.startswith(("flinger/remote/", "flinger/protocol/")) and n.count("/") == 2)
    ]
    assert outside == []
    assert {f"flinger/{p.parent.name}/{p.name}" for p in SHIPPED} <= set(names)
    # and nothing else but each module's bytecode beside it
    assert sorted(n for n in names if n not in sources) == sorted(n + "c" for n in sources)


@pytest.mark.parametrize("python", interpreters())
def test_the_bytecode_inside_is_used_by_the_same_python_and_ignored_by_another(pyz: Path, python: str) -> None:
    """This Python loads the modules from the bytecode beside them (no compiling at each
    start); python3.9 refuses it (another magic number) and runs the sources."""
    python = require_python39() if python == "python3.9" else python
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import flinger.remote.install as m; print(m.__file__)"
    out = subprocess.run([python, "-I", "-S", "-c", probe, str(pyz)], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    assert loaded.startswith(str(pyz)), loaded
    assert loaded.endswith(".pyc" if python == sys.executable else "install.py"), loaded


def test_a_kept_zipapp_is_rebuilt_when_it_was_changed_or_its_sources_were(pyz: Path, tmp_path: Path) -> None:
    dest = tmp_path / "kept.pyz"
    digest = build_remote_zipapp(dest)
    made = dest.stat().st_mtime_ns
    assert build_remote_zipapp(dest) == digest and dest.stat().st_mtime_ns == made  # the same: kept
    dest.write_bytes(dest.read_bytes() + b"tampered")
    assert build_remote_zipapp(dest) == digest and dest.read_bytes() == pyz.read_bytes()  # rewritten
    record = dest.with_name(dest.name + ".made")
    record.write_text("0" * 64 + " " + digest + "\n")  # as if made from other sources
    assert build_remote_zipapp(dest) == digest and record.read_text().split()[0] != "0" * 64


@pytest.mark.parametrize("python", interpreters())
def test_zipapp_builds_and_installs_without_site_packages(pyz: Path, tmp_path: Path, python: str) -> None:
    """The tool alone (no site-packages) builds a package and installs it, as on a builder and
    a server: the lock, what it lacks, the unpack, the release, `current`."""
    python = require_python39() if python == "python3.9" else python
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    plan = BuildPlan(
        source_dir=str(src),
        artifacts_dir=str(tmp_path / "out"),
        packages=[
            PackageSource(
                "hello",
                build=["echo built > made.txt"],
                paths=[PathMap("hello.txt", "share/hello.txt"), PathMap("made.txt", "made.txt")],
            )
        ],
    )
    tool = ["-I", "-S", str(pyz)]
    answer = run_remote("build", plan, python=python, tool=tool)
    assert answer.status == 0, answer.stdout + answer.stderr
    assert answer.result.ok is True and answer.result.packages["hello"].state == "built"
    package = tmp_path / "out" / "packages" / "hello.tar.gz"

    run_dir = tmp_path / "staging" / "runs" / "app" / "r1"
    install_dir = tmp_path / "app"
    ref = PackageRef("hello", answer.result.packages["hello"].sha256, "packages/hello.tar.gz")
    install = InstallPlan(str(install_dir), str(run_dir), "r1", "test r1", packages=[ref], acquire=True,
                          release_lock=True)  # fmt: skip
    first = run_remote("install", install, python=python, tool=tool)
    assert first.status == 0 and first.result.need == ["hello"], first.stdout + first.stderr
    (run_dir / "packages").mkdir(parents=True)
    shutil.copy(package, run_dir / "packages")
    done = run_remote("install", replace(install, acquire=False), python=python, tool=tool)
    assert done.status == 0 and done.result.changed and done.result.release == "r1", done.stdout + done.stderr
    assert (install_dir / "current" / "hello" / "share" / "hello.txt").read_text() == "hello\n"
    assert (install_dir / "current" / "hello" / "made.txt").read_text() == "built\n"


def test_unknown_command_is_a_usage_error(pyz: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "frobnicate"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2 and "usage" in done.stderr


@pytest.mark.parametrize("module", [f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_remote_modules_import_only_the_standard_library(module: str) -> None:
    source = (REPO / "flinger" / module).read_text()
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
        and not name.startswith(("flinger.remote", "flinger.protocol"))
    }
    assert foreign == set()


@pytest.mark.parametrize("python", interpreters())
def test_every_remote_module_imports_from_the_zipapp(pyz: Path, tmp_path: Path, python: str) -> None:
    python = require_python39() if python == "python3.9" else python
    modules = sorted(f"{p.parent.name}.{p.stem}" for p in SHIPPED if p.stem != "__main__")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib\n"
        "for m in sys.argv[2:]:\n"
        "    mod = importlib.import_module('flinger.' + m)\n"
        "    assert mod.__file__.startswith(sys.argv[1]), mod.__file__\n"
    )
    done = subprocess.run(
        [python, "-I", "-S", "-c", code, str(pyz), *modules], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
