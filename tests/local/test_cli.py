"""The real command line in a process of its own: exit statuses, one-line errors, no
traceback, the shell completion, and the packaging/ dir that must not shadow the library."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flinger.topology import load_topology
from tests.unit.test_artifacts_config import REGISTRY
from tests.unit.test_artifacts_config import write as write_with_artifacts
from tests.unit.test_manifest import MANIFEST, project
from tests.unit.test_topology import GOOD, write


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flinger", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("port = 22", 'port = "22x"'),
        ("threshold = 2", "threshold = 9"),
        ('server = "build1"', 'server = "nope"'),
        ('addr = "127.0.0.3"', 'addr = "127.0.0.3'),
    ],
)
def test_cli_bad_input_exit_2_one_line_no_traceback(tmp_path: Path, old: str, new: str) -> None:
    path = write(tmp_path, GOOD.replace(old, new))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("-c", str(path), "check")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"{path}:" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_missing_config(tmp_path: Path) -> None:
    proc = run_cli("-c", str(tmp_path / "missing.toml"), "check")
    assert proc.returncode == 2
    assert "missing.toml: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_example_deployment_passes_check() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = run_cli("-c", str(root / "examples" / "deployment-example.toml"), "check")
    assert proc.returncode == 0, proc.stderr
    assert "node1" in proc.stdout and "quorum" in proc.stdout


def test_packaging_dir_does_not_shadow_the_library() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", "import packaging, sys; print(packaging.__file__)"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout or "dist-packages" in proc.stdout
    assert not (root / "packaging" / "__init__.py").exists()


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flinger", "-c", str(tmp_path / "deploy.toml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_path_is_an_error_naming_the_package(tmp_path: Path) -> None:
    project(tmp_path, MANIFEST.replace("src/app.py", "src/missing.py"))
    proc = cli(tmp_path, "check")
    assert proc.returncode == 2
    assert f"{tmp_path / 'manifest.toml'}:6: packages.app.source.paths.0.from" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_role_nobody_has_is_a_warning(tmp_path: Path) -> None:
    project(
        tmp_path,
        MANIFEST.replace('roles = ["node"]\n[packages.app.source]', 'roles = ["ghost"]\n[packages.app.source]'),
    )
    proc = cli(tmp_path, "check")
    assert proc.returncode == 0, proc.stderr
    assert 'no deployment server has role "ghost"' in proc.stderr


def test_unknown_source_type_via_cli(tmp_path: Path) -> None:
    project(tmp_path, MANIFEST.replace('type = "prebuilt"', 'type = "docker"'))
    proc = cli(tmp_path, "check")
    assert proc.returncode == 2
    assert "packages.blob.source.type" in proc.stderr and ":11:" in proc.stderr


def test_flinger_check_refuses_a_bad_table_with_exit_2_and_one_line(tmp_path: Path) -> None:
    path = write_with_artifacts(tmp_path, REGISTRY.replace("https://", "http://"))
    done = subprocess.run(
        [sys.executable, "-m", "flinger", "-c", str(path), "check"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "artifacts.url" in lines[0], done.stderr


def test_deploy_install_refuses_a_readable_password_file_before_any_server(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "examples" / "deployment-example.toml").read_text()
    text = text.replace('source_dir = ".."', f'source_dir = "{repo}"', 1)
    text = text.replace('store = "builder"', REGISTRY.replace("[artifacts]\n", "").rstrip("\n"), 1)
    config = tmp_path / "deploy.toml"
    config.write_text(text)
    (tmp_path / "registry.pw").write_text("hunter2-registry\n")
    (tmp_path / "registry.pw").chmod(0o640)
    done = subprocess.run(
        [sys.executable, "-m", "flinger", "-c", str(config), "deploy", "install"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("flinger: error:")]
    assert len(errors) == 1 and "artifacts.password_file" in errors[0] and "chmod 600" in errors[0], done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert not (tmp_path / ".flinger" / "quorum" / "logs").exists()  # no run started


def test_shell_completion_completes_commands() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "_FLINGER_COMPLETE": "complete_bash", "COMP_WORDS": "flinger deploy in", "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-m", "flinger"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["install"], done.stderr


def _complete(program: str, words: str, cwd: Path | None = None) -> list[str]:
    import os

    var = "_FLINGER_SANDBOX_COMPLETE" if program == "flinger_sandbox" else "_FLINGER_COMPLETE"
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {**os.environ, var: "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
    env.pop("FLINGER_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", program], env=env, capture_output=True, text=True, check=False, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_offers_server_names_and_example_names(example_copy: Callable[[str], Path]) -> None:
    config = example_copy("orion")
    names = sorted(load_topology(config).servers)
    assert _complete("flinger", f"flinger -c {config} deploy install --servers ") == names
    first = names[0]
    assert _complete("flinger", f"flinger deploy status --servers {first},", cwd=config.parent) == [
        f"{first},{n}" for n in names[1:]
    ]
    assert _complete("flinger_sandbox", "flinger-sandbox demo --example gi") == ["gitmirror"]
