"""`flinger-sandbox demo`: the whole workflow on the embedded default, a local sandbox.

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

from flinger.errors import ExitStatus, FlingerError, UsageError

QUORUM = "quorum"  # the default: the repository's own example system (packaging/ at the top)


@dataclass
class DemoStep:
    title: str
    argv: list[str]


@dataclass
class DemoReport:
    steps: list[tuple[str, int]] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)


def demo_steps(config: Path, *, example: bool = False) -> list[DemoStep]:
    """The workflow; for a seed example, install-prereqs leaves out the manifest's scripts:
    they fetch the real software (from its vendor, PyPI, rustup...), which this sandbox cannot
    reach and the examples' stand-ins replace."""
    c = ["-c", str(config)]
    prereqs = DemoStep("install prerequisites on the builder and servers", [*c, "install-prereqs"])
    if example:
        prereqs = DemoStep(
            "install prerequisites (not the scripts that fetch the real software)",
            [*c, "install-prereqs", "--skip-scripts"],
        )
    return [
        DemoStep("validate the topology and the package manifest", [*c, "check"]),
        DemoStep("trust the sandbox hosts' keys (explicit first use)", [*c, "trust"]),
        DemoStep("run a command on every server in parallel", [*c, "exec", "uname -n; id -un"]),
        DemoStep("sync the source tree to the builder", [*c, "sync"]),
        prereqs,
        DemoStep("build the packages on the builder", [*c, "build", "package"]),
        DemoStep("make each server's overlay (shares, certificates, configs)", [*c, "overlay"]),
        DemoStep("install on every server in parallel", [*c, "deploy", "install"]),
        DemoStep("show what is installed and running", [*c, "deploy", "status"]),
    ]


def examples() -> list[str]:
    """The seed examples `demo --example` can deploy (examples/NAME/deploy.toml)."""
    from flinger_sandbox.config import repository_root

    root = repository_root() / "examples"
    return sorted([QUORUM, *(p.parent.name for p in root.glob("*/deploy.toml"))])


def example_path(name: str) -> Path:
    from flinger_sandbox.config import repository_root

    if name not in examples():
        raise UsageError(f'no example named "{name}": choose one of {", ".join(examples())}')
    return repository_root() / "examples" / name


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
    example: str | None = None,
    wait_unsealed: float = 60.0,
) -> DemoReport:
    """Run every step; stop at the first that fails (its exit status is raised).

    With `example`, deploy that seed example (examples/NAME) instead of the quorum system:
    the sandbox gets one host per server of its topology."""
    import os
    import time

    import flinger_sandbox as sandbox
    from flinger.topology import load_topology
    from flinger_sandbox.config import example_config
    from flinger_sandbox.paths import SandboxPaths

    report = DemoReport()
    example_dir = example_path(example) if example and example != QUORUM else None
    if example_dir is not None:
        servers = max(2, len(load_topology(example_dir / "deploy.toml").servers))
    say(f"== 1. start a local sandbox of {servers} {init} hosts in {directory}")
    state = sandbox.up(directory, servers, init=init)
    os.environ["SSH_AUTH_SOCK"] = str(state.directory / "agent.sock")
    report.steps.append(("sandbox up", 0))
    config = state.config_path
    if example_dir is not None:
        config = example_config(example_dir, SandboxPaths(state.directory), state.hosts, init)
        say(f"   the {example} example's topology on the sandbox: {config}")
    for number, step in enumerate(demo_steps(config, example=example_dir is not None), start=2):
        say(f"== {number}. {step.title}: flinger {' '.join(step.argv)}")
        code = run(step.argv)
        report.steps.append((step.title, code))
        if code != 0:
            error = FlingerError(f"demo step {number} ({step.title}) failed with exit status {code}")
            error.exit_status = ExitStatus(code) if code in set(ExitStatus) else ExitStatus.FAILED
            raise error
    if example_dir is not None:
        # `deploy status` (step above) fails unless every service runs and passes its check.
        return report
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
