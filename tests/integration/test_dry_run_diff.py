"""`deploy install --dry-run` on the sandbox is a diff: each server is asked what it runs, and
exactly the changed files of the changed server are named; nothing changes on any server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flinger_helpers import by_server, flinger_json, run_flinger

from flinger_sandbox import SandboxState
from tests.state_helpers import edit_overlay, overlay_of

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
        files = {k: diffs["node2"]["overlay"][k] for k in ("added", "changed", "removed")}
        assert files == {"added": ["files/quorum/extra.conf"], "changed": [], "removed": []}, files
        # no template of the manifest makes it: whatever is in it is not shown
        assert diffs["node2"]["overlay"]["diffs"] == {}
        assert diffs["node2"]["overlay"]["not_shown"] == {"files/quorum/extra.conf": "it may hold a secret"}
        assert diffs["node2"]["packages"] == [] and diffs["node2"]["restart"] == ["quorum"]
        text = run_flinger("-c", str(installed_sandbox.config_path), "deploy", "install", "--dry-run")
        assert text.returncode == 0 and "no change: node1, node3" in text.stderr, text.stderr
        assert "overlay added: files/quorum/extra.conf" in text.stdout, text.stdout
    finally:
        edit_overlay(state_dir, "node2", "files/quorum/extra.conf", None)
    assert {n: ssh_run(installed_sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES} == releases


def test_the_dry_run_shows_a_file_without_secrets_as_a_diff_and_a_secret_one_by_name(
    installed_sandbox: SandboxState, ssh_run: Any
) -> None:
    """node2's config (rendered from a template that reads no secret) and its TLS key change
    in the stored overlay: the config is shown as a unified diff of the running text, the key
    only by name (its text in neither version anywhere in the output)."""
    state_dir = installed_sandbox.config_path.parent / ".flinger" / "sandbox"
    stored = overlay_of(state_dir, "node2")
    config, key = stored["files/quorum/config.json"], stored["tls/key.pem"]
    changed = config.replace(b'"threshold": 2', b'"threshold": 3', 1)
    assert changed != config
    other_key = overlay_of(state_dir, "node1")["tls/key.pem"]
    edit_overlay(state_dir, "node2", "files/quorum/config.json", changed)
    edit_overlay(state_dir, "node2", "tls/key.pem", other_key)
    try:
        doc, diffs = _preview(installed_sandbox)
        assert doc["unchanged"] == ["node1", "node3"], doc["unchanged"]
        overlay = diffs["node2"]["overlay"]
        assert overlay["changed"] == ["files/quorum/config.json", "tls/key.pem"], overlay
        assert overlay["not_shown"] == {"tls/key.pem": "it may hold a secret"}, overlay["not_shown"]
        diff = overlay["diffs"]["files/quorum/config.json"].splitlines()
        assert diff[:2] == [
            "--- node2:files/quorum/config.json (running)",
            "+++ node2:files/quorum/config.json (install)",
        ], diff
        assert [ln for ln in diff[2:] if ln[:1] in "+-"] == ['-  "threshold": 2,', '+  "threshold": 3,'], diff
        text = run_flinger("-c", str(installed_sandbox.config_path), "deploy", "install", "--dry-run")
        assert text.returncode == 0, text.stderr
        assert "node2: files/quorum/config.json:" in text.stdout and '  +  "threshold": 3,' in text.stdout
        assert "node2: tls/key.pem: not shown: it may hold a secret" in text.stdout, text.stdout
        shown = text.stdout + text.stderr + json.dumps(doc)
        for secret in (key, other_key):
            lines = secret.decode().splitlines()[1:-1]  # the PEM's base64 lines
            assert lines and not any(line in shown for line in lines)
    finally:
        edit_overlay(state_dir, "node2", "files/quorum/config.json", config)
        edit_overlay(state_dir, "node2", "tls/key.pem", key)
    assert _preview(installed_sandbox)[0]["unchanged"] == list(NODES)
