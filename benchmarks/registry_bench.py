"""Bytes the builder sends and wall time of a fresh `flinger deploy install` to N sandbox
servers, the builder pushing to every server ([artifacts] store = "builder") against servers
pulling from the sandbox's OCI registry (store = "registry"), in the same run, on the same
hosts, so the results read as ratios.

    python benchmarks/registry_bench.py [--servers 8,32,100] [--payload-mb 20] [--parallel 16]
                                        [--repeat 2] [--dir D] [--base-addr A]

Needs root (the sandbox). For each N: one runit sandbox of N + 1 hosts with its registry
(CNCF Distribution, TLS, htpasswd), a copy of this source tree whose quorum package also
carries `--payload-mb` of random bytes (so that package bytes, not handshakes, dominate),
`trust`, `sync`, `build package` and `overlay` once. Then per repetition (the order of the
two sides alternates), with nothing installed on any server before each:
  builder     `flinger --json --parallel P deploy install` with store = "builder"
  registry    the same with store = "registry", the registry emptied first (its blobs
              deleted), so the builder publishes the build in every round
Between rounds, untimed: `flinger deploy clean`. The builder's bytes are what flinger reports
(`artifacts.builder_bytes_sent`: rsync's bytes sent to every server, or the bytes the
builder published). Medians. Every sandbox is brought down (and purged) at the end.

What this machine cannot show: every host shares its 2 CPUs and one loopback, so the
builder's uplink, the limit of a real fleet's builder-push, costs nothing extra here; the
wall times measure the CPU work of moving the bytes (TLS or SSH on both ends).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flinger_sandbox as sandbox  # noqa: E402
from flinger_sandbox import SandboxState  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from payload import config_from, payload_tree  # noqa: E402

RUN_TIMEOUT = 900


def checked(argv: list[str], env: dict[str, str]) -> str:
    return harness.checked(argv, env, timeout=RUN_TIMEOUT)


class Bench:
    def __init__(self, state: SandboxState, work: Path, payload_mb: int, parallel: int) -> None:
        self.state = state
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        self.parallel = parallel
        self.nodes = state.nodes
        source = payload_tree(work / "src", payload_mb)  # both configs share one client state: work/.flinger
        self.registry_config = config_from(state.config_path, source, work / "registry.toml")
        self.builder_config = config_from(
            state.config_path, source, work / "builder.toml", artifacts={"store": "builder"}
        )
        self.blobs = sandbox.registry_files(state.directory).data / "docker"
        self.steps: dict[str, dict[str, list[float]]] = {}  # store -> step -> seconds, per server and run

    def flinger(self, config: Path, *args: str) -> str:
        return checked([sys.executable, "-m", "flinger", "-c", str(config), *args], self.env)

    def prepare(self) -> int:
        for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):  # overlay: with the pull credential
            self.flinger(self.registry_config, *step)
        addr, port = self.state.hosts["build1"]
        out = checked(["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                       "-o", f"UserKnownHostsFile={self.state.known_hosts}", "-p", str(port), f"deploy@{addr}",
                       "cat src/out/manifest.json"], self.env)  # fmt: skip
        return int(json.loads(out)["packages"]["quorum"]["size"])

    def install(self, store: str) -> tuple[float, int]:
        config = self.registry_config if store == "registry" else self.builder_config
        if store == "registry":
            shutil.rmtree(self.blobs, ignore_errors=True)  # the builder publishes again
        start = time.perf_counter()
        out = self.flinger(config, "--json", "--parallel", str(self.parallel), "deploy", "install")
        wall = time.perf_counter() - start
        report = json.loads(out)
        servers = report["servers"]
        if report["exit_status"] != 0 or sorted(s["server"] for s in servers) != sorted(self.nodes):
            raise SystemExit(f"deploy install ({store}) did not succeed on {self.nodes}: {out[:3000]}")
        if not all(s["details"].get("changed") for s in servers):
            raise SystemExit(f"deploy install ({store}) was not a fresh install everywhere: {out[:3000]}")
        for server in servers:  # where each server's time went (flinger's own step timeline)
            spent: dict[str, float] = {}
            for step in server.get("steps") or []:
                parts = [p.strip() for p in str(step["step"]).split(":")]  # "install: pull" -> "install pull"
                name = " ".join(parts[:2]) if parts[0] == "install" and len(parts) > 1 else parts[0]
                spent[name] = spent.get(name, 0.0) + float(step["seconds"])
            for name, seconds in spent.items():
                self.steps.setdefault(store, {}).setdefault(name, []).append(seconds)
        if report["artifacts"]["store"] != store:
            raise SystemExit(f"expected store {store}, flinger used {report['artifacts']['store']}")
        self.flinger(config, "--parallel", str(self.parallel), "deploy", "clean")
        return wall, int(report["artifacts"]["builder_bytes_sent"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="8,32,100")
    parser.add_argument("--payload-mb", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=16, help="servers at once (flinger's default)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(f"/var/lib/flinger-bench-registry-{os.getpid()}"))
    parser.add_argument("--base-addr", default="127.77.211.0")
    args = parser.parse_args()
    harness.begin(args.dir)
    rows = []
    for count in (int(n) for n in args.servers.split(",")):
        directory = args.dir / f"n{count}"
        print(f"sandbox: {count + 1} runit hosts and a registry in {directory}", flush=True)
        try:
            state = sandbox.up(directory, count + 1, base_addr=args.base_addr, with_registry=True)
            work = directory / "bench"
            work.mkdir(mode=0o700)
            bench = Bench(state, work, args.payload_mb, args.parallel)
            size = bench.prepare()
            print(f"  package: {size:,} bytes", flush=True)
            walls: dict[str, list[float]] = {"builder": [], "registry": []}
            sent: dict[str, list[int]] = {"builder": [], "registry": []}
            for rep in range(args.repeat):
                for store in ("builder", "registry") if rep % 2 == 0 else ("registry", "builder"):
                    wall, nbytes = bench.install(store)
                    walls[store].append(wall)
                    sent[store].append(nbytes)
                done = ", ".join(f"{k} {walls[k][-1]:.2f} s, {sent[k][-1]:,} bytes" for k in walls)
                print(f"  repetition {rep + 1}: {done}", flush=True)
            print(f"  load average after: {os.getloadavg()}", flush=True)
            for store, steps in bench.steps.items():
                parts = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in steps.items())
                print(f"  {store}: median seconds per server and step: {parts}", flush=True)
            rows.append((count, size, {k: statistics.median(v) for k, v in walls.items()},
                         {k: statistics.median(v) for k, v in sent.items()}))  # fmt: skip
        finally:
            sandbox.down(directory, purge=True)
            shutil.rmtree(directory, ignore_errors=True)
    if args.dir.exists():
        args.dir.rmdir()
    print(
        "\n| servers | package (bytes) | reps | builder-push (s) | registry (s) | registry / builder-push (time) "
        "| builder sent, builder-push (bytes) | builder sent, registry (bytes) | bytes: registry / builder-push |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for count, size, wall, nbytes in rows:
        print(f"| {count} | {size:,} | {args.repeat} | {wall['builder']:.2f} | {wall['registry']:.2f} "
              f"| {wall['registry'] / wall['builder']:.2f} | {int(nbytes['builder']):,} | {int(nbytes['registry']):,} "
              f"| {nbytes['registry'] / max(nbytes['builder'], 1):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
