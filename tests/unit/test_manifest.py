"""Package manifest validation: errors name the manifest file, line and package; exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.errors import ConfigError
from flinger.manifest import load_manifest

MANIFEST = """\
[packages.app]
service_name = "app"
roles = ["node"]
[packages.app.source]
type = "local"
paths = [{ from = "src/app.py", to = "bin/app.py" }]

[packages.blob]
roles = ["*"]
[packages.blob.source]
type = "prebuilt"
url = "https://example.net/blob.tar.gz"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[packages.all]
roles = ["node"]
[packages.all.source]
type = "composite"
packages = ["app", "blob"]
"""

TOPOLOGY = """\
source_dir = "."
manifest = "manifest.toml"
[builder]
server = "b"
source_dir = "/src"
[deployment]
servers = ["n1"]
install_dir = "/opt/x"
[servers.b]
addr = "127.0.0.1"
[servers.n1]
addr = "127.0.0.2"
roles = ["node"]
"""


def project(tmp_path: Path, manifest: str) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "app.py").write_text("print('hi')\n")
    (tmp_path / "manifest.toml").write_text(manifest)
    (tmp_path / "deploy.toml").write_text(TOPOLOGY)
    return tmp_path / "manifest.toml"


def test_good_manifest(tmp_path: Path) -> None:
    m = load_manifest(project(tmp_path, MANIFEST))
    assert set(m.packages) == {"app", "blob", "all"}
    assert m.packages["all"].source.packages == ("app", "blob")
    assert m.packages["app"].line == 1


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "words"),
    [
        ('type = "local"', 'type = "locl"', 5, "packages.app.source.type", 'did you mean "local"'),
        (
            'sha256 = "0000000000000000000000000000000000000000000000000000000000000000"',
            'sha256 = "abc"',
            13,
            "packages.blob.source.sha256",
            "64 lowercase hex",
        ),
        (
            'packages = ["app", "blob"]',
            'packages = ["app", "nope"]',
            19,
            "packages.all.source.packages.1",
            'no package named "nope"',
        ),
        ('service_name = "app"', 'servce_name = "app"', 2, "packages.app.servce_name", 'did you mean "service_name"'),
    ],
)
def test_bad_manifest(tmp_path: Path, old: str, new: str, line: int, key: str, words: str) -> None:
    path = project(tmp_path, MANIFEST.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), line, key)
    assert words in info.value.message


def test_composite_cycle(tmp_path: Path) -> None:
    text = (
        MANIFEST
        + '[packages.loop]\nroles = ["node"]\n[packages.loop.source]\ntype = "composite"\npackages = ["loop2"]\n'
        '[packages.loop2]\nroles = ["node"]\n[packages.loop2.source]\ntype = "composite"\npackages = ["loop"]\n'
    )
    path = project(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert "composite cycle: loop -> loop2 -> loop" in info.value.message
    assert info.value.line == 24
