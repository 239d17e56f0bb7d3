"""Time `flinger deploy install` of the example quorum system to 1, 4, 8 and 16 sandbox servers
against plain OpenSSH doing the same copy/unpack/restart one server after another, measured in
the same run on the same sandbox, so the results read as ratios.

    python benchmarks/deploy_bench.py [--sizes 1,4,8,16] [--repeat 3] [--repeat-large 1]
                                      [--large-from 16] [--dir D] [--base-addr A]

Needs root (the sandbox). It starts one sandbox of max(sizes) + 1 hosts, then `trust`, `sync`
and `build package` once with the sandbox's deploy.toml (the repository's own
packaging/package-manifest.toml). Per size N it writes a deploy.toml whose deployment is
node1..nodeN (node1, node2 for N = 1: a single deployment server gets no share, and a quorum
node needs one; threshold: a majority), runs `overlay` for it, and per repetition times, as wall
clock of the whole subprocess or loop:
  fresh       `flinger --json deploy install --servers node1,..,nodeN` on servers with
              nothing installed or staged
  rerun       `flinger --json deploy install` again, nothing changed
  clean       `flinger --json deploy clean` (services stopped, install and staging removed)
  ssh fresh   for each server in turn: one `scp` of the package tarball (copied out of the
              builder's artifacts dir) and of that server's overlay dir, then one `ssh` that
              unpacks into a new release dir, switches the `current` link, writes
              /etc/sv/quorum/{run,finish} as flinger renders them, links /etc/service/quorum,
              waits for runsv, `sv up` (or `sv restart` when already supervised), then polls
              https://ADDR:8443/status (curl -k, every 0.5 s as the manifest's health check)
  ssh again   the same loop again: it has no way to know nothing changed, so it copies,
              unpacks and restarts again
The ssh baseline's remote script also stamps its phases on each server (unpack and links, wait
for runsv to pick the service up, `sv -w` start, health polling); what they leave of the wall
time is the scp and ssh connections. The baseline is then removed (untimed) before the next
repetition. Sizes from
--large-from on get --repeat-large repetitions (to bound the run time); medians are reported.
The sandbox is always brought down (and its directory purged) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flinger import sandbox  # noqa: E402
from flinger.sandbox import SandboxState  # noqa: E402

INSTALL_DIR = "/opt/quorum"  # the overlay's config.json names this path: both ways install here
QUORUM_PORT = 8443
HEALTH_INTERVAL = 0.5  # the manifest's health check interval
FLINGER_TIMEOUT = 60  # seconds; 5 times the slowest run seen here, so only a hang reaches it
FLINGER_ATTEMPTS = 4
# What flinger renders for the quorum service under runit (same text, same install_dir).
RUN_SCRIPT = f"""#!/bin/sh
# quorum: installed by the deploy benchmark's ssh baseline
exec 2>&1
cd {INSTALL_DIR}/current/quorum || exit 1
export PYTHONUNBUFFERED=1
exec /usr/bin/python3 {INSTALL_DIR}/current/quorum/bin/quorum.py \
  --config {INSTALL_DIR}/current/overlay/files/quorum/config.json
"""
# What the baseline's remote script times on each server, in order.
PHASES = ("unpack+link", "wait runsv", "sv start", "health")
FINISH_SCRIPT = "#!/bin/sh\n# quorum: runsv runs this after `run` exits\nexec sleep 2\n"


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def checked(argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    """Run argv; raise with its output when it fails (a failed run is not a measurement)."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, input=stdin, timeout=600,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def listening(addr: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((addr, port)) == 0


