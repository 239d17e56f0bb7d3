"""The seed deployments under examples/ (Orion, GitMirror, Fustor, NativeLink, thing-flinger):
`check` accepts each, each server gets the packages of its roles, and the rendered overlay
gives each server what it needs and nothing it must not see. No network: the overlay is
rendered into a copy of the example, so no state is written into the repository."""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from flinger.actions.check import run_check
from flinger.cli import run  # importing flinger.cli registers every command
from flinger.cli.app import app
from flinger.manifest import Manifest, load_manifest
from flinger.topology import Topology, load_topology
from tests.state_helpers import view

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = ("orion", "gitmirror", "fustor", "nativelink", "thing-flinger")
DOC_NET = ipaddress.ip_network("192.0.2.0/24")  # TEST-NET-1: never routed


def load(config: Path) -> tuple[Topology, Manifest]:
    topology = load_topology(config)
    return topology, load_manifest(topology.manifest_path)


def packages_of(topology: Topology, manifest: Manifest) -> dict[str, set[str]]:
    """Deployment server name -> the names of the packages it gets."""
    return {s.name: {p.name for p in manifest.packages_for(s.roles)} for s in topology.deployment_servers()}


def make_overlay_or_skip() -> Callable[..., Any]:
    """flinger.overlay.make.make_overlay, or a skip naming what is missing."""
    try:
        module = importlib.import_module("flinger.overlay.make")
    except ImportError:
        pytest.skip("flinger.overlay is not there yet")
    make = getattr(module, "make_overlay", None)
    if make is None:
        pytest.skip("flinger.overlay.make_overlay is not there yet")
    return make  # type: ignore[no-any-return]


def render(config: Path) -> tuple[Topology, Manifest, Path]:
    """Render the overlay of the example at `config`; returns its overlay dir."""
    make_overlay = make_overlay_or_skip()
    topology, manifest = load(config)
    make_overlay(topology, manifest)
    return topology, manifest, view(topology) / "overlay"  # the sealed overlays, opened


def overlay_text(overlay_dir: Path, server: str, rel: str) -> str:
    return (overlay_dir / server / rel).read_text(encoding="utf-8")


