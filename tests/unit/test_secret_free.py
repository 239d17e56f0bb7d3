"""Which overlay files hold no secret (flinger/overlay/public.py): a template that names no
secret, however deep its includes go, and only while the overlay was made from the templates
as they are; the server keeps the answer in its receipt and sends back only such files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flinger.engine.plan import plan_deploy
from flinger.manifest import load_manifest
from flinger.overlay.make import make_overlay
from flinger.overlay.public import SecretFreeTemplates
from flinger.protocol.plans import InstallPlan
from flinger.protocol.results import OVERLAY_TEXT_LIMIT
from flinger.remote import install, inventory
from flinger.topology import load_topology
from tests.unit.test_vars import project


def test_a_template_is_free_of_secrets_only_when_nothing_it_reaches_names_one(tmp_path: Path) -> None:
    files = {
        "plain.j2": "name = {{ server.name }} {{ overlay.ca_pem }} {{ server.vars.x }}\n",
        "own.j2": "password = {{ secrets.db }}\n",
        "peers.j2": "{% for n, v in peer_secrets.db.items() %}{{ n }}{% endfor %}\n",
        "set.j2": "{% set s = secrets %}{{ s.db | length }}\n",
        "outer.j2": "{% include 'inner.j2' %}\n",
        "inner.j2": "{% import 'macros.j2' as m with context %}{{ m.show() }}\n",
        "macros.j2": "{% macro show() %}{{ secrets.db }}{% endmacro %}\n",
        "clean_outer.j2": "{% extends 'base.j2' %}{% block b %}{{ server.addr }}{% endblock %}\n",
        "base.j2": "[{% block b %}{% endblock %}]\n",
        "dynamic.j2": "{% include server.name ~ '.j2' %}\n",
        "loop_a.j2": "{% include 'loop_b.j2' %}\n",
        "loop_b.j2": "{% include 'loop_a.j2' %}\n",
        "broken.j2": "{% if %}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    templates = SecretFreeTemplates(tmp_path)
    free = {name for name in [*files, "missing.j2"] if templates.free(name)}
    assert free == {"plain.j2", "clean_outer.j2", "base.j2"}, free


def test_the_stored_overlay_says_which_files_hold_no_secret_until_a_template_changes(tmp_path: Path) -> None:
    config = project(tmp_path, {}, deployment_vars='vars = { greeting = "hello", workers = 4 }\n')
    topology = load_topology(config)
    manifest = load_manifest(topology.manifest_path)
    servers = list(topology.servers.values())
    make_overlay(topology, manifest)
    plans = plan_deploy(topology, manifest, servers)
    free = ["files/hello.conf", "tls/ca.pem", "tls/cert.pem", "verifier.json"]  # no key, share or secrets/
    assert [p.overlay_public for p in plans] == [free, free]
    assert all("tls/key.pem" in p.overlay_files for p in plans)
    template = tmp_path / "src" / "t" / "hello.conf.j2"
    template.write_text(template.read_text() + "# edited after the overlay was made\n")
    assert [p.overlay_public for p in plan_deploy(topology, manifest, servers)] == [[], []]  # stale: none


def test_the_server_sends_back_only_changed_files_its_receipt_says_hold_no_secret(tmp_path: Path) -> None:
    top = tmp_path / "overlay"
    (top / "files").mkdir(parents=True)
    texts = {"files/a.conf": "a = 1\n", "files/b.conf": "b = 1\n", "files/pw.conf": "pw = x\n", "same.conf": "s\n"}
    for rel, text in texts.items():
        (top / rel).write_text(text)
    (top / "files" / "big.conf").write_bytes(b"x" * (OVERLAY_TEXT_LIMIT + 1))
    (top / "files" / "bin.conf").write_bytes(b"\xff\xfe")
    os.symlink(top / "files" / "a.conf", top / "files" / "link.conf")
    running = {rel: "old" for rel in [*texts, "files/big.conf", "files/bin.conf", "files/link.conf"]}
    running["same.conf"] = hashlib.sha256(b"s\n").hexdigest()
    asked = {rel: "new" for rel in running} | {"same.conf": running["same.conf"], "../escape": "new"}
    public = ["files/a.conf", "files/big.conf", "files/bin.conf", "files/link.conf", "same.conf", "../escape"]
    got = inventory._overlay_texts(str(top), running, asked, public)
    assert got == {"files/a.conf": "a = 1\n"}, got  # not b (not asked as public), pw, big, binary, a link


def test_an_install_keeps_only_files_the_release_has_as_free_of_secrets(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.conf").write_text("a\n")
    os.symlink(tmp_path / "files" / "a.conf", tmp_path / "files" / "link.conf")
    plan = InstallPlan(
        install_dir="/opt/x", staging_dir="/s", release="r", lock_holder="h",
        overlay_public=["files/a.conf", "files/gone.conf", "files/link.conf", "files"],
    )  # fmt: skip
    assert install._public(plan, str(tmp_path)) == ["files/a.conf"]