def baseline_install_script(server: str, addr: str, release: str) -> str:
    """The shell run on one server by the ssh baseline (every value quoted)."""
    q = shlex.quote
    rel = f"{INSTALL_DIR}/releases/{release}"
    return f"""set -e
t0=$(date +%s.%N)
mkdir -p {q(rel)}/quorum
tar xzf /root/quorum.tar.gz -C {q(rel)}/quorum
mv /root/{q(server)} {q(rel)}/overlay
chmod 700 {q(rel)}/overlay
ln -sfn {q('releases/' + release)} {INSTALL_DIR}/current.new
mv -T {INSTALL_DIR}/current.new {INSTALL_DIR}/current
mkdir -p /etc/sv/quorum /etc/service
printf '%s' {q(RUN_SCRIPT)} > /etc/sv/quorum/run.new
printf '%s' {q(FINISH_SCRIPT)} > /etc/sv/quorum/finish.new
chmod 755 /etc/sv/quorum/run.new /etc/sv/quorum/finish.new
mv /etc/sv/quorum/run.new /etc/sv/quorum/run
mv /etc/sv/quorum/finish.new /etc/sv/quorum/finish
if [ -L /etc/service/quorum ]; then action=restart; else action=up; ln -s /etc/sv/quorum /etc/service/quorum; fi
t1=$(date +%s.%N)
i=0
until sv status /etc/sv/quorum >/dev/null 2>&1; do
  i=$((i+1)); [ "$i" -lt 300 ] || {{ echo "no runsv for quorum" >&2; exit 1; }}; sleep 0.1
done
t2=$(date +%s.%N)
sv -w 30 "$action" /etc/sv/quorum >/dev/null
t3=$(date +%s.%N)
i=0
until curl -ksf -o /dev/null {q(f'https://{addr}:{QUORUM_PORT}/status')}; do
  i=$((i+1)); [ "$i" -lt 120 ] || {{ echo "quorum not healthy" >&2; exit 1; }}; sleep {HEALTH_INTERVAL}
done
rm -f /root/quorum.tar.gz
echo "phases $t0 $t1 $t2 $t3 $(date +%s.%N)"
"""


BASELINE_REMOVE_SCRIPT = f"""
if [ -L /etc/service/quorum ]; then
  sv down /etc/sv/quorum >/dev/null 2>&1 || true
  rm /etc/service/quorum
  sv exit /etc/sv/quorum >/dev/null 2>&1 || true
  i=0; while sv status /etc/sv/quorum >/dev/null 2>&1 && [ "$i" -lt 100 ]; do i=$((i+1)); sleep 0.1; done
fi
rm -rf /etc/sv/quorum {INSTALL_DIR}
"""


class DeployFailed(Exception):
    """flinger reported a failed server: the run is not a measurement, but worth reporting."""


