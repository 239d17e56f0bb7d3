"""install-prereqs plans: which prereqs reach which host, merged, conflicts refused (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from flinger.actions.prereqs import plan_prereqs, summary_text
from flinger.errors import ConfigError
from flinger.manifest import Manifest, load_manifest
from flinger.protocol.messages import plan_line, read_plan
from flinger.protocol.plans import UserSpec
from flinger.topology import Topology, load_topology

TOPOLOGY = """\
source_dir = "src"
manifest = "package-manifest.toml"
[builder]
server = "build1"
source_dir = "$HOME/src"
[deployment]
servers = ["node1", "node2", "build1"]
staging_dir = "/var/tmp/staging"
install_dir = "/opt/q"
threshold = 2
[servers.build1]
addr = "127.0.0.1"
roles = ["builder"]
[servers.node1]
addr = "127.0.0.2"
roles = ["seed", "web"]
[servers.node2]
addr = "127.0.0.3"
roles = ["web"]
service_manager = "smf"
"""

MANIFEST = """\
[packages.app]
source = { type = "local", paths = [{ from = "a", to = "a" }] }

[prereqs.builder]
apt = ["build-essential", "rsync"]
script = "setup/builder.sh"

[prereqs."*"]
apt = ["rsync", "python3"]
pkg = ["runtime/python-39"]
sysctl = { "fs.inotify.max_user_watches" = "524288" }
groups = ["app"]
users = [{ name = "app", group = "app", system = true }]
dirs = [{ path = "/var/lib/app", owner = "app", group = "app", mode = "0750" }]

[prereqs.seed]
apt = ["python3", "sqlite3"]
sysctl = { "net.core.somaxconn" = "1024" }
dirs = [{ path = "/var/lib/app/seed", mode = "0700" }]
script = "setup/seed.sh"

[prereqs.web]
users = [{ name = "app", group = "app", system = true }]
"""


def load(tmp_path: Path, manifest: str = MANIFEST, topology: str = TOPOLOGY) -> tuple[Topology, Manifest]:
    src = tmp_path / "src"
    (src / "setup").mkdir(parents=True)
    (src / "setup" / "builder.sh").write_text("echo builder\n")
    (src / "setup" / "seed.sh").write_text("echo seed\n")
    (src / "package-manifest.toml").write_text(manifest)
    config = tmp_path / "deploy.toml"
    config.write_text(topology)
    topo = load_topology(config)
    return topo, load_manifest(topo.manifest_path)


def test_builder_gets_builder_prereqs_and_servers_get_every_server_plus_roles(tmp_path: Path) -> None:
    topo, manifest = load(tmp_path, topology=TOPOLOGY.replace('"node1", "node2", "build1"', '"node1", "node2"'))
    hosts = plan_prereqs(topo, manifest)
    assert list(hosts) == ["build1", "node1", "node2"]
    plans = {name: host.plan for name, host in hosts.items()}
    assert plans["build1"].apt == ["build-essential", "rsync"]
    assert plans["build1"].users == [] and plans["build1"].sysctl == {}
    assert plans["node1"].apt == ["rsync", "python3", "sqlite3"]  # union, first order kept
    assert plans["node1"].sysctl == {"fs.inotify.max_user_watches": "524288", "net.core.somaxconn": "1024"}
    assert [d.path for d in plans["node1"].dirs] == ["/var/lib/app", "/var/lib/app/seed"]
    assert plans["node2"].sysctl == {"fs.inotify.max_user_watches": "524288"}
    assert [d.path for d in plans["node2"].dirs] == ["/var/lib/app"]
    # the same user declared identically by "*" and "web" is one user
    assert plans["node2"].users == [UserSpec("app", group="app", system=True)]
    assert plans["node1"].dirs[0].mode == 0o750
    assert plans["node2"].os == "illumos" and plans["node1"].os == "auto"


def test_a_server_that_is_builder_and_deployment_server_gets_both(tmp_path: Path) -> None:
    topo, manifest = load(tmp_path)
    plan = plan_prereqs(topo, manifest)["build1"].plan
    assert plan.apt == ["build-essential", "rsync", "python3"]
    assert plan.groups == ["app"]
    assert [s.name for s in plan.scripts] == ["setup/builder.sh"]


def test_scripts_carry_the_client_digest_and_run_from_the_synced_tree_on_the_builder(tmp_path: Path) -> None:
    topo, manifest = load(tmp_path)
    hosts = plan_prereqs(topo, manifest)
    (builder_script,) = hosts["build1"].plan.scripts
    assert builder_script.path == "$HOME/src/setup/builder.sh"
    assert builder_script.cwd == "$HOME/src"
    assert builder_script.sha256 == hashlib.sha256(b"echo builder\n").hexdigest()
    assert hosts["build1"].uploads == {}
    (seed_script,) = hosts["node1"].plan.scripts
    assert seed_script.path.startswith("/var/tmp/staging/prereqs-")
    assert hosts["node1"].uploads == {seed_script.path: (tmp_path / "src" / "setup" / "seed.sh").resolve()}
    assert seed_script.sha256 == hashlib.sha256(b"echo seed\n").hexdigest()
    assert hosts["node2"].plan.scripts == []


def test_conflicting_sysctl_values_are_a_config_error_naming_both(tmp_path: Path) -> None:
    manifest = MANIFEST.replace('"net.core.somaxconn" = "1024"', '"fs.inotify.max_user_watches" = "8192"')
    topo, loaded = load(tmp_path, manifest=manifest)
    with pytest.raises(ConfigError) as err:
        plan_prereqs(topo, loaded)
    assert err.value.key == "prereqs.seed.sysctl.fs.inotify.max_user_watches"
    assert 'conflicts with "524288" from prereqs.*' in err.value.message
    assert "node1" in err.value.message


def test_the_same_dir_declared_differently_is_a_config_error(tmp_path: Path) -> None:
    manifest = MANIFEST.replace('path = "/var/lib/app/seed", mode = "0700"', 'path = "/var/lib/app", mode = "0700"')
    topo, loaded = load(tmp_path, manifest=manifest)
    with pytest.raises(ConfigError) as err:
        plan_prereqs(topo, loaded)
    assert err.value.key == "prereqs.seed.dirs.0"
    assert "/var/lib/app" in err.value.message


def test_prereqs_for_a_role_no_server_has_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    topo, loaded = load(tmp_path, manifest=MANIFEST.replace("[prereqs.seed]", "[prereqs.sed]"))
    with pytest.raises(ConfigError) as err:
        plan_prereqs(topo, loaded)
    assert err.value.key == "prereqs.sed"
    assert 'did you mean "seed"' in err.value.message


def test_a_missing_script_is_a_config_error(tmp_path: Path) -> None:
    topo, loaded = load(tmp_path, manifest=MANIFEST.replace("setup/seed.sh", "setup/nope.sh"))
    with pytest.raises(ConfigError) as err:
        plan_prereqs(topo, loaded)
    assert err.value.key == "prereqs.seed.script"


def test_the_plan_survives_the_wire(tmp_path: Path) -> None:
    topo, loaded = load(tmp_path)
    for host in plan_prereqs(topo, loaded).values():
        assert read_plan("prereqs", plan_line("prereqs", host.plan).decode()) == host.plan


def test_summary_text() -> None:
    assert summary_text(0, 0, 0, check=False) == "no changes"
    assert summary_text(3, 0, 0, check=False) == "3 changed"
    assert summary_text(0, 2, 0, check=True) == "2 would change"
    assert summary_text(0, 0, 0, check=True) == "no changes"
    assert summary_text(1, 0, 1, check=False) == "1 changed, 1 failed"
