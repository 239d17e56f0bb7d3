"""Time `flinger sync` and `flinger build package` when nothing changed, against the plain
OpenSSH floor for the same work, in the same run on the same sandbox, so they read as ratios.

    python benchmarks/sync_build_bench.py [--repeat 5] [--dir D] [--base-addr A]

Needs root (the sandbox). It starts a sandbox of 2 runit hosts (the builder build1, one node),
runs `trust`, `sync` and `build package` once with the sandbox's deploy.toml (this source
tree, the quorum package), then per repetition (the order of flinger and the floor
alternates) times, as wall clock of the whole subprocess:
  flinger sync     `python -m flinger sync`, nothing changed since the last sync
  floor sync       `rsync -a --compress --delete` of the same tree with the same excludes
                   (.git/, .flinger/, the artifacts dir, the .gitignore filter) over
                   `ssh -F /dev/null` with strict host keys: what rsync itself costs
  flinger build    `python -m flinger build package`, nothing changed (every package cached)
  floor build      one `ssh` to the builder that hashes what a no-change build must read: the
                   quorum package's input files and its recorded tarball (`sha256sum`)
Medians. The sandbox is always brought down (and its directory purged) at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flinger_sandbox as sandbox  # noqa: E402
from flinger.topology import load_topology  # noqa: E402
from flinger_sandbox import SandboxState  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

INPUTS = "examples/quorum/*.py flinger/remote/shamir.py out/packages/quorum.tar.gz"  # the quorum package's


def checked(argv: list[str], env: dict[str, str]) -> str:
    return harness.checked(argv, env)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    checked(argv, env)
    return time.perf_counter() - start


class Bench:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        topology = load_topology(state.config_path)
        self.source = topology.source_dir
        addr, port = state.hosts["build1"]
        self.ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={state.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                    "-p", str(port)]  # fmt: skip
        self.login = f"deploy@{addr}"
        excludes = [".git/", ".flinger/", f"/{topology.builder.artifacts_dir.strip('/')}/", *topology.sync_exclude]
        self.floor_sync_argv = ["rsync", "-a", "--compress", "--delete", "-e", shlex.join(self.ssh)]
        for pattern in excludes:
            self.floor_sync_argv += ["--exclude", pattern]
        if (self.source / ".gitignore").exists():
            self.floor_sync_argv += ["--filter", ":- .gitignore"]
        self.floor_sync_argv += ["--", f"{self.source}/", f"{self.login}:src/"]
        self.floor_build_argv = [*self.ssh, self.login, f"cd src && sha256sum {INPUTS} > /dev/null"]

    def flinger(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flinger", "-c", str(self.state.config_path), *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(f"/var/lib/flinger-bench-sync-{os.getpid()}"))
    parser.add_argument("--base-addr", default="127.77.221.0")
    args = parser.parse_args()
    harness.begin(args.dir)
    try:
        state = sandbox.up(args.dir, 2, base_addr=args.base_addr)
        bench = Bench(state)
        for step in (["trust"], ["sync"], ["build", "package"]):
            checked(bench.flinger(*step), bench.env)
        files = sum(len(f) for _, _, f in os.walk(bench.source))
        print(f"source tree: {bench.source} ({files} files before excludes)", flush=True)
        pairs = {
            "sync": (bench.flinger("sync"), bench.floor_sync_argv),
            "build package": (bench.flinger("build", "package"), bench.floor_build_argv),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"flinger": [], "floor": []} for k in pairs}
        for rep in range(args.repeat):
            for name, (ours, floor) in pairs.items():
                order = (("flinger", ours), ("floor", floor)) if rep % 2 == 0 else (("floor", floor), ("flinger", ours))
                for side, argv in order:
                    times[name][side].append(timed(argv, bench.env))
            done = "; ".join(f"{n} {t['flinger'][-1]:.2f} / {t['floor'][-1]:.2f} s" for n, t in times.items())
            print(f"  repetition {rep + 1} (flinger / floor): {done}", flush=True)
        print(f"load average after: {os.getloadavg()}")
        print("\n| nothing changed | reps | flinger (s) | floor (s) | flinger / floor |")
        print("|---|---|---|---|---|")
        for name, t in times.items():
            ours, floor = statistics.median(t["flinger"]), statistics.median(t["floor"])
            print(f"| {name} | {args.repeat} | {ours:.2f} | {floor:.2f} | {ours / floor:.2f} |")
        for name, t in times.items():
            ours = " ".join(f"{x:.2f}" for x in t["flinger"])
            floor_runs = " ".join(f"{x:.2f}" for x in t["floor"])
            print(f"all runs (s), {name}: flinger {ours}; floor {floor_runs}")
    finally:
        sandbox.down(args.dir, purge=True)


if __name__ == "__main__":
    main()
