"""The deploy.toml a sandbox writes: the builder and nodes as a flinger topology."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

from flinger.errors import FlingerError
from flinger.topology import Topology, load_topology
from flinger_sandbox.keys import write_private_file
from flinger_sandbox.paths import BUILDER_NAME, LOGIN_USER, SandboxPaths
from flinger_sandbox.state import Endpoint

MANIFEST = "packaging/package-manifest.toml"
BUILDER_SOURCE_DIR = "$HOME/src"
STAGING_DIR = "$HOME/flinger-staging"
INSTALL_DIR = "/opt/quorum"
SEED = "node1"


def repository_root() -> Path:
    """The flinger source tree this package runs from (the dir holding pyproject.toml)."""
    here = Path(__file__).resolve()
    for candidate in here.parents:
        if (candidate / "pyproject.toml").is_file() and (candidate / "flinger").is_dir():
            return candidate
    raise FlingerError("flinger does not run from its source tree here: give the sandbox a source_dir")


def render(
    source_dir: Path,
    known_hosts: Path,
    hosts: dict[str, Endpoint],
    init: str = "runit",
    artifacts: dict[str, Any] | None = None,
) -> str:
    """deploy.toml text for `hosts` (builder first, then the nodes), and `artifacts` as its
    [artifacts] table when the sandbox runs a registry."""
    nodes = [name for name in hosts if name != BUILDER_NAME]
    doc = tomlkit.document()
    doc.add(tomlkit.comment("A local sandbox, written by flinger-sandbox up."))
    doc["name"] = "sandbox"
    doc["source_dir"] = str(source_dir)
    doc["manifest"] = MANIFEST

    builder = tomlkit.table()
    builder["server"] = BUILDER_NAME
    builder["source_dir"] = BUILDER_SOURCE_DIR
    builder["artifacts_dir"] = "out"
    doc["builder"] = builder

    deployment = tomlkit.table()
    deployment["servers"] = nodes
    deployment["staging_dir"] = STAGING_DIR
    deployment["install_dir"] = INSTALL_DIR
    deployment["threshold"] = len(nodes) // 2 + 1
    doc["deployment"] = deployment

    ssh = tomlkit.table()
    ssh["known_hosts"] = str(known_hosts)
    ssh["connect_timeout"] = 5
    ssh["use_ssh_config"] = False
    doc["ssh"] = ssh

    if artifacts is not None:
        table = tomlkit.table()
        for key, value in artifacts.items():
            table[key] = value
        doc["artifacts"] = table

    servers = tomlkit.table(is_super_table=True)
    for name, (addr, port) in hosts.items():
        server = tomlkit.table()
        server["addr"] = addr
        server["user"] = LOGIN_USER
        server["port"] = port
        if name == BUILDER_NAME:
            server["roles"] = ["builder"]
        else:
            server["roles"] = ["seed", "node"] if name == SEED else ["node"]
        server["privilege"] = "sudo"
        server["service_manager"] = init
        servers[name] = server
    doc["servers"] = servers
    return tomlkit.dumps(doc)


def write(
    paths: SandboxPaths,
    source_dir: Path,
    hosts: dict[str, Endpoint],
    init: str = "runit",
    artifacts: dict[str, Any] | None = None,
) -> Topology:
    """Write <dir>/deploy.toml and load it back, so a sandbox never hands out a bad config."""
    write_private_file(paths.config, render(source_dir, paths.known_hosts, hosts, init, artifacts), 0o644)
    return load_topology(paths.config)


def example_config(example_dir: Path, sandbox: SandboxPaths, hosts: dict[str, Endpoint], init: str) -> Path:
    """A deploy.toml that deploys the example in `example_dir` onto the sandbox: the example's
    own topology (server names, roles, packages, install_dir...) with each server placed on a
    sandbox host (its builder on the sandbox's builder), logging in as the sandbox login with
    sudo, and the hosts' service manager. Written to <sandbox>/examples/<name>/ so its client
    state (.flinger/) is its own. Returns its path."""
    source = example_dir / "deploy.toml"
    topology = load_topology(source)
    doc = tomlkit.parse(source.read_text(encoding="utf-8"))
    others = [name for name in hosts if name != BUILDER_NAME]
    wanted = [topology.builder.server, *(n for n in topology.servers if n != topology.builder.server)]
    if len(wanted) > len(hosts):
        raise FlingerError(f"the example {example_dir.name} needs {len(wanted)} hosts; the sandbox has {len(hosts)}")
    placed = dict(zip(wanted, [BUILDER_NAME, *others], strict=False))
    doc["source_dir"] = str(example_dir.resolve())
    ssh = doc.get("ssh") or tomlkit.table()
    ssh["known_hosts"] = str(sandbox.known_hosts)
    ssh["use_ssh_config"] = False
    ssh.pop("jump", None)
    doc["ssh"] = ssh
    for name, host in placed.items():
        server = doc["servers"][name]
        addr, port = hosts[host]
        server["addr"] = addr
        server["port"] = port
        server["user"] = LOGIN_USER
        server["privilege"] = "sudo"
        server["service_manager"] = init
        server.pop("host_key", None)
    target = sandbox.directory / "examples" / example_dir.name
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = target / "deploy.toml"
    write_private_file(path, tomlkit.dumps(doc), 0o644)
    load_topology(path)  # never hand out a config that does not load
    return path
