"""`flinger demo`: the whole workflow on the embedded default, a local sandbox.

sandbox up → check → trust → exec → sync → install-prereqs → build package → overlay →
deploy install → deploy status → ask every quorum node for /status over TLS. Each step is
the same code path as the command a user would type (run in-process through the CLI).
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flinger.errors import ExitStatus, FlingerError


@dataclass
class DemoStep:
    title: str
    argv: list[str]


@dataclass
class DemoReport:
    steps: list[tuple[str, int]] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)


def demo_steps(config: Path) -> list[DemoStep]:
    c = ["-c", str(config)]
    return [
        DemoStep("validate the topology and the package manifest", [*c, "check"]),
        DemoStep("trust the sandbox hosts' keys (explicit first use)", [*c, "trust"]),
        DemoStep("run a command on every server in parallel", [*c, "exec", "uname -n; id -un"]),
        DemoStep("sync the source tree to the builder", [*c, "sync"]),
        DemoStep("install prerequisites on the builder and servers", [*c, "install-prereqs"]),
        DemoStep("build the packages on the builder", [*c, "build", "package"]),
        DemoStep("make each server's overlay (shares, certificates, configs)", [*c, "overlay"]),
        DemoStep("install on every server in parallel", [*c, "deploy", "install"]),
        DemoStep("show what is installed and running", [*c, "deploy", "status"]),
    ]


def quorum_status(addr: str, port: int, ca_file: Path, timeout: float = 5.0) -> dict[str, object]:
    """GET https://addr:port/status, verifying the node against the deployment CA."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(f"https://{addr}:{port}/status", context=context, timeout=timeout) as resp:
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise FlingerError(f"{addr}: /status is not a JSON object")
    return data


def run_demo(
    directory: Path,
    servers: int,
    run: Callable[[list[str]], int],
    say: Callable[[str], None],
    *,
    init: str = "runit",
    wait_unsealed: float = 60.0,
) -> DemoReport:
    """Run every step; stop at the first that fails (its exit status is raised)."""
    import os
    import time

    from flinger import sandbox
    from flinger.topology import load_topology

    report = DemoReport()
    say(f"== 1. start a local sandbox of {servers} {init} hosts in {directory}")
    state = sandbox.up(directory, servers, init=init)
    os.environ["SSH_AUTH_SOCK"] = str(state.directory / "agent.sock")
    report.steps.append(("sandbox up", 0))
    for number, step in enumerate(demo_steps(state.config_path), start=2):
        say(f"== {number}. {step.title}: flinger {' '.join(step.argv)}")
        code = run(step.argv)
        report.steps.append((step.title, code))
        if code != 0:
            error = FlingerError(f"demo step {number} ({step.title}) failed with exit status {code}")
            error.exit_status = ExitStatus(code) if code in set(ExitStatus) else ExitStatus.FAILED
            raise error
    topology = load_topology(state.config_path)
    ca = topology.state_dir / "ca" / "ca.pem"
    say(f"== {len(report.steps) + 1}. ask every quorum node for /status over TLS (verified with {ca})")
    deadline = time.monotonic() + wait_unsealed
    for server in topology.deployment_servers():
        while True:
            try:
                state_name = str(quorum_status(server.addr, 8443, ca).get("state"))
            except (OSError, ValueError) as exc:
                state_name = f"unreachable ({exc})"
            if state_name == "unsealed" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report.nodes[server.name] = state_name
    return report