def yaml_scalars(text: str) -> dict[str, str]:
    """Top-level `key: value` lines of a flat YAML file (GitMirror's configs are nothing more)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(("#", " ")) or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


# ------------------------------------------------------------------------------ every example


@pytest.mark.parametrize("name", SEEDS)
def test_check_accepts_the_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = run(["-c", str(EXAMPLES / name / "deploy.toml"), "--json", "check"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["warnings"] == []
    assert report["packages"], "an example without packages shows nothing"
    builders = [s for s in report["servers"] if s["builder"] is True]
    assert len(builders) == 1 and all(isinstance(s["deploy"], bool) for s in report["servers"])
    assert all(isinstance(p["roles"], list) and isinstance(p["servers"], list) for p in report["packages"])


@pytest.mark.parametrize("name", SEEDS)
def test_example_is_its_own_source_tree_and_contacts_no_real_host(name: str) -> None:
    topology, manifest = load(EXAMPLES / name / "deploy.toml")
    assert topology.source_dir == (EXAMPLES / name).resolve()
    assert run_check(topology, manifest).warnings == []
    for server in topology.servers.values():
        if server.addr.endswith(".example.net"):
            continue
        assert ipaddress.ip_address(server.addr) in DOC_NET, f"{name}: {server.name} has a real address"
    for package in manifest.packages.values():
        for overlay in package.overlay:
            assert overlay.template.startswith("templates/"), overlay.template


@pytest.mark.parametrize("name", SEEDS)
def test_scripts_and_stand_ins_are_executable(name: str) -> None:
    """Services and prerequisites run these directly: a lost exec bit breaks the deployment."""
    scripts = [p for d in ("bin", "prereqs") for p in (EXAMPLES / name / d).glob("*") if p.is_file()]
    assert scripts
    for path in scripts:
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text(encoding="utf-8").startswith("#!"), f"{path} has no #! line"


@pytest.mark.parametrize("name", SEEDS)
def test_readme_gives_the_deploy_commands(name: str) -> None:
    readme = (EXAMPLES / name / "README.md").read_text(encoding="utf-8")
    for command in ("check", "sync", "install-prereqs", "build package", "overlay", "deploy install --dry-run"):
        assert f"flinger -c examples/{name}/deploy.toml {command}" in readme, command


# ------------------------------------------------------------------------------ 000 Orion


def test_orion_runner_package_service_and_prereqs() -> None:
    topology, manifest = load(EXAMPLES / "orion" / "deploy.toml")
    assert packages_of(topology, manifest) == {"orion-client": {"orion-runner"}}
    pkg = manifest.packages["orion-runner"]
    mappings = {m.src: m.dst for m in pkg.source.paths}
    assert mappings["runner-config/.env.prod"] == ".env"  # shipped under its deployed name
    assert {"scorpio.toml", "run.sh", "orion"} <= set(mappings.values())
    svc = pkg.service
    assert svc is not None
    assert (svc.user, svc.group, svc.restart, svc.restart_sec) == ("orion", "orion", "on-failure", 5)
    assert svc.limits == {"nofile": 10485760, "nproc": 1048576}
    assert svc.log_file == "/var/log/orion-runner.log"
    assert svc.working_dir == "{{ install_dir }}/current/orion-runner"
    runner = next(p for p in manifest.prereqs if p.target == "runner")
    assert {"fuse3", "git"} <= set(runner.apt)
    assert [u.name for u in runner.users] == ["orion"]
    owned = {d.path for d in runner.dirs if d.owner == "orion"}
    assert {"/data/scorpio/store", "/data/scorpio/tmp_build", "/data/scorpio/antares/mnt", "/workspace/mount"} <= owned


# ------------------------------------------------------------------------------ 001 GitMirror


def test_gitmirror_only_the_coordinator_runs_the_coordinator() -> None:
    topology, manifest = load(EXAMPLES / "gitmirror" / "deploy.toml")
    assert packages_of(topology, manifest) == {
        "coord1": {"gitmirror-coordinator"},
        "worker1": {"gitmirror-worker"},
        "worker2": {"gitmirror-worker"},
        "worker3": {"gitmirror-worker"},
    }
    coordinator = manifest.packages["gitmirror-coordinator"].service
    worker = manifest.packages["gitmirror-worker"].service
    assert coordinator is not None and worker is not None
    assert coordinator.health is not None
    assert coordinator.health.url == "http://{{ server.addr }}:8089/api/status"
    assert worker.after == ("gitmirror-coordinator",)


def test_gitmirror_every_worker_config_names_the_coordinator(example_copy: Callable[[str], Path]) -> None:
    topology, _, overlay = render(example_copy("gitmirror"))
    coordinator = topology.servers["coord1"].addr
    config = yaml_scalars(overlay_text(overlay, "coord1", "files/gitmirror/config.yaml"))
    assert config["coor_ip_addr"] == f"{coordinator}:5555"
    for worker in ("worker1", "worker2", "worker3"):
        config = yaml_scalars(overlay_text(overlay, worker, "files/gitmirror/config.yaml"))
        assert config["where_coor_ip_addr"] == f"{coordinator}:5555"
        assert "coor_ip_addr" not in config


def test_gitmirror_worker_configs_follow_a_moved_coordinator(example_copy: Callable[[str], Path]) -> None:
    config = example_copy("gitmirror")
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('addr = "192.0.2.20"', 'addr = "192.0.2.99"'), encoding="utf-8")
    _, _, overlay = render(config)
    for worker in ("worker1", "worker2", "worker3"):
        config_yaml = yaml_scalars(overlay_text(overlay, worker, "files/gitmirror/config.yaml"))
        assert config_yaml["where_coor_ip_addr"] == "192.0.2.99:5555"


# ------------------------------------------------------------------------------ 002 Fustor


def test_fustor_packages_secrets_and_prereqs() -> None:
    topology, manifest = load(EXAMPLES / "fustor" / "deploy.toml")
    assert packages_of(topology, manifest) == {
        "fusion1": {"fustor-fusion"},
        "agent1": {"fustor-agent"},
        "agent2": {"fustor-agent"},
        "agent3": {"fustor-agent"},
    }
    push_key = manifest.secrets["push_key"]
    assert (push_key.roles, push_key.visible_to) == (("agent",), ("fusion",))
    agent = next(p for p in manifest.prereqs if p.target == "agent")
    assert agent.sysctl == {"fs.inotify.max_user_watches": "10000000"}
    for name in ("fustor-fusion", "fustor-agent"):
        svc = manifest.packages[name].service
        assert svc is not None
        assert (svc.restart, svc.restart_sec) == ("always", 5)
        assert svc.environment["PYTHONUNBUFFERED"] == "1"


def test_fustor_agents_hold_only_their_own_key_and_fusion_lists_all(example_copy: Callable[[str], Path]) -> None:
    topology, _, overlay = render(example_copy("fustor"))
    agents = ("agent1", "agent2", "agent3")
    keys = {a: overlay_text(overlay, a, "secrets/push_key").strip() for a in agents}
    assert len(set(keys.values())) == 3 and all(len(k) == 64 for k in keys.values())
    fusion_addr = topology.servers["fusion1"].addr
    for agent in agents:
        config = overlay_text(overlay, agent, "files/fustor/agent.yaml")
        assert f'credential: {{ key: "{keys[agent]}" }}' in config
        assert f'uri: "http://{fusion_addr}:18888"' in config
        for other in agents:
            if other != agent:
                assert keys[other] not in config, f"{agent}'s config holds {other}'s key"
        assert not (overlay / agent / "secrets" / "view_key").exists()
    fusion = overlay_text(overlay, "fusion1", "files/fustor/fusion.yaml")
    for agent in agents:
        assert f'- key: "{keys[agent]}"\n        pipe_id: "pipe-{agent}"' in fusion
        assert f"  pipe-{agent}:" in fusion
    assert not (overlay / "fusion1" / "secrets" / "push_key").exists()
    view_key = overlay_text(overlay, "fusion1", "secrets/view_key").strip()
    assert view_key in fusion
    assert all(view_key not in overlay_text(overlay, a, "files/fustor/agent.yaml") for a in agents)


# ------------------------------------------------------------------------------ 003 NativeLink


def test_nativelink_packages_follow_roles_and_workers_wait_for_the_scheduler() -> None:
    topology, manifest = load(EXAMPLES / "nativelink" / "deploy.toml")
    assert packages_of(topology, manifest) == {
        "redis1": {"nativelink-redis"},
        "minio1": {"minio"},
        "cas1": {"juicefs-mount", "nativelink-cas"},
        "sched1": {"nativelink-scheduler"},
        "worker1": {"juicefs-mount", "nativelink-worker"},
        "worker2": {"juicefs-mount", "nativelink-worker"},
        "worker3": {"juicefs-mount", "nativelink-worker"},
    }
    worker = manifest.packages["nativelink-worker"].service
    scheduler = manifest.packages["nativelink-scheduler"].service
    assert worker is not None and scheduler is not None
    assert "nativelink-scheduler" in worker.after
    assert scheduler.health is not None and scheduler.health.url is not None


def test_nativelink_worker_configs_name_scheduler_and_cas(example_copy: Callable[[str], Path]) -> None:
    topology, _, overlay = render(example_copy("nativelink"))
    scheduler, cas = topology.servers["sched1"].addr, topology.servers["cas1"].addr
    redis_password = overlay_text(overlay, "redis1", "secrets/redis_password").strip()
    minio_key = overlay_text(overlay, "minio1", "secrets/minio_secret_key").strip()
    for worker in ("worker1", "worker2", "worker3"):
        config = json.loads(overlay_text(overlay, worker, "files/nativelink/worker.json5"))
        local = config["workers"][0]["local"]
        assert local["worker_api_endpoint"]["uri"] == f"grpc://{scheduler}:50061"
        grpc_stores = [s["grpc"] for s in config["stores"] if "grpc" in s]
        assert {e["address"] for s in grpc_stores for e in s["endpoints"]} == {f"grpc://{cas}:50051"}
        volume = env_file(overlay_text(overlay, worker, "files/juicefs/volume.env"))
        assert volume["META_PASSWORD"] == redis_password
        assert minio_key not in overlay_text(overlay, worker, "files/juicefs/volume.env")
    assert env_file(overlay_text(overlay, "cas1", "files/juicefs/volume.env"))["SECRET_KEY"] == minio_key
    for server, name in (("cas1", "cas"), ("sched1", "scheduler")):
        json.loads(overlay_text(overlay, server, f"files/nativelink/{name}.json5"))  # valid JSON (so JSON5)


def test_nativelink_scales_by_adding_a_worker_to_the_topology(example_copy: Callable[[str], Path]) -> None:
    config = example_copy("nativelink")
    text = config.read_text(encoding="utf-8").replace('"worker3"]', '"worker3", "worker4"]')
    text += '\n[servers.worker4]\naddr = "192.0.2.54"\nuser = "deploy"\nroles = ["worker"]\nprivilege = "sudo"\n'
    config.write_text(text, encoding="utf-8")
    topology, manifest = load(config)
    assert run_check(topology, manifest).warnings == []
    assert packages_of(topology, manifest)["worker4"] == {"juicefs-mount", "nativelink-worker"}
    _, _, overlay = render(config)
    worker4 = json.loads(overlay_text(overlay, "worker4", "files/nativelink/worker.json5"))
    assert worker4["workers"][0]["local"]["worker_api_endpoint"]["uri"] == "grpc://192.0.2.43:50061"


# ------------------------------------------------------------------------------ 004 thing-flinger


def test_thing_flinger_layout() -> None:
    topology, manifest = load(EXAMPLES / "thing-flinger" / "deploy.toml")
    assert topology.deployment.threshold == 2
    assert topology.builder.server not in topology.deployment.servers
    assert packages_of(topology, manifest) == {s: {"sled-agent"} for s in ("sled1", "sled2", "sled3")}
    rss = [s.name for s in topology.deployment_servers() if "rss" in s.roles]
    assert rss == ["sled1"]
    overlay_roles = {o.dest: o.roles for o in manifest.packages["sled-agent"].overlay}
    assert overlay_roles["sled-agent/config-rss.toml"] == ("rss",)


def test_thing_flinger_only_the_rss_server_gets_config_rss(example_copy: Callable[[str], Path]) -> None:
    _, _, overlay = render(example_copy("thing-flinger"))
    for sled in ("sled1", "sled2", "sled3"):
        config = tomllib.loads(overlay_text(overlay, sled, "files/sled-agent/config.toml"))
        assert config["id"] == sled
        assert config["trust_quorum"]["threshold"] == 2
        assert {p["id"] for p in config["peers"]} == {"sled1", "sled2", "sled3"} - {sled}
        assert (overlay / sled / "share.json").is_file()
        has_rss = (overlay / sled / "files" / "sled-agent" / "config-rss.toml").exists()
        assert has_rss == (sled == "sled1"), sled
    rss = tomllib.loads(overlay_text(overlay, "sled1", "files/sled-agent/config-rss.toml"))
    assert [r["sled"] for r in rss["requests"]] == ["sled1", "sled2", "sled3"]
    shares = {json.loads(overlay_text(overlay, s, "share.json"))["index"] for s in ("sled1", "sled2", "sled3")}
    assert len(shares) == 3


# ------------------------------------------------------------------------------ deploy install --dry-run


def dry_run_missing() -> str | None:
    """Why `flinger deploy install --dry-run` cannot run yet, or None when it can."""
    group = typer.main.get_command(app)
    deploy = getattr(group, "commands", {}).get("deploy")
    if deploy is None:
        return "the command `flinger deploy` does not exist yet"
    install = getattr(deploy, "commands", {}).get("install")
    if install is None:
        return "the command `flinger deploy install` does not exist yet"
    if not any("--dry-run" in p.opts for p in install.params):
        return "the option `flinger deploy install --dry-run` does not exist yet"
    return None


EXPECTED_PACKAGES = {
    "orion": {"orion-client": ["orion-runner"]},
    "gitmirror": {"coord1": ["gitmirror-coordinator"], "worker1": ["gitmirror-worker"]},
    "fustor": {"fusion1": ["fustor-fusion"], "agent2": ["fustor-agent"]},
    "nativelink": {"sched1": ["nativelink-scheduler"], "worker3": ["juicefs-mount", "nativelink-worker"]},
    "thing-flinger": {"sled1": ["sled-agent"], "sled3": ["sled-agent"]},
}


# GUARD: skips only while `deploy install --dry-run` is missing; remove it once the command is in.
@pytest.mark.parametrize("name", SEEDS)
def test_dry_run_plans_every_server(
    name: str, example_copy: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = dry_run_missing()
    if missing is not None:
        pytest.skip(missing)
    config = example_copy(name)
    status = run(["-c", str(config), "--json", "deploy", "install", "--dry-run", "--offline"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    document = json.loads(captured.out)
    assert document["dry_run"] is True
    plans = {entry["server"]: entry for entry in document["servers"]}
    topology, _ = load(config)
    assert sorted(plans) == sorted(topology.deployment.servers)
    for server, packages in EXPECTED_PACKAGES[name].items():
        install = next(step for step in plans[server]["steps"] if step["step"] == "install")
        assert sorted(install["packages"]) == packages
    if name == "nativelink":
        assert all(plans[w]["wave"] > plans["sched1"]["wave"] for w in ("worker1", "worker2", "worker3"))
