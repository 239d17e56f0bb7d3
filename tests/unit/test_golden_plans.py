"""Topology + manifest -> plan, as data files: for every seed example (examples/*/deploy.toml,
examples/deployment-example.toml) and every case in tests/golden/plans/*/deploy.toml, each
server's install plan (its wave and batch, packages, overlay owner, the rendered service
definitions, health checks and validate commands) is compared with tests/golden/plans/NAME.json.

A change to a template, a renderer or the planner shows here as a diff of those files. When
the change is meant: FLINGER_GOLDEN=update pytest tests/unit/test_golden_plans.py, then
read the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flinger.engine.install import Install
from flinger.engine.plan import plan_deploy
from flinger.engine.strategy import BatchRollout, RolloutPolicy
from flinger.manifest import load_manifest
from flinger.protocol.codec import encode
from flinger.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "plans"
CASES = {
    "quorum": REPO / "examples" / "deployment-example.toml",
    **{p.parent.name: p for p in sorted((REPO / "examples").glob("*/deploy.toml"))},
    **{p.parent.name: p for p in sorted(GOLDEN.glob("*/deploy.toml"))},
}


def document(config: Path) -> dict[str, Any]:
    topology = load_topology(config)
    manifest = load_manifest(topology.manifest_path)
    servers = topology.deployment_servers()
    plans = plan_deploy(topology, manifest, servers)
    batches = BatchRollout(RolloutPolicy()).batches(Install(plans).waves(servers))
    batch_of = {name: b.number for b in batches for name in b.servers}
    return {
        plan.server: {
            "wave": plan.wave,
            "batch": batch_of[plan.server],
            "packages": plan.packages,
            "overlay_owner": encode(plan.overlay_owner),
            "install_dir": plan.install_dir,
            "services": [encode(s) for s in plan.services],
        }
        for plan in plans
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_plan_is_the_golden_one(name: str) -> None:
    got = document(CASES[name])
    expected = GOLDEN / f"{name}.json"
    if os.environ.get("FLINGER_GOLDEN") == "update":
        expected.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert expected.exists(), f"no golden plan for {name}: FLINGER_GOLDEN=update to write it"
    assert got == json.loads(expected.read_text())