class DeployBench:
    """One sandbox, the built package, and the two ways of deploying it to node1..nodeN."""

    def __init__(self, state: SandboxState, work: Path) -> None:
        self.state = state
        self.work = work
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        self.tarball = work / "quorum.tar.gz"
        self.runs = 0
        self.failures: list[str] = []  # flinger runs that failed and were retried

    def flinger_timed(self, config: Path, action: str, nodes: list[str], changed: bool | None) -> float | None:
        """Seconds of one successful run; a failed one is reported, cleaned up when it was an
        install from scratch, and tried again; None when every attempt failed."""
        for attempt in range(FLINGER_ATTEMPTS):
            try:
                return timed(lambda: self.flinger_deploy(config, action, nodes, changed))
            except DeployFailed as failure:
                self.failures.append(f"{len(nodes)} servers: {failure}")
                print(f"    FAILED (attempt {attempt + 1}), retrying: {failure}", flush=True)
                if action == "install" and changed:
                    self.flinger_deploy(config, "clean", nodes, None)
                    self.assert_nothing_serves(nodes)
        self.failures.append(f"{len(nodes)} servers: deploy {action} gave up after {FLINGER_ATTEMPTS} attempts")
        return None

    def flinger(self, config: Path, *args: str) -> str:
        return checked([sys.executable, "-m", "flinger", "-c", str(config), *args], self.env)

    def prepare(self) -> None:
        """trust, sync and build once; copy the tarball out of the builder's artifacts dir."""
        main = self.state.config_path
        for step in (["trust"], ["sync"], ["build", "package"]):
            self.flinger(main, *step)
        # The builder's /root is the bind mount of <sandbox>/hosts/build1/root.
        built = self.state.directory / "hosts" / "build1" / "root" / "src" / "out" / "packages" / "quorum.tar.gz"
        shutil.copyfile(built, self.tarball)

    def config_for(self, n: int) -> Path:
        """A deploy.toml in its own dir (so its overlay state is its own) deploying node1..nodeN,
        or node1 and node2 for N = 1: with a single deployment server `overlay` makes no share,
        and a quorum node without share.json does not start."""
        directory = self.work / f"n{n}"
        directory.mkdir(mode=0o700)
        doc = tomlkit.parse(self.state.config_path.read_text())
        deployed = self.state.nodes[: max(n, 2)]
        doc["deployment"]["servers"] = deployed
        doc["deployment"]["threshold"] = len(deployed) // 2 + 1
        path = directory / "deploy.toml"
        path.write_text(tomlkit.dumps(doc))
        self.flinger(path, "overlay")
        return path

    def flinger_deploy(self, config: Path, action: str, nodes: list[str], changed: bool | None) -> None:
        argv = [sys.executable, "-m", "flinger", "-c", str(config), "--json", "deploy", action,
                "--servers", ",".join(nodes)]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL,
                                  timeout=FLINGER_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise DeployFailed(f"deploy {action}: still running after {FLINGER_TIMEOUT} s, killed") from None
        try:
            report = json.loads(done.stdout)
        except ValueError:
            raise SystemExit(f"deploy {action}: no JSON report ({done.returncode}): {done.stderr[-3000:]}") from None
        failed = [s for s in report.get("servers", []) if s.get("status") != "ok"]
        if report.get("exit_status") != 0 and failed:
            raise DeployFailed(f"deploy {action}: " + "; ".join(
                f"{s['server']} at {s.get('step')}: {s.get('message')} ({' | '.join(s.get('tail') or [])[:300]})"
                for s in failed))  # fmt: skip
        servers = report["servers"]
        if report["exit_status"] != 0 or sorted(s["server"] for s in servers) != sorted(nodes):
            raise SystemExit(f"deploy {action} did not succeed on exactly {nodes}: {json.dumps(report)[:3000]}")
        if any(s["status"] != "ok" for s in servers):
            raise SystemExit(f"deploy {action} failed on a server: {json.dumps(report)[:3000]}")
        if changed is not None and any(bool(s["details"].get("changed")) != changed for s in servers):
            raise SystemExit(f"deploy {action}: expected changed={changed}: {json.dumps(report)[:3000]}")

    def ssh_argv(self, name: str) -> list[str]:
        return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.state.known_hosts}"]  # fmt: skip

    def baseline_install(self, config: Path, nodes: list[str]) -> dict[str, float]:
        """Install on each node in turn; return the seconds spent in each phase on the servers
        (summed over the nodes)."""
        self.runs += 1
        phases = dict.fromkeys(PHASES, 0.0)
        release = f"bench-{os.getpid()}-{self.runs}"
        overlay_root = config.parent / ".flinger" / "sandbox" / "overlay"
        for name in nodes:
            addr, port = self.state.hosts[name]
            checked(["scp", "-q", "-rp", *self.ssh_argv(name), "-P", str(port),
                     str(self.tarball), str(overlay_root / name), f"root@{addr}:/root/"], self.env)  # fmt: skip
            out = checked(["ssh", *self.ssh_argv(name), "-p", str(port), f"root@{addr}", "sh", "-s"], self.env,
                          stdin=baseline_install_script(name, addr, release))  # fmt: skip
            stamps = [float(t) for t in out.split("phases ", 1)[1].split()]
            for phase, start, end in zip(PHASES, stamps[:-1], stamps[1:], strict=True):
                phases[phase] += end - start
        return phases

    def baseline_remove(self, nodes: list[str]) -> None:
        for name in nodes:
            addr, port = self.state.hosts[name]
            checked(["ssh", *self.ssh_argv(name), "-p", str(port), f"root@{addr}", "sh", "-s"], self.env,
                    stdin=BASELINE_REMOVE_SCRIPT)  # fmt: skip

    def assert_nothing_serves(self, nodes: list[str]) -> None:
        """A quorum left running would answer the next health check: refuse to measure then."""
        deadline = time.monotonic() + 10
        while busy := [n for n in nodes if listening(self.state.hosts[n].addr, QUORUM_PORT)]:
            if time.monotonic() > deadline:
                raise SystemExit(f"quorum still serving on {busy} after removal")
            time.sleep(0.2)


# label -> phase -> one sum per run; "scp+ssh" is what the phases on the servers do not cover.
Breakdown = dict[str, dict[str, list[float]]]


def measure(bench: DeployBench, n: int, repeat: int) -> tuple[dict[str, list[float]], Breakdown]:
    nodes = bench.state.nodes[:n]
    config = bench.config_for(n)
    times: dict[str, list[float]] = {k: [] for k in ("fresh", "rerun", "clean", "ssh fresh", "ssh again")}
    breakdown: Breakdown = {k: {p: [] for p in ("scp+ssh", *PHASES)} for k in ("ssh fresh", "ssh again")}
    last: dict[str, float | None] = {}  # this repetition's figures, for the progress line
    for rep in range(repeat):
        last.clear()

        def flinger_round() -> None:
            bench.assert_nothing_serves(nodes)
            for label, action, changed in (("fresh", "install", True), ("rerun", "install", False),
                                           ("clean", "clean", None)):  # fmt: skip
                seconds = last[label] = bench.flinger_timed(config, action, nodes, changed)
                if seconds is not None:
                    times[label].append(seconds)

        def ssh_round() -> None:
            bench.assert_nothing_serves(nodes)
            for label in ("ssh fresh", "ssh again"):
                start = time.perf_counter()
                phases = bench.baseline_install(config, nodes)
                times[label].append(time.perf_counter() - start)
                last[label] = times[label][-1]
                breakdown[label]["scp+ssh"].append(times[label][-1] - sum(phases.values()))
                for phase, seconds in phases.items():
                    breakdown[label][phase].append(seconds)
            bench.baseline_remove(nodes)

        for run in (flinger_round, ssh_round) if rep % 2 == 0 else (ssh_round, flinger_round):
            run()
        print(f"  {n:>3} servers, repetition {rep + 1}: "
              + ", ".join(f"{k} failed" if v is None else f"{k} {v:.2f} s" for k, v in last.items()),
              flush=True)  # fmt: skip
    return times, breakdown


