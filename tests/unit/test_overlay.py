"""`make_overlay`: layout, modes, keeping and rotating secrets, re-splitting, templates and
their errors (flinger/actions/overlay.py)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from flinger.errors import ConfigError, FlingerError
from flinger.manifest.model import Manifest, OverlayFile, Package, SecretSpec, Source
from flinger.overlay.make import OverlayReport, make_overlay
from flinger.remote import shamir
from flinger.secrets import ca as calib
from flinger.topology.model import Topology
from tests.state_helpers import edit_overlay, overlay_of, state_of, view
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes, write_template

CONFIG = """\
name = {{ server.name }}
addr = {{ server.addr }}
index = {{ overlay.index }}
threshold = {{ deployment.threshold }}
peers = {% for s in servers %}{{ s.name }}{{ "," if not loop.last }}{% endfor %}
"""


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path, count: int = 3, **kw: object) -> tuple[Topology, Manifest]:
    write_template(tmp_path, "tmpl/app.conf.j2", CONFIG)
    topology = make_topology(tmp_path, nodes(count), **kw)  # type: ignore[arg-type]
    manifest = make_manifest(
        tmp_path,
        overlay=[OverlayFile(template="tmpl/app.conf.j2", dest="app/app.conf")],
        secrets=[SecretSpec(name="api_key", roles=("node",), nbytes=16)],
    )
    return topology, manifest


def _share(topology: Topology, server: str) -> dict[str, object]:
    return shamir.load_share(str(view(topology) / "overlay" / server / "share.json"))


def test_layout_of_every_server(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    report = make_overlay(topology, manifest)
    assert sorted(p.name for p in (topology.state_dir / "overlay").iterdir()) == ["node1.age", "node2.age", "node3.age"]
    opened = view(topology)
    overlay = opened / "overlay"
    assert sorted(p.name for p in overlay.iterdir()) == ["node1", "node2", "node3"]
    expected = [
        "files/app/app.conf", "secrets/api_key", "share.json", "tls/ca.pem", "tls/cert.pem", "tls/key.pem",
        "verifier.json",
    ]  # fmt: skip
    verifier = (topology.state_dir / "state" / "verifier.json").read_bytes()  # public: in clear, stored once
    for name in ("node1", "node2", "node3"):
        assert sorted(_files(overlay / name)) == expected
        assert list(report.server(name).files) == expected
        assert (overlay / name / "verifier.json").read_bytes() == verifier
        share = json.loads((overlay / name / "share.json").read_text())
        assert share["version"] == 2 and "commitments" not in json.dumps(share)
    conf = (overlay / "node2" / "files" / "app" / "app.conf").read_text()
    assert "name = node2\naddr = 10.0.0.3\nindex = 2\nthreshold = 2\npeers = node1,node2,node3\n" == conf
    assert (topology.state_dir / "ca" / "ca.key.age").exists() and not (topology.state_dir / "ca" / "ca.key").exists()
    assert not list(overlay.rglob("ca.key"))
    assert report.threshold == 2 and report.total == 3
    assert [s.share_index for s in report.servers] == [1, 2, 3]


def test_modes_are_0600_files_in_0700_dirs(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    os.umask(0o022)
    make_overlay(topology, manifest, keep_secret=True)
    root = topology.state_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    checked = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for f in filenames:
            assert stat.S_IMODE(os.stat(Path(dirpath, f)).st_mode) == 0o600, f
            checked += 1
    assert checked > 10
    assert not list(root.rglob("*.flinger-tmp"))


def test_shares_verify_and_certs_chain_to_the_overlay_ca(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path, count=4, threshold=3)
    report = make_overlay(topology, manifest)
    overlay = view(topology) / "overlay"
    shares = []
    for s in topology.deployment_servers():
        doc = _share(topology, s.name)
        assert doc["deployment"] == "demo" and doc["threshold"] == 3 and doc["total"] == 4
        commitments = doc["verifier"]["commitments"]  # type: ignore[index]
        assert shamir.verify_share(doc["index"], doc["share"], commitments)  # type: ignore[arg-type]
        shares.append((doc["index"], doc["share"]))
        pair = calib.load_certified_key(overlay / s.name / "tls" / "key.pem", overlay / s.name / "tls" / "cert.pem")
        ca_cert = x509.load_pem_x509_certificate((overlay / s.name / "tls" / "ca.pem").read_bytes())
        assert calib.chains_to(pair.cert, ca_cert)
        assert sorted(calib.cert_sans(pair.cert)) == sorted([s.name, s.addr])
        assert report.server(s.name).cert_sha256 == calib.cert_fingerprint(pair.cert)
    secret = shamir.combine(shares[1:])  # type: ignore[arg-type]
    assert shamir.fingerprint(secret) == report.secret_fingerprint


def test_per_server_secrets_follow_roles(tmp_path: Path) -> None:
    servers = {"coord": ("10.0.0.1", ("coordinator",)), "a1": ("10.0.0.2", ("agent",)), "a2": ("10.0.0.3", ("agent",))}
    topology = make_topology(tmp_path, servers)
    manifest = make_manifest(
        tmp_path, secrets=[SecretSpec(name="push_key", roles=("agent",), visible_to=("coordinator",))]
    )
    make_overlay(topology, manifest)
    overlay = view(topology) / "overlay"
    assert not (overlay / "coord" / "secrets").exists()
    a1 = (overlay / "a1" / "secrets" / "push_key").read_text()
    a2 = (overlay / "a2" / "secrets" / "push_key").read_text()
    assert len(a1) == 64 and a1 != a2
    assert a1 not in "".join(p.read_text() for p in (overlay / "a2").rglob("*") if p.is_file())


def test_rerun_keeps_secrets_certs_and_shares_and_rerenders_templates(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest)
    stored = _files(topology.state_dir)
    before = _files(view(topology))
    again = make_overlay(topology, manifest)
    assert _files(topology.state_dir) == stored  # not one stored file rewritten
    assert _files(view(topology)) == before
    assert all(s.written == () for s in again.servers)
    assert again.messages == ()
    write_template(tmp_path, "tmpl/app.conf.j2", "changed {{ server.name }}\n")
    third = make_overlay(topology, manifest)
    assert third.server("node1").written == ("files/app/app.conf",)
    after = _files(view(topology))
    assert after["overlay/node1/files/app/app.conf"] == b"changed node1\n"
    assert after["overlay/node1/share.json"] == before["overlay/node1/share.json"]


def test_rotate_changes_every_secret(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    first = make_overlay(topology, manifest)
    before = _files(view(topology))
    second = make_overlay(topology, manifest, rotate=True)
    after = _files(view(topology))
    for rel in (
        "ca/ca.key",
        "ca/ca.pem",
        "overlay/node1/tls/key.pem",
        "overlay/node1/secrets/api_key",
        "overlay/node1/share.json",
    ):
        assert before[rel] != after[rel], rel
    assert first.secret_fingerprint != second.secret_fingerprint
    assert any("rotated" in m for m in second.messages)


def test_each_change_of_an_overlay_is_a_generation_and_a_rotation_names_what_it_replaced(tmp_path: Path) -> None:
    from flinger.overlay.generation import load_generations

    topology, manifest = _setup(tmp_path)
    assert make_overlay(topology, manifest).generation == 1
    assert make_overlay(topology, manifest).generation == 1  # nothing changed: the same generation
    write_template(tmp_path, "tmpl/app.conf.j2", "changed {{ server.name }}\n")
    changed = make_overlay(topology, manifest)
    assert (changed.generation, changed.rotated) == (2, ())  # a new config, no secret replaced
    secret_values = {p.read_bytes() for p in (view(topology) / "overlay").glob("*/secrets/api_key")}
    rotated = make_overlay(topology, manifest, rotate=True)
    assert rotated.generation == 3
    assert rotated.rotated == (
        "the deployment CA key", "the TLS keys of node1, node2, node3", "the deployment secret", "secret api_key",
    )  # fmt: skip
    assert any("generation 3 rotates out" in m for m in rotated.messages)
    report = json.dumps(rotated.to_json()) + (topology.state_dir / "state" / "generation.json").read_text()
    assert not any(v.decode() in report for v in secret_values)  # names, never values
    generations = load_generations(state_of(topology))
    assert generations.rotated_since(2) == list(rotated.rotated) and generations.rotated_since(3) == []
    assert generations.rotated_since(1, 2) == []
    assert (topology.state_dir / "state" / "generation.json").stat().st_mode & 0o777 == 0o600


def test_adding_a_server_resplits_the_same_secret(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    first = make_overlay(topology, manifest)
    old_share = _share(topology, "node1")["share"]
    bigger = make_topology(tmp_path, nodes(4))
    second = make_overlay(bigger, manifest)
    assert any("re-split" in m and "added node4" in m for m in second.messages)
    assert second.secret_fingerprint == first.secret_fingerprint
    assert second.threshold == 3
    assert _share(bigger, "node1")["share"] != old_share
    shares = [(_share(bigger, n)["index"], _share(bigger, n)["share"]) for n in ("node2", "node3", "node4")]
    assert shamir.fingerprint(shamir.combine(shares)) == first.secret_fingerprint  # type: ignore[arg-type]


def test_removing_a_server_resplits_and_removes_its_overlay(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path, count=4)
    first = make_overlay(topology, manifest)
    smaller = make_topology(tmp_path, nodes(3))
    second = make_overlay(smaller, manifest)
    assert any("removed node4" in m for m in second.messages)
    assert "node4" in second.removed
    assert not (topology.state_dir / "overlay" / "node4.age").exists()
    assert not (topology.state_dir / "state" / "tls" / "node4").exists()
    assert second.secret_fingerprint == first.secret_fingerprint
    assert _share(smaller, "node3")["total"] == 3


def test_changed_threshold_resplits(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path, count=4, threshold=2)
    first = make_overlay(topology, manifest)
    second = make_overlay(replace(topology, deployment=replace(topology.deployment, threshold=4)), manifest)
    assert any("threshold 2 -> 4" in m for m in second.messages)
    assert second.secret_fingerprint == first.secret_fingerprint
    assert _share(topology, "node1")["threshold"] == 4


def test_changed_address_reissues_that_certificate_only(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    first = make_overlay(topology, manifest)
    moved = dict(topology.servers)
    moved["node2"] = replace(moved["node2"], addr="10.9.9.9")
    second = make_overlay(replace(topology, servers=moved), manifest)
    assert second.server("node2").cert_sha256 != first.server("node2").cert_sha256
    assert second.server("node1").cert_sha256 == first.server("node1").cert_sha256
    assert any("node2" in m and "address" in m for m in second.messages)
    cert = x509.load_pem_x509_certificate((view(topology) / "overlay" / "node2" / "tls" / "cert.pem").read_bytes())
    assert "10.9.9.9" in calib.cert_sans(cert)


def test_single_server_gets_no_share_and_the_report_says_why(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path, count=1)
    report = make_overlay(topology, manifest)
    assert not (view(topology) / "overlay" / "node1" / "share.json").exists()
    assert (view(topology) / "overlay" / "node1" / "tls" / "cert.pem").exists()
    assert report.threshold is None and report.server("node1").share_index is None
    assert any("only one deployment server" in m for m in report.messages)


def test_keep_secret_stores_it_0600_and_a_later_run_without_it_removes_it(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    report = make_overlay(topology, manifest, keep_secret=True)
    kept = topology.state_dir / "state" / "secret.age"  # sealed
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    value = state_of(topology).read("state/secret")
    assert value is not None and shamir.fingerprint(int(value, 16)) == report.secret_fingerprint
    make_overlay(topology, manifest)
    assert not kept.exists()


def test_threshold_above_n_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path, count=3, threshold=4)
    with pytest.raises(ConfigError) as info:
        make_overlay(topology, manifest)
    assert info.value.key == "deployment.threshold" and "got 4" in str(info.value)
    assert not topology.state_dir.exists()


def test_undefined_variable_names_template_line_and_variable(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    write_template(tmp_path, "tmpl/app.conf.j2", "a = 1\nb = {{ server.name }}\nc = {{ no_such_thing }}\n")
    with pytest.raises(ConfigError) as info:
        make_overlay(topology, manifest)
    assert info.value.file is not None and info.value.file.endswith("tmpl/app.conf.j2")
    assert info.value.line == 3
    assert "no_such_thing" in str(info.value)
    assert not topology.state_dir.exists()


def test_undefined_attribute_is_named_with_its_path(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    write_template(tmp_path, "tmpl/app.conf.j2", "{% if true %}\nport = {{ server.prot }}\n{% endif %}\n")
    with pytest.raises(ConfigError) as info:
        make_overlay(topology, manifest)
    assert info.value.line == 2 and "server.prot" in str(info.value)


def test_a_failing_template_leaves_the_previous_overlay_untouched(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest)
    before = _files(topology.state_dir)
    write_template(tmp_path, "tmpl/app.conf.j2", "{{ broken }\n")
    with pytest.raises(ConfigError, match="syntax") as info:
        make_overlay(topology, manifest, rotate=True)
    assert info.value.line == 1
    assert _files(topology.state_dir) == before


def _visibility_setup(tmp_path: Path, template: str, roles: tuple[str, ...]) -> tuple[Topology, Manifest]:
    servers = {"coord": ("10.0.0.1", ("coordinator",)), "a1": ("10.0.0.2", ("agent",)), "a2": ("10.0.0.3", ("agent",))}
    topology = make_topology(tmp_path, servers)
    write_template(tmp_path, "tmpl/keys.j2", template)
    manifest = make_manifest(
        tmp_path,
        overlay=[OverlayFile(template="tmpl/keys.j2", dest="keys.conf", roles=roles)],
        secrets=[SecretSpec(name="push_key", roles=("agent",), visible_to=("coordinator",))],
    )
    return topology, manifest


def test_a_role_in_visible_to_sees_every_peer_value(tmp_path: Path) -> None:
    template = "{% for name, key in peer_secrets.push_key | dictsort %}{{ name }}={{ key }}\n{% endfor %}"
    topology, manifest = _visibility_setup(tmp_path, template, ("coordinator",))
    make_overlay(topology, manifest)
    overlay = view(topology) / "overlay"
    a1 = (overlay / "a1" / "secrets" / "push_key").read_text()
    a2 = (overlay / "a2" / "secrets" / "push_key").read_text()
    assert (overlay / "coord" / "files" / "keys.conf").read_text() == f"a1={a1}\na2={a2}\n"
    assert not (overlay / "a1" / "files").exists()


def test_peer_secret_outside_visible_to_is_refused(tmp_path: Path) -> None:
    topology, manifest = _visibility_setup(tmp_path, "# keys\nall = {{ peer_secrets.push_key }}\n", ("*",))
    with pytest.raises(ConfigError) as info:
        make_overlay(topology, manifest)
    message = str(info.value)
    assert info.value.file is not None and info.value.file.endswith("tmpl/keys.j2")
    assert info.value.line == 2
    assert "push_key" in message and "server a1" in message
    assert not topology.state_dir.exists()


def test_own_secret_of_another_role_is_refused(tmp_path: Path) -> None:
    topology, manifest = _visibility_setup(tmp_path, "mine = {{ secrets['push_key'] }}\n", ("coordinator",))
    with pytest.raises(ConfigError) as info:
        make_overlay(topology, manifest)
    assert info.value.line == 1 and "push_key" in str(info.value) and "server coord" in str(info.value)
    assert not topology.state_dir.exists()


def test_files_only_for_packages_and_roles_of_the_server(tmp_path: Path) -> None:
    servers = {"web": ("10.0.0.1", ("web",)), "db": ("10.0.0.2", ("db",))}
    topology = make_topology(tmp_path, servers, threshold=2)
    write_template(tmp_path, "t/a.j2", "{{ server.name }}\n")
    db_pkg = Package(
        name="db",
        service_name="db",
        roles=("db",),
        source=Source(type="local"),
        overlay=(OverlayFile(template="t/a.j2", dest="db.conf"),),
    )
    manifest = make_manifest(
        tmp_path,
        overlay=[OverlayFile(template="t/a.j2", dest="web.conf", roles=("web",))],
        extra_packages=[db_pkg],
    )
    make_overlay(topology, manifest)
    overlay = view(topology) / "overlay"
    assert sorted(p.name for p in (overlay / "web" / "files").iterdir()) == ["web.conf"]
    assert sorted(p.name for p in (overlay / "db" / "files").iterdir()) == ["db.conf"]


def test_files_no_longer_planned_are_removed(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest)
    edit_overlay(topology, "node1", "files/old.conf", b"x")
    without = replace(manifest, packages={"app": replace(manifest.packages["app"], overlay=())}, secrets={})
    report = make_overlay(topology, without)
    assert "node1/files/app/app.conf" in report.removed and "node1/files/old.conf" in report.removed
    assert "node1/secrets/api_key" in report.removed
    assert not (view(topology) / "overlay" / "node1" / "files").exists()


@pytest.mark.parametrize("dest", ["../escape.conf", "/etc/passwd", "a/../../b"])
def test_destinations_outside_the_overlay_are_refused(tmp_path: Path, dest: str) -> None:
    topology, manifest = _setup(tmp_path)
    bad = replace(
        manifest,
        packages={
            "app": replace(manifest.packages["app"], overlay=(OverlayFile(template="tmpl/app.conf.j2", dest=dest),))
        },
    )
    with pytest.raises(ConfigError, match="relative file path"):
        make_overlay(topology, bad)
    assert not topology.state_dir.exists()


def test_missing_template_is_a_config_error(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    missing = replace(
        manifest,
        packages={"app": replace(manifest.packages["app"], overlay=(OverlayFile(template="nope.j2", dest="x"),))},
    )
    with pytest.raises(ConfigError, match=r"nope\.j2 not found") as info:
        make_overlay(topology, missing)
    assert info.value.key == "packages.app.overlay.0.template"


def test_report_is_json_data_without_values(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    report = make_overlay(topology, manifest)
    assert isinstance(report, OverlayReport)
    dumped = json.dumps(report.to_json())
    api_key = (view(topology) / "overlay" / "node1" / "secrets" / "api_key").read_text()
    assert api_key not in dumped
    assert format(_share(topology, "node1")["share"], "x") not in dumped  # type: ignore[arg-type]
    assert json.loads(dumped)["servers"][0]["server"] == "node1"


def test_template_root_may_be_given(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    other = tmp_path / "elsewhere"
    (other / "tmpl").mkdir(parents=True)
    (other / "tmpl" / "app.conf.j2").write_text("from elsewhere {{ deployment.name }}\n")
    make_overlay(topology, manifest, template_root=other)
    assert (view(topology) / "overlay" / "node3" / "files" / "app" / "app.conf").read_text() == "from elsewhere demo\n"


def test_builder_and_server_context(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    write_template(
        tmp_path,
        "tmpl/app.conf.j2",
        "{{ builder.name }} {{ server.port }} {{ server.user }} {{ deployment.n }} {{ install_dir }} "
        "{{ overlay.dir }} {{ overlay.verifier.commitments | length }} {{ overlay.ca_pem[:27] }}\n",
    )
    make_overlay(topology, manifest)
    text = (view(topology) / "overlay" / "node1" / "files" / "app" / "app.conf").read_text()
    assert text == "build1 22 deploy 3 /opt/demo /opt/demo/current/overlay 2 -----BEGIN CERTIFICATE-----\n"


def test_the_example_quorum_config_template_renders(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    template = repo / "smf" / "quorum" / "config.json.j2"
    if not template.exists():
        pytest.skip("the example system is not in this tree")
    topology = make_topology(tmp_path, nodes(3))
    manifest = make_manifest(
        tmp_path, overlay=[OverlayFile(template="smf/quorum/config.json.j2", dest="quorum/config.json")]
    )
    make_overlay(topology, manifest, template_root=repo)
    config = json.loads((view(topology) / "overlay" / "node2" / "files" / "quorum" / "config.json").read_text())
    assert config["name"] == "node2" and config["threshold"] == 2 and len(config["peers"]) == 3


def test_damaged_state_is_reported_and_rotate_recovers(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest)
    split_file = topology.state_dir / "state" / "split.json.age"
    split_file.write_bytes(split_file.read_bytes()[:-7])  # truncated
    with pytest.raises(FlingerError, match="--rotate") as info:
        make_overlay(topology, manifest)
    assert str(split_file) in str(info.value) and info.value.exit_status == 2
    report = make_overlay(topology, manifest, rotate=True)
    split = state_of(topology).read("state/split.json")
    assert report.secret_fingerprint is not None and split is not None and json.loads(split)["threshold"] == 2


def test_shrinking_to_one_server_and_back_keeps_the_secret(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    first = make_overlay(topology, manifest)
    alone = make_overlay(make_topology(tmp_path, nodes(1)), manifest)
    assert alone.secret_fingerprint is None and any("stays in the state" in m for m in alone.messages)
    again = make_overlay(make_topology(tmp_path, nodes(3)), manifest)
    assert again.secret_fingerprint == first.secret_fingerprint


def test_a_new_secret_spec_leaves_the_others_alone(tmp_path: Path) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest)
    before = overlay_of(topology, "node1")["secrets/api_key"]
    more = replace(manifest, secrets={**manifest.secrets, "db_pw": SecretSpec(name="db_pw", roles=("node",))})
    report = make_overlay(topology, more)
    assert overlay_of(topology, "node1")["secrets/api_key"] == before
    assert report.server("node1").written == ("secrets/db_pw",)
    longer = replace(more, secrets={**more.secrets, "api_key": SecretSpec(name="api_key", roles=("node",), nbytes=32)})
    make_overlay(topology, longer)
    assert len(overlay_of(topology, "node1")["secrets/api_key"]) == 64


def test_a_deployment_scoped_secret_is_one_value_kept_when_roles_move(tmp_path: Path) -> None:
    servers = {"r1": ("10.0.0.1", ("primary",)), "r2": ("10.0.0.2", ("replica",)), "r3": ("10.0.0.3", ("replica",))}
    topology = make_topology(tmp_path, servers)
    spec = SecretSpec(name="redis_pw", roles=("primary", "replica"), scope="deployment")
    manifest = make_manifest(tmp_path, secrets=[spec])
    make_overlay(topology, manifest)

    def value(server: str) -> bytes:
        return overlay_of(topology, server)["secrets/redis_pw"]

    values = {s: value(s) for s in servers}
    assert len(set(values.values())) == 1 and len(values["r1"]) == 64  # the same on every server

    # The primary role moves to r2 (r1 becomes a replica): the password stays.
    moved = make_topology(tmp_path, {
        "r1": ("10.0.0.1", ("replica",)), "r2": ("10.0.0.2", ("primary",)), "r3": ("10.0.0.3", ("replica",))
    })  # fmt: skip
    make_overlay(moved, manifest)
    assert {value(s) for s in servers} == {values["r1"]}
    # Even with no server holding one of its roles for a while, the value is kept.
    make_overlay(make_topology(tmp_path, {"r9": ("10.0.0.9", ("other",))}), manifest)
    make_overlay(moved, manifest)
    assert value("r2") == values["r1"]
    # Only --rotate changes it, and then again on every server at once.
    make_overlay(moved, manifest, rotate=True)
    rotated = {value(s) for s in servers}
    assert len(rotated) == 1 and rotated != {values["r1"]}
    state = json.loads(state_of(topology).read("state/secrets.json") or b"")
    assert list(state["secrets"]["redis_pw"]) == ["*"]


def test_check_renders_every_overlay_template_without_touching_the_state(tmp_path: Path) -> None:
    from flinger.overlay.sample import render_sample

    topology, manifest = _setup(tmp_path)
    assert render_sample(topology, manifest) == 1  # one server per set of roles: all three are "node"
    write_template(tmp_path, "tmpl/app.conf.j2", "a = 1\nb = {{ server.prot }}\n")
    with pytest.raises(ConfigError) as info:
        render_sample(topology, manifest)
    assert info.value.line == 2 and "server.prot" in str(info.value)
    assert not topology.state_dir.exists()  # no state read or made, no identity needed
