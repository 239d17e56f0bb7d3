"""Stale bits are never shipped silently: what `sync`, `build package` and `overlay` record of
what they were made from, and `deploy install` refusing (exit 2, before any host is
contacted, naming the command to run) when the source tree, the manifest's packages or the
overlay's inputs changed since, unless --allow-stale. Runs rsync --list-only locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.actions.provenance import packages_digest, record_build, record_sync, stale_steps, tree_fingerprint
from flinger.cli import run
from flinger.errors import ExitStatus
from flinger.manifest import load_manifest
from flinger.overlay.store import read_index
from flinger.topology import load_topology
from tests.unit.test_sealed_state import project


def _stale(config: Path) -> list[str]:
    topology = load_topology(config)
    index = read_index(topology.state_dir)
    return stale_steps(topology, load_manifest(topology.manifest_path), index.made_from if index else None)


def _synced_and_built(config: Path) -> None:
    topology = load_topology(config)
    record_sync(topology, tree_fingerprint(topology))
    record_build(topology, load_manifest(topology.manifest_path))


def test_a_source_change_after_the_build_is_stale_until_synced_and_built(tmp_path: Path) -> None:
    config = project(tmp_path / "p")
    src = tmp_path / "p" / "src"
    (src / "app.py").write_text("print('v1')\n")
    (src / ".gitignore").write_text("scratch/\n")
    assert _stale(config) == []  # nothing on record: nothing can be said
    _synced_and_built(config)
    assert _stale(config) == []
    (src / "scratch").mkdir()
    (src / "scratch" / "notes.txt").write_text("not synced: .gitignore keeps it out\n")
    assert _stale(config) == []
    (src / "app.py").write_text("print('v2')\n")
    assert _stale(config) == [
        "the source tree changed since the last `sync`: run `flinger sync` and `flinger build package`"
    ]
    topology = load_topology(config)
    record_sync(topology, tree_fingerprint(topology))  # synced, but the build failed (nothing recorded)
    assert _stale(config) == [
        "the tree was synced since the last successful `build package`: run `flinger build package`"
    ]
    record_build(topology, load_manifest(topology.manifest_path))
    assert _stale(config) == []


def test_a_changed_package_spec_is_stale_a_changed_service_is_not(tmp_path: Path) -> None:
    config = project(tmp_path / "p")
    _synced_and_built(config)
    manifest = tmp_path / "p" / "src" / "packaging" / "package-manifest.toml"
    text = manifest.read_text()
    before = packages_digest(load_manifest(manifest))
    manifest.write_text(text.replace('build = ["true"]', 'build = ["true", "true"]'))
    assert packages_digest(load_manifest(manifest)) != before
    assert any("manifest's packages changed" in s for s in _stale(config))
    manifest.write_text(text + '[packages.app.service]\ncommand = "/bin/true"\n')
    assert packages_digest(load_manifest(manifest)) == before  # how it runs is not what is built


def test_a_skipped_overlay_after_a_template_change_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path / "p")
    assert run(["-c", str(config), "overlay"]) == 0
    assert _stale(config) == []
    template = tmp_path / "p" / "src" / "t" / "app.conf.j2"
    template.write_text(template.read_text() + "extra = 1\n")
    capsys.readouterr()
    assert run(["-c", str(config), "deploy", "install"]) == ExitStatus.USAGE  # before any host is contacted
    err = capsys.readouterr().err
    assert "not installing stale bits" in err and "run `flinger overlay`" in err and "--allow-stale" in err
    assert len(err.strip().splitlines()) == 1
    assert run(["-c", str(config), "deploy", "install", "--dry-run", "--offline"]) == 0
    assert "stale: the overlay" in capsys.readouterr().err
    assert run(["-c", str(config), "overlay"]) == 0
    assert _stale(config) == []


def test_a_change_in_an_included_template_is_stale_too(tmp_path: Path) -> None:
    config = project(tmp_path / "p")
    templates = tmp_path / "p" / "src" / "t"
    (templates / "parts").mkdir()
    (templates / "parts" / "tail.j2").write_text("{% include 't/parts/deeper.j2' %}\n")
    (templates / "parts" / "deeper.j2").write_text("tail = 1\n")
    app = templates / "app.conf.j2"
    app.write_text(app.read_text() + "{% include 't/parts/tail.j2' %}\n")
    assert run(["-c", str(config), "overlay"]) == 0
    assert _stale(config) == []
    (templates / "parts" / "deeper.j2").write_text("tail = 2\n")  # two includes down
    assert any("run `flinger overlay`" in s for s in _stale(config)), _stale(config)
    assert run(["-c", str(config), "overlay"]) == 0
    assert _stale(config) == []
    # a name computed when rendering cannot be followed: every template counts
    (templates / "app.conf.j2").write_text("{% set part = 't/parts/' ~ 'deeper.j2' %}{% include part %}\n")
    assert run(["-c", str(config), "overlay"]) == 0
    (templates / "unrelated.j2").write_text("x\n")
    assert any("run `flinger overlay`" in s for s in _stale(config)), _stale(config)


def test_up_stops_before_anything_when_check_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(tmp_path / "p")
    template = tmp_path / "p" / "src" / "t" / "app.conf.j2"
    template.write_text("name = {{ server.nmae }}\n")
    assert run(["-c", str(config), "up"]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "app.conf.j2:1" in err and "server.nmae" in err
    assert not (tmp_path / "p" / ".flinger").exists()  # no sync, build, overlay or install began
