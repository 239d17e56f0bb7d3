"""`deploy install --dry-run` on the sandbox is a diff: each server is asked what it runs, and
exactly the changed files of the changed server are named; nothing changes on any server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flinger_helpers import by_server, flinger_json, run_flinger

from flinger_sandbox import SandboxState
from tests.state_helpers import edit_overlay

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")


def _preview(sandbox: SandboxState) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--dry-run")
    assert code == 0, json.dumps(doc, indent=1)
    return doc, {name: r["details"]["diff"] for name, r in by_server(doc).items()}


def test_the_dry_run_names_exactly_the_changed_files_of_the_changed_server(
    installed_sandbox: SandboxState, ssh_run: Any
) -> None:
    state_dir = installed_sandbox.config_path.parent / ".flinger" / "sandbox"
    releases = {n: ssh_run(installed_sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES}
    doc, diffs = _preview(installed_sandbox)
    assert doc["dry_run"] is True and doc["unchanged"] == list(NODES), doc["unchanged"]
    assert all(d["change"] is False and d["overlay_compared"] for d in diffs.values()), diffs
    edit_overlay(state_dir, "node2", "files/quorum/extra.conf", b"a = 1\n")
    try:
        doc, diffs = _preview(installed_sandbox)
        assert doc["unchanged"] == ["node1", "node3"]
        assert diffs["node2"]["overlay"] == {"added": ["files/quorum/extra.conf"], "changed": [], "removed": []}
        assert diffs["node2"]["packages"] == [] and diffs["node2"]["restart"] == ["quorum"]
        text = run_flinger("-c", str(installed_sandbox.config_path), "deploy", "install", "--dry-run")
        assert text.returncode == 0 and "no change: node1, node3" in text.stderr, text.stderr
        assert "overlay added: files/quorum/extra.conf" in text.stdout, text.stdout
    finally:
        edit_overlay(state_dir, "node2", "files/quorum/extra.conf", None)
    assert {n: ssh_run(installed_sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES} == releases
