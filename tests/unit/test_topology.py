"""deploy.toml validation: every bad input is a one-line error with file:line and key, exit 2."""

from __future__ import annotations

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
