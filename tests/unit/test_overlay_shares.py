"""`verify_shares` and `combine_share_files` on the shares `make_overlay` wrote
(flinger/actions/secret_cmds.py)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from flinger.actions.secret_cmds import combine_share_files, verify_shares
from flinger.errors import FlingerError, UsageError
from flinger.overlay import planners as overlay_mod
from flinger.overlay.make import make_overlay
from flinger.remote import shamir
from flinger.topology.model import Topology
from tests.state_helpers import edit_overlay, state_of, view
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes

KNOWN = int("5e" * 32, 16)


def _deploy(tmp_path: Path, count: int = 5, name: str = "demo") -> Topology:
    topology = make_topology(tmp_path / name, nodes(count), name=name)
    make_overlay(topology, make_manifest(tmp_path / name))
    return topology


def _share_path(topology: Topology, server: str) -> Path:
    """The server's share as a plain file (with the verifier beside it), opened from the state."""
    return view(topology) / "overlay" / server / "share.json"


def _tamper_one_byte(path: Path) -> None:
    doc = json.loads(path.read_text())
    value = bytearray(int(doc["share"], 16).to_bytes(256, "big"))
    value[-7] ^= 0x40
    doc["share"] = format(int.from_bytes(value, "big") % shamir.Q, "x")
    path.write_text(json.dumps(doc))


def test_verify_all_shares(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    checks = verify_shares(topology, state_of(topology))
    assert [c.server for c in checks] == [f"node{i}" for i in range(1, 6)]
    assert all(c.valid for c in checks) and [c.index for c in checks] == [1, 2, 3, 4, 5]
    assert [c.server for c in verify_shares(topology, state_of(topology), "node3")] == ["node3"]
    with pytest.raises(UsageError):
        verify_shares(topology, state_of(topology), "node9")


def test_verify_reports_a_tampered_or_missing_share(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    tampered = _share_path(topology, "node2")
    _tamper_one_byte(tampered)
    edit_overlay(topology, "node2", "share.json", tampered.read_bytes())
    edit_overlay(topology, "node4", "share.json", None)
    checks = {c.server: c for c in verify_shares(topology, state_of(topology))}
    assert not checks["node2"].valid and "commitments" in (checks["node2"].reason or "")
    assert not checks["node4"].valid and "no share" in (checks["node4"].reason or "")
    assert checks["node1"].valid and checks["node3"].valid


def test_verify_notices_a_share_from_an_older_split(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    old = _share_path(topology, "node1").read_bytes()
    make_overlay(topology, make_manifest(tmp_path / "demo"), rotate=True)
    edit_overlay(topology, "node1", "share.json", old)
    checks = {c.server: c for c in verify_shares(topology, state_of(topology))}
    assert not checks["node1"].valid and "not the verifier this share was made with" in (checks["node1"].reason or "")


def test_single_server_has_nothing_to_verify(tmp_path: Path) -> None:
    topology = _deploy(tmp_path, count=1)
    with pytest.raises(FlingerError, match="single server"):
        verify_shares(topology, state_of(topology))


def test_combine_threshold_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlay_mod, "_new_deployment_secret", lambda: KNOWN)
    topology = _deploy(tmp_path)
    files = [_share_path(topology, n) for n in ("node5", "node2", "node4")]
    result = combine_share_files(files, reveal=False)
    assert result.fingerprint == shamir.fingerprint(KNOWN)
    assert result.secret is None and "secret" not in result.to_json()
    assert [i for _, i in result.used] == [5, 2, 4]
    revealed = combine_share_files(files, reveal=True)
    assert revealed.secret is not None and revealed.secret.reveal() == format(KNOWN, "064x")
    assert revealed.to_json()["secret"] == format(KNOWN, "064x")


def test_combine_needs_threshold_shares(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    with pytest.raises(FlingerError, match="need 3 valid shares"):
        combine_share_files([_share_path(topology, "node1"), _share_path(topology, "node2")], reveal=False)


def test_combine_names_the_tampered_file(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    files = [_share_path(topology, n) for n in ("node1", "node2", "node3")]
    _tamper_one_byte(files[1])
    value = json.loads(files[1].read_text())["share"]
    with pytest.raises(FlingerError) as info:
        combine_share_files(files, reveal=True)
    assert str(files[1]) in str(info.value) and value not in str(info.value)


def test_combine_names_a_file_whose_commitment_was_altered(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    files = [_share_path(topology, n) for n in ("node1", "node2", "node3")]
    elsewhere = tmp_path / "elsewhere"  # node3's share beside a verifier with one commitment altered
    elsewhere.mkdir()
    verifier = json.loads((files[2].parent / "verifier.json").read_text())
    verifier["commitments"][1] = format(int(verifier["commitments"][1], 16) ^ 2, "x")
    altered = json.dumps(verifier).encode()
    doc = json.loads(files[2].read_text())
    doc["verifier"]["sha256"] = hashlib.sha256(altered).hexdigest()  # and the pin changed to match it
    (elsewhere / "verifier.json").write_bytes(altered)
    (elsewhere / "share.json").write_text(json.dumps(doc))
    files[2] = elsewhere / "share.json"
    with pytest.raises(FlingerError, match=re.escape(str(files[2]))):
        combine_share_files(files, reveal=False)


def test_combine_refuses_mixed_deployments(tmp_path: Path) -> None:
    one = _deploy(tmp_path, name="one")
    two = _deploy(tmp_path, name="two")
    files = [_share_path(one, "node1"), _share_path(one, "node2"), _share_path(two, "node3")]
    with pytest.raises(FlingerError) as info:
        combine_share_files(files, reveal=False)
    assert str(files[2]) in str(info.value) and "deployment" in str(info.value)


def test_combine_refuses_the_same_share_twice(tmp_path: Path) -> None:
    topology = _deploy(tmp_path)
    copy = tmp_path / "copy.json"
    copy.write_bytes(_share_path(topology, "node1").read_bytes())
    (tmp_path / "verifier.json").write_bytes((_share_path(topology, "node1").parent / "verifier.json").read_bytes())
    files = [_share_path(topology, "node1"), copy, _share_path(topology, "node2")]
    with pytest.raises(FlingerError, match="holds share 1"):
        combine_share_files(files, reveal=False)


def test_combine_of_an_unreadable_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FlingerError, match=r"bad\.json: not valid JSON"):
        combine_share_files([bad], reveal=False)
    with pytest.raises(UsageError):
        combine_share_files([], reveal=False)
