"""Every seed example's packages built by the remote tool's build command, here, as on a builder."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from flinger.actions.build import package_source
from flinger.protocol.plans import BuildPlan
from tests.remote_helpers import run_remote
from tests.unit.test_seed_examples import SEEDS, load, render


def build_packages(config: Path) -> dict[str, set[str]]:
    """Build every package of the example at `config` with the remote tool, here (no network,
    as on a builder); returns package name -> the files in its tarball."""
    topology, manifest = load(config)
    plan = BuildPlan(
        source_dir=str(topology.source_dir),
        artifacts_dir=str(topology.source_dir / "out"),
        packages=[package_source(p) for p in manifest.packages.values()],
    )
    answer = run_remote("build", plan)
    assert answer.status == 0, answer.stderr[-2000:] + answer.stdout[-2000:]
    assert answer.result.ok is True
    contents = {}
    for tarball in (topology.source_dir / "out" / "packages").glob("*.tar.gz"):
        with tarfile.open(tarball) as archive:
            contents[tarball.name.removesuffix(".tar.gz")] = {m.name for m in archive.getmembers() if m.isfile()}
    return contents


@pytest.mark.parametrize("name", SEEDS)
def test_every_package_of_the_example_builds(name: str, example_copy: Callable[[str], Path]) -> None:
    config = example_copy(name)
    built = build_packages(config)
    _, manifest = load(config)
    assert set(built) == set(manifest.packages)
    for package in manifest.packages.values():
        for mapping in package.source.paths:
            assert mapping.dst in built[package.name], f"{package.name}: {mapping.dst} missing"


def test_orion_ships_env_and_has_no_shares_for_a_single_server(example_copy: Callable[[str], Path]) -> None:
    config = example_copy("orion")
    assert {".env", "orion", "run.sh", "scorpio.toml"} <= build_packages(config)["orion-runner"]
    _, _, overlay = render(config)
    assert (overlay / "orion-client" / "tls" / "cert.pem").is_file()
    assert not (overlay / "orion-client" / "share.json").exists()
