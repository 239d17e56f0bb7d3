"""Many servers' overlays are rendered by forked worker processes (flinger/overlay/render.py):
the files are the very bytes one process renders, and a template error is the same error,
for the first server in order that has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.errors import ConfigError
from flinger.manifest.model import OverlayFile
from flinger.overlay import render as overlay_render
from flinger.overlay.make import make_overlay
from tests.state_helpers import overlays
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes, write_template

REPO = Path(__file__).resolve().parents[2]
COUNT = overlay_render.PARALLEL_FROM + 6


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_forked_workers_render_the_same_bytes_as_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_template(tmp_path, "t/config.json.j2", (REPO / "smf" / "quorum" / "config.json.j2").read_text())
    topology = make_topology(tmp_path, nodes(COUNT))
    manifest = make_manifest(tmp_path, overlay=[OverlayFile("t/config.json.j2", "quorum/config.json", ("node",))])
    make_overlay(topology, manifest)  # in workers: more servers than PARALLEL_FROM
    forked = overlays(topology)
    assert len([rel for files in forked.values() for rel in files if rel.endswith("config.json")]) == COUNT
    monkeypatch.setattr(overlay_render, "PARALLEL_FROM", 10**9)  # the same state, rendered in one process
    again = make_overlay(topology, manifest)
    assert all(s.written == () for s in again.servers)  # not one byte differs
    assert overlays(topology) == forked


def test_a_template_error_in_a_worker_names_the_first_server_that_has_it(tmp_path: Path) -> None:
    text = "{% if server.name in ('node40', 'node70') %}{{ server.nope }}{% endif %}ok\n"
    write_template(tmp_path, "t/x.j2", text)
    topology = make_topology(tmp_path, nodes(COUNT))
    manifest = make_manifest(tmp_path, overlay=[OverlayFile("t/x.j2", "x")])
    with pytest.raises(ConfigError) as caught:
        make_overlay(topology, manifest)
    assert "undefined variable 'server.nope'" in caught.value.message and "node40" in caught.value.message
    assert caught.value.file is not None and caught.value.file.endswith("t/x.j2") and caught.value.line == 1
    assert not topology.state_dir.exists()  # nothing written
