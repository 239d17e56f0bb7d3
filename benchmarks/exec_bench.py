"""Time `flinger exec "true"` across 1, 4 and 16 sandbox servers against plain OpenSSH, run on all
hosts at once (the floor) and one host after another, measured in the same run on the same
sandbox, so the results read as ratios.

    python benchmarks/exec_bench.py [--sizes 1,4,16] [--repeat 5] [--dir D] [--base-addr A]

Needs root (the sandbox: real sshd hosts in their own mount namespaces). It starts one sandbox
of max(sizes) + 1 hosts (the first is the builder, never used here), trusts the hosts once,
then per size and repetition times, as wall clock of the whole subprocess:
  flinger    `python -m flinger --json exec true --servers node1,..,nodeN` (the real CLI,
             parallel fan-out over OpenSSH; interpreter start and imports included)
  floor      `ssh -F /dev/null -o BatchMode=yes ... deploy@ADDR true` for node1..nodeN, all
             started at once, waited for together (a fresh OpenSSH connection per host, strict
             host keys)
  baseline   the same `ssh` commands one after another
and, repeat times, the CLI floor: `python -c "import flinger.cli.app"` (interpreter
start and the imports every SSH command pays, no network). The order of flinger and baseline
alternates between repetitions. The sandbox is always brought down (and its directory purged).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flinger_sandbox as sandbox  # noqa: E402
from flinger_sandbox import SandboxState  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def flinger_argv(state: SandboxState, *args: str) -> list[str]:
    return [sys.executable, "-m", "flinger", "-c", str(state.config_path), *args]


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def checked(argv: list[str], env: dict[str, str]) -> str:
    return harness.checked(argv, env, timeout=300)


class ExecBench:
    """One sandbox and the two ways of running `true` on a chosen set of its nodes."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        self.slowest_server: list[float] = []  # flinger's own per-server duration, max per run

    def flinger_exec(self, nodes: list[str]) -> None:
        out = checked(flinger_argv(self.state, "--json", "exec", "true", "--servers", ",".join(nodes)), self.env)
        report = json.loads(out)
        servers = report["servers"]
        if report["exit_status"] != 0 or sorted(s["server"] for s in servers) != sorted(nodes):
            raise SystemExit(f"flinger exec did not run on exactly {nodes}: {out[:2000]}")
        if any(s["status"] != "ok" for s in servers):
            raise SystemExit(f"flinger exec failed on a server: {out[:2000]}")
        self.slowest_server.append(max(float(s["duration"]) for s in servers))

    def ssh_argv(self, name: str) -> list[str]:
        addr, port = self.state.hosts[name]
        return [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.state.known_hosts}", "-p", str(port), f"deploy@{addr}", "true",
        ]  # fmt: skip

    def ssh_loop(self, nodes: list[str]) -> None:
        for name in nodes:
            checked(self.ssh_argv(name), self.env)

    def ssh_parallel(self, nodes: list[str]) -> None:
        procs = [
            subprocess.Popen(self.ssh_argv(n), env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
            for n in nodes
        ]  # fmt: skip
        for name, proc in zip(nodes, procs, strict=True):
            _, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise SystemExit(f"ssh to {name} failed ({proc.returncode}): {err.decode()[-2000:]}")

    def cli_floor(self) -> None:
        checked([sys.executable, "-c", "import flinger.cli.app"], self.env)


def measure(bench: ExecBench, sizes: list[int], repeat: int) -> dict[int, dict[str, float]]:
    nodes = bench.state.nodes
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        chosen = nodes[:n]
        flinger_times: list[float] = []
        ssh_times: list[float] = []
        floor_times: list[float] = []
        bench.slowest_server = []
        for rep in range(repeat):
            order = ["flinger", "floor", "ssh"] if rep % 2 == 0 else ["ssh", "floor", "flinger"]
            for label in order:
                if label == "flinger":
                    flinger_times.append(timed(lambda: bench.flinger_exec(chosen)))  # noqa: B023
                elif label == "floor":
                    floor_times.append(timed(lambda: bench.ssh_parallel(chosen)))  # noqa: B023
                else:
                    ssh_times.append(timed(lambda: bench.ssh_loop(chosen)))  # noqa: B023
        results[n] = {
            "flinger": statistics.median(flinger_times),
            "baseline": statistics.median(ssh_times),
            "floor": statistics.median(floor_times),
            "floor_min": min(floor_times),
            "floor_max": max(floor_times),
            "slowest_server": statistics.median(bench.slowest_server),
            "flinger_min": min(flinger_times),
            "flinger_max": max(flinger_times),
            "baseline_min": min(ssh_times),
            "baseline_max": max(ssh_times),
        }
        r = results[n]
        print(
            f"  {n:>3} servers: flinger {r['flinger']:.2f} s, ssh in parallel {r['floor']:.2f} s, "
            f"ssh loop {r['baseline']:.2f} s",
            flush=True,
        )
    return results


def print_table(results: dict[int, dict[str, float]], floor: float) -> None:
    first = min(results)
    print()
    print(
        "| servers | flinger exec (s) | ssh in parallel: floor (s) | flinger / floor | ssh loop (s) "
        "| flinger / ssh loop | flinger growth | ssh loop growth | slowest server inside flinger (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in sorted(results.items()):
        print(
            f"| {n} | {r['flinger']:.2f} ({r['flinger_min']:.2f}-{r['flinger_max']:.2f}) "
            f"| {r['floor']:.2f} ({r['floor_min']:.2f}-{r['floor_max']:.2f}) | {r['flinger'] / r['floor']:.2f} "
            f"| {r['baseline']:.2f} ({r['baseline_min']:.2f}-{r['baseline_max']:.2f}) "
            f"| {r['flinger'] / r['baseline']:.2f} "
            f"| x{r['flinger'] / results[first]['flinger']:.2f} | x{r['baseline'] / results[first]['baseline']:.2f} "
            f"| {r['slowest_server']:.2f} |"
        )
    print(f"\nCLI floor (interpreter + `import flinger.cli.app`, no network): median {floor:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16", help="numbers of servers, comma separated")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per size (median reported)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(f"/var/lib/flinger-bench-exec-{os.getpid()}"),
        help="sandbox directory (not under /root, /opt, /srv)",
    )
    parser.add_argument("--base-addr", default="127.77.200.0", help="sandbox address range (hosts get base+1..)")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    harness.begin(args.dir)
    print(f"sandbox: {max(sizes) + 1} hosts in {args.dir}; sizes {sizes}, {args.repeat} repetitions", flush=True)
    try:
        state = sandbox.up(args.dir, max(sizes) + 1, base_addr=args.base_addr)
        bench = ExecBench(state)
        checked(flinger_argv(state, "trust"), bench.env)
        # Warm the page cache and every sshd once, so the first measured run is not special.
        bench.flinger_exec(state.nodes)
        bench.ssh_loop(state.nodes)
        bench.ssh_parallel(state.nodes)
        bench.slowest_server = []
        floor = statistics.median(timed(bench.cli_floor) for _ in range(args.repeat))
        results = measure(bench, sizes, args.repeat)
        print(f"load average after: {os.getloadavg()}")
        print_table(results, floor)
    finally:
        sandbox.down(args.dir, purge=True)


if __name__ == "__main__":
    main()
