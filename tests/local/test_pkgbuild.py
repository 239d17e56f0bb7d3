"""The remote `build` command: deterministic tarballs, the inputs-digest cache, ordering, failures."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flinger.protocol.messages import Event
from tests.remote_helpers import REPO, envelope, parse

STATES = ("built", "cached", "checked", "failed", "skipped")


@dataclass
class Build:
    result: Any  # BuildResult
    events: list[Event]

    def state(self, state: str) -> set[str]:
        return {name for name, outcome in self.result.packages.items() if outcome.state == state}

    def commands(self) -> list[Event]:
        """The build commands run (a step of a package that is not one of the build's own)."""
        return [e for e in self.events if e.event == "step" and e.text not in (*STATES, "pack", "download")]


def as_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan written here as a dict (paths from/to) in the protocol's field names."""
    packages = [
        {**p, "paths": [{"source": m["from"], "dest": m.get("to", "")} for m in p.get("paths", [])]}
        for p in plan["packages"]
    ]
    return {**plan, "packages": packages}


def run_build(plan: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, Build]:
    proc = subprocess.run(
        [sys.executable, "-m", "flinger.remote", "build"],
        input=envelope("build", as_plan(plan)),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    result, events = parse("build", proc.stdout)
    assert result is not None, proc.stderr + proc.stdout
    return proc.returncode, Build(result, events)


def built(build: Build) -> set[str]:
    return build.state("built")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "server").write_text("#!/bin/sh\necho server\n")
    (src / "bin" / "server").chmod(0o775)
    (src / "conf").mkdir()
    (src / "conf" / "a.toml").write_text("a = 1\n")
    (src / "conf" / "b.toml").write_text("b = 2\n")
    (src / "web").mkdir()
    (src / "web" / "index.html").write_text("<p>hi</p>\n")
    (src / "web" / "sub").mkdir()
    (src / "web" / "sub" / "x.css").write_text("p{}\n")
    return src


def plan_for(src: Path, out: Path, **extra: Any) -> dict[str, Any]:
    plan = {
        "source_dir": str(src),
        "artifacts_dir": str(out),
        "jobs": 2,
        "packages": [
            {
                "name": "server",
                "version": "1.0",
                "type": "local",
                "paths": [{"from": "bin/server", "to": "bin/server"}, {"from": "conf/*.toml", "to": "etc"}],
            },
            {"name": "web", "type": "local", "paths": [{"from": "web", "to": "public"}]},
            {
                "name": "gen",
                "type": "local",
                "build": ["mkdir -p gen && cp conf/a.toml gen/a"],
                "inputs": ["conf/a.toml"],
                "paths": [{"from": "gen/a", "to": "a"}],
            },
            {"name": "bundle", "type": "composite", "packages": ["server", "web"]},
        ],
    }
    plan.update(extra)
    return plan


def test_tarball_members_are_normalised(tree: Path, tmp_path: Path) -> None:
    status, _ = run_build(plan_for(tree, tmp_path / "out"))
    assert status == 0
    data = (tmp_path / "out" / "packages" / "server.tar.gz").read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert data[3] & 0x08 == 0  # no file name in the gzip header
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert {m.uid for m in members} == {0} and {m.gid for m in members} == {0}
        assert {m.uname for m in members} == {""} and {m.mtime for m in members} == {0}
        modes = {m.name: m.mode for m in members}
        assert modes["bin/server"] == 0o755 and modes["etc/a.toml"] == 0o644
        assert modes["bin"] == 0o755
        meta = json.loads(tar.extractfile(".flinger-package.json").read())  # type: ignore[union-attr]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["packages"]["server"]
    assert meta == {"name": "server", "version": "1.0", "inputs_digest": entry["inputs_digest"]}
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert entry["file"] == "packages/server.tar.gz" and entry["version"] == "1.0"
    assert set(names) >= {"etc/a.toml", "etc/b.toml"}


def test_two_builds_give_byte_identical_tarballs(tree: Path, tmp_path: Path) -> None:
    run_build(plan_for(tree, tmp_path / "one"))
    # different mtimes and a fresh artifacts dir: the bytes must not change
    for path in tree.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    run_build(plan_for(tree, tmp_path / "two", no_cache=True))
    for name in ("server", "web", "gen", "bundle"):
        one = (tmp_path / "one" / "packages" / f"{name}.tar.gz").read_bytes()
        two = (tmp_path / "two" / "packages" / f"{name}.tar.gz").read_bytes()
        assert one == two, name


def test_source_date_epoch_sets_the_mtime(tree: Path, tmp_path: Path) -> None:
    run_build(plan_for(tree, tmp_path / "out"), env={"SOURCE_DATE_EPOCH": "1234567"})
    with tarfile.open(tmp_path / "out" / "packages" / "web.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1234567}


def test_unchanged_rebuild_builds_nothing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _, first = run_build(plan_for(tree, out))
    assert built(first) == {"server", "web", "gen", "bundle"}
    status, second = run_build(plan_for(tree, out))
    assert status == 0
    assert built(second) == set()
    assert second.state("cached") == {"server", "web", "gen", "bundle"}
    # "gen" declares its inputs, so even its build command is skipped
    assert second.commands() == []
    assert second.result.ok is True


def test_changed_input_rebuilds_only_its_dependents(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_build(plan_for(tree, out))
    (tree / "web" / "sub" / "x.css").write_text("p{color:red}\n")
    _, lines = run_build(plan_for(tree, out))
    assert built(lines) == {"web", "bundle"}
    (tree / "conf" / "a.toml").write_text("a = 2\n")
    _, lines = run_build(plan_for(tree, out))
    assert built(lines) == {"server", "gen", "bundle"}
    (tree / "bin" / "server").chmod(0o644)  # a mode change is a change
    _, lines = run_build(plan_for(tree, out))
    assert built(lines) == {"server", "bundle"}


def test_changed_spec_rebuilds_and_no_cache_rebuilds_all(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_build(plan_for(tree, out))
    plan = plan_for(tree, out)
    plan["packages"][1]["version"] = "2.0"
    _, lines = run_build(plan)
    assert built(lines) == {"web", "bundle"}
    _, lines = run_build(plan_for(tree, out, no_cache=True))
    assert built(lines) == {"server", "web", "gen", "bundle"}


def test_tampered_tarball_is_rebuilt(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_build(plan_for(tree, out))
    (out / "packages" / "web.tar.gz").write_bytes(b"garbage")
    _, lines = run_build(plan_for(tree, out))
    assert "web" in built(lines)
    with tarfile.open(out / "packages" / "web.tar.gz") as tar:
        assert "public/index.html" in tar.getnames()


def test_build_commands_without_declared_inputs_always_run(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_for(tree, out)
    plan["packages"] = [
        {"name": "gen", "build": ["mkdir -p gen && cp conf/b.toml gen/b"], "paths": [{"from": "gen/b", "to": "b"}]}
    ]
    run_build(plan)
    (tree / "conf" / "b.toml").write_text("b = 3\n")  # read by the command, named nowhere
    _, lines = run_build(plan)
    assert built(lines) == {"gen"}
    _, lines = run_build(plan)
    assert built(lines) == set() and len(lines.commands()) == 1  # the command ran, the packing was skipped
    assert lines.state("cached") == {"gen"}


def test_failed_command_reports_tail_and_skips_dependents(tree: Path, tmp_path: Path) -> None:
    plan = plan_for(tree, tmp_path / "out")
    plan["packages"][0]["build"] = ["for i in $(seq 1 30); do echo line$i; done; exit 3"]
    status, lines = run_build(plan)
    assert status == 1 and lines.result.ok is False
    assert lines.state("failed") == {"server"}
    failed = lines.result.packages["server"]
    assert failed.exit_status == 3 and failed.command.startswith("for i")
    assert failed.tail == [f"line{i}" for i in range(11, 31)]
    assert lines.state("skipped") == {"bundle"}
    assert "web" in built(lines)
    assert any(e.event == "line" and e.subject == "server" and e.text == "line1" for e in lines.events)


def test_path_that_matches_nothing_names_the_path(tree: Path, tmp_path: Path) -> None:
    plan = plan_for(tree, tmp_path / "out")
    plan["packages"] = [{"name": "p", "paths": [{"from": "target/release/nope", "to": "bin"}]}]
    status, lines = run_build(plan)
    assert status == 1
    assert "target/release/nope" in lines.result.packages["p"].error
    assert not (tmp_path / "out" / "packages" / "p.tar.gz").exists()


def test_plan_paths_must_stay_inside(tree: Path, tmp_path: Path) -> None:
    plan = plan_for(tree, tmp_path / "out")
    plan["packages"] = [{"name": "p", "paths": [{"from": "../etc/passwd", "to": "x"}]}]
    status, lines = run_build(plan)
    assert status == 1 and "paths.from" in lines.result.error


def test_check_only_runs_commands_and_packs_nothing(tree: Path, tmp_path: Path) -> None:
    plan = plan_for(tree, tmp_path / "out", check_only=True)
    plan["packages"].append({"name": "broken", "build": ["echo nope; false"]})
    status, lines = run_build(plan)
    assert status == 1
    assert lines.state("checked") == {"server", "web", "gen", "bundle"} and lines.state("failed") == {"broken"}
    assert (tree / "gen" / "a").exists()  # the command ran
    assert not (tmp_path / "out" / "packages").exists()


def test_prebuilt_download_verify_and_cache(tmp_path: Path) -> None:
    blob = tmp_path / "tool"
    blob.write_bytes(b"\x7fELF fake binary")
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    out = tmp_path / "out"
    plan = {
        "source_dir": str(tmp_path),
        "artifacts_dir": str(out),
        "packages": [{"name": "tool", "type": "prebuilt", "url": blob.as_uri(), "sha256": digest, "to": "bin/tool"}],
    }
    status, lines = run_build(plan)
    assert status == 0
    cached_file = out / "cache" / digest
    assert cached_file.read_bytes() == blob.read_bytes()
    with tarfile.open(out / "packages" / "tool.tar.gz") as tar:
        assert tar.getmember("bin/tool").mode == 0o755
    # corrupt the download cache and force a rebuild: it is fetched again
    cached_file.write_bytes(b"corrupt")
    _, lines = run_build({**plan, "no_cache": True})
    assert ("step", "download") in [(e.event, e.text) for e in lines.events]  # fetched again
    assert cached_file.read_bytes() == blob.read_bytes()
    _, lines = run_build({**plan, "no_cache": True})
    assert ("step", "download") not in [(e.event, e.text) for e in lines.events]
    assert any("the cached copy" in e.text for e in lines.events)
    # a wrong digest fails and caches nothing under it
    wrong = "0" * 64
    status, lines = run_build({**plan, "packages": [{**plan["packages"][0], "sha256": wrong}]})
    assert status == 1 and "expected" in lines.result.packages["tool"].error
    assert not (out / "cache" / wrong).exists()


def test_prebuilt_tarball_is_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "dist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"payload\n"
        info = tarfile.TarInfo("dist/README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "out"
    plan = {
        "source_dir": str(tmp_path),
        "artifacts_dir": str(out),
        "packages": [{"name": "dist", "type": "prebuilt", "url": archive.as_uri(), "sha256": digest}],
    }
    status, _ = run_build(plan)
    assert status == 0
    with tarfile.open(out / "packages" / "dist.tar.gz") as tar:
        assert "dist/README" in tar.getnames()


def test_composite_members_that_disagree_fail(tree: Path, tmp_path: Path) -> None:
    plan = plan_for(tree, tmp_path / "out")
    plan["packages"] = [
        {"name": "a", "paths": [{"from": "conf/a.toml", "to": "x"}]},
        {"name": "b", "paths": [{"from": "conf/b.toml", "to": "x"}]},
        {"name": "ab", "type": "composite", "packages": ["a", "b"]},
    ]
    status, lines = run_build(plan)
    assert status == 1 and "disagree" in lines.result.packages["ab"].error


def test_gzip_payload_is_the_plain_tar(tree: Path, tmp_path: Path) -> None:
    run_build(plan_for(tree, tmp_path / "out"))
    raw = gzip.decompress((tmp_path / "out" / "packages" / "web.tar.gz").read_bytes())
    assert raw[257:262] == b"ustar"