def print_table(results: dict[int, dict[str, list[float]]], breakdowns: dict[int, Breakdown]) -> None:
    med = {n: {k: statistics.median(v) if v else float("nan") for k, v in r.items()} for n, r in results.items()}
    first = min(med)
    print()
    print("| servers | reps | flinger fresh (s) | ssh fresh (s) | fresh: flinger / ssh "
          "| flinger rerun (s) | ssh again (s) | rerun: flinger / ssh | flinger clean (s) "
          "| growth fresh flinger / ssh |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, m in sorted(med.items()):
        print(
            f"| {n} | {len(results[n]['fresh'])} | {m['fresh']:.2f} | {m['ssh fresh']:.2f} "
            f"| {m['fresh'] / m['ssh fresh']:.2f} | {m['rerun']:.2f} | {m['ssh again']:.2f} "
            f"| {m['rerun'] / m['ssh again']:.2f} | {m['clean']:.2f} "
            f"| x{m['fresh'] / med[first]['fresh']:.2f} / x{m['ssh fresh'] / med[first]['ssh fresh']:.2f} |"
        )
    print("\nssh baseline, where the time goes (median over runs of the sum over servers, s):")
    print("| servers | run | " + " | ".join(("scp+ssh", *PHASES)) + " |")
    print("|---|---|" + "---|" * (len(PHASES) + 1))
    for n, per_label in sorted(breakdowns.items()):
        for label, phases in per_label.items():
            print(f"| {n} | {label} | " + " | ".join(f"{statistics.median(v):.2f}" for v in phases.values()) + " |")
    print("\nall runs (s):")
    for n, r in sorted(results.items()):
        print(f"  {n}: " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in r.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8,16", help="numbers of servers, comma separated")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per size (median reported)")
    parser.add_argument("--repeat-large", type=int, default=1, help="repetitions for sizes >= --large-from")
    parser.add_argument("--large-from", type=int, default=16, help="first size counted as large")
    parser.add_argument("--dir", type=Path, default=Path(f"/var/lib/flinger-bench-deploy-{os.getpid()}"),
                        help="sandbox directory (not under /root, /opt, /srv)")
    parser.add_argument("--base-addr", default="127.77.201.0", help="sandbox address range (hosts get base+1..)")
    parser.add_argument("--keep-logs", type=Path, help="copy flinger's per-server deploy logs here, per size")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if os.geteuid() != 0:
        raise SystemExit("the sandbox needs root")
    if args.dir.exists():
        raise SystemExit(f"{args.dir} exists: give a fresh --dir")

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"sandbox: {max(sizes) + 1} hosts in {args.dir}; sizes {sizes}", flush=True)
    try:
        state = sandbox.up(args.dir, max(sizes) + 1, base_addr=args.base_addr)
        work = args.dir / "bench"
        work.mkdir(mode=0o700)
        bench = DeployBench(state, work)
        bench.prepare()
        print(f"package: {bench.tarball.stat().st_size} bytes", flush=True)
        results, breakdowns = {}, {}
        for n in sizes:
            results[n], breakdowns[n] = measure(bench, n, args.repeat_large if n >= args.large_from else args.repeat)
        print(f"load average after: {os.getloadavg()}")
        print_table(results, breakdowns)
        print(f"\nflinger runs that failed and were retried: {len(bench.failures)}")
        for failure in bench.failures:
            print(f"  {failure}")
    finally:
        if args.keep_logs is not None:
            for logs in sorted((args.dir / "bench").glob("n*/.flinger/sandbox/logs")):
                shutil.copytree(logs, args.keep_logs / logs.parents[2].name, dirs_exist_ok=True)
        sandbox.down(args.dir, purge=True)
        shutil.rmtree(args.dir / "bench", ignore_errors=True)  # ours; purge leaves the dir if not empty
        args.dir.rmdir()


if __name__ == "__main__":
    main()
