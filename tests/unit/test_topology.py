"""deploy.toml validation: every bad input is a one-line error with file:line and key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flinger.errors import ConfigError
from flinger.topology import load_topology

GOOD = """\
source_dir = "/tmp"
[builder]
server = "build1"
source_dir = "$HOME/src"
[deployment]
servers = ["node1", "node2", "node3"]
install_dir = "/opt/q"
threshold = 2
[servers.build1]
addr = "127.0.0.1"
[servers.node1]
addr = "127.0.0.2"
port = 22
roles = ["seed"]
[servers.node2]
addr = "127.0.0.3"
[servers.node3]
addr = "127.0.0.4"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_good_topology_loads(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, GOOD))
    assert topo.builder.server == "build1"
    assert [s.name for s in topo.deployment_servers()] == ["node1", "node2", "node3"]
    assert topo.deployment.threshold == 2
    assert topo.servers["node1"].roles == ("seed",)
    assert topo.name == "deploy"


def test_threshold_defaults_to_majority(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, GOOD.replace("threshold = 2\n", "")))
    assert topo.deployment.threshold == 2


CASES = [
    # (replace this, with this, expected line, expected key, words in the message)
    ("port = 22", 'port = "22x"', 13, "servers.node1.port", "expected an integer"),
    ("port = 22", "port = 70000", 13, "servers.node1.port", "between 1 and 65535"),
    ("threshold = 2", "threshold = 4", 8, "deployment.threshold", "between 1 and"),
    ("threshold = 2", "threshold = 0", 8, "deployment.threshold", "between 1 and"),
    ("threshold = 2", "threshold = 2\nkeep_releases = 0", 9, "deployment.keep_releases", "between 1 and 100"),
    ("threshold = 2", 'threshold = 2\nkeep_releases = "3"', 9, "deployment.keep_releases", "expected an integer"),
    (
        'servers = ["node1", "node2", "node3"]',
        'servers = ["node1", "node9"]',
        6,
        "deployment.servers.1",
        'no server named "node9"',
    ),
    (
        'servers = ["node1", "node2", "node3"]',
        'servers = ["node1", "node1"]',
        6,
        "deployment.servers.1",
        "listed twice",
    ),
    ('server = "build1"', 'server = "bulid1"', 3, "builder.server", 'did you mean "build1"'),
    ('install_dir = "/opt/q"', 'install_dir = "opt/q"', 7, "deployment.install_dir", "absolute"),
    ('roles = ["seed"]', 'roles = ["seed", 3]', 14, "servers.node1.roles.1", "expected a string"),
    ("port = 22", "prot = 22", 13, "servers.node1.prot", 'did you mean "port"'),
    (
        '[servers.node3]\naddr = "127.0.0.4"',
        '[servers.node3]\nuser = "x"',
        17,
        "servers.node3",
        'missing required key "addr"',
    ),
]


@pytest.mark.parametrize(("old", "new", "line", "key", "words"), CASES)
def test_bad_input_names_file_line_and_key(tmp_path: Path, old: str, new: str, line: int, key: str, words: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    err = info.value
    assert err.file == str(path)
    assert err.line == line
    assert err.key == key
    assert words in err.message
    assert "\n" not in err.message


def test_duplicate_server_name_is_a_toml_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '[servers.node1]\naddr = "127.0.0.9"\n')
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.line is not None
    assert str(path) in info.value.message


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('addr = "127.0.0.3"', 'addr = "127.0.0.3'))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.line == 16
    assert "invalid TOML" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(tmp_path / "nope.toml")
    assert "file not found" in info.value.message


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
