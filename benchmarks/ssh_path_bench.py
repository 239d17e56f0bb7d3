"""Time flinger's SSH path: `deploy install` of a one-file package with no service to N runit
sandbox servers, builder store, default parallelism, against the floor in the same run.

    python benchmarks/ssh_path_bench.py [--servers 16] [--kb 100] [--repeat 5] [--dir D] [--base-addr A]

The floor is the client alone doing the same with OpenSSH, `xargs -P 16` over the servers,
each: one ControlMaster connection, `scp` of the package tarball over it, one `ssh` running
`sudo -n sh -s` that unpacks into a new release dir and switches the `current` symlink
(ln -sfn + mv -T). flinger does more (its tool, a lock, receipts, the builder's push over the
forwarded agent, a no-change check), so the ratio is what that costs. Both sides log in as
the sandbox's `deploy` user with `sudo -n` (the sandbox refuses root logins, as a stock
Debian host does). Per repetition (the order alternates): flinger fresh, flinger again
(nothing changed: `changed: false` everywhere); floor fresh, floor again; design floor;
untimed removal between rounds.
flinger also installs each server's overlay (its share of the deployment secret, its TLS key
and certificate: a few KiB), which the floor does not.

The design's floor is the floor with flinger's shape and none of flinger: the builder pushes
(one `scp` a server, run on the builder through the client's ControlMaster connections to it,
8 sessions each as flinger's pool, over the forwarded agent: a connection of its own from the
builder to each server), and the client unpacks and switches as the floor does. It is what
the design costs before any of flinger's own work: `flinger / design floor` is flinger's
share alone.

"floor again" (the report's "floor's check") is the floor's no-change run: a ControlMaster to each server and one `ssh`
that checks `current` names the release (no Python, no lock, no receipts, no service
check), the least a re-run that finds nothing to do can cost.
Medians, and flinger's own per-step medians (where the rest goes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from payload import config_from  # noqa: E402

import flinger_sandbox as sandbox  # noqa: E402

INSTALL_DIR = "/opt/blob"
MANIFEST = """\
[packages.blob]
roles = ["node"]
[packages.blob.source]
type = "local"
paths = [{ from = "blob.bin", to = "blob.bin" }]
"""
FLOOR_ONE = r"""
set -eu
name=$1 addr=$2 port=$3 release=$4
sock="$WORK/cm-$name"
opts="-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes"
opts="$opts -o UserKnownHostsFile=$KNOWN_HOSTS -o ControlPath=$sock"
ssh $opts -o ControlMaster=yes -o ControlPersist=60 -fN -p "$port" "deploy@$addr"
scp -q $opts -P "$port" "$WORK/blob.tar.gz" "deploy@$addr:blob.tar.gz"
ssh $opts -p "$port" "deploy@$addr" "sudo -n sh -c 'set -e; r=$INSTALL/releases/$release; mkdir -p \$r;
  tar xzf /home/deploy/blob.tar.gz -C \$r; ln -sfn releases/$release $INSTALL/current.new;
  mv -T $INSTALL/current.new $INSTALL/current'"
ssh $opts -O exit -p "$port" "deploy@$addr" 2>/dev/null
"""
CHECK_ONE = r"""
set -eu
name=$1 addr=$2 port=$3 release=$4
sock="$WORK/cm-$name"
opts="-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes"
opts="$opts -o UserKnownHostsFile=$KNOWN_HOSTS -o ControlPath=$sock"
ssh $opts -o ControlMaster=yes -o ControlPersist=60 -fN -p "$port" "deploy@$addr"
ssh $opts -p "$port" "deploy@$addr" "test \"\$(readlink $INSTALL/current)\" = releases/$release"
ssh $opts -O exit -p "$port" "deploy@$addr" 2>/dev/null
"""
PUSH_ONE = r"""
set -eu
name=$1 addr=$2 port=$3 release=$4 via=$5
sock="$WORK/cm-$name"
opts="-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes"
opts="$opts -o UserKnownHostsFile=$KNOWN_HOSTS -o ControlPath=$sock"
ssh $opts -o ControlMaster=yes -o ControlPersist=60 -fN -p "$port" "deploy@$addr"
ssh -A -F /dev/null -o BatchMode=yes -o UserKnownHostsFile=$KNOWN_HOSTS -o ControlPath="$WORK/cm-builder-$via" \
  -p "$BUILDER_PORT" "deploy@$BUILDER" "scp -q -o BatchMode=yes -o StrictHostKeyChecking=yes \
  -o UserKnownHostsFile=floor-known-hosts -P $port $BUILT deploy@$addr:blob.tar.gz"
ssh $opts -p "$port" "deploy@$addr" "sudo -n sh -c 'set -e; r=$INSTALL/releases/$release; mkdir -p \$r;
  tar xzf /home/deploy/blob.tar.gz -C \$r; ln -sfn releases/$release $INSTALL/current.new;
  mv -T $INSTALL/current.new $INSTALL/current'"
ssh $opts -O exit -p "$port" "deploy@$addr" 2>/dev/null
"""
SESSIONS_PER_BUILDER_CONNECTION = 8  # as flinger's pool (sshd's stock MaxSessions is 10)


class Bench:
    def __init__(self, state: sandbox.SandboxState, work: Path, kb: int) -> None:
        self.state = state
        self.work = work
        (work / "src").mkdir(parents=True, mode=0o700)
        (work / "src" / "blob.bin").write_bytes(os.urandom(kb * 1024))
        (work / "src" / "manifest.toml").write_text(MANIFEST)
        self.config = config_from(state.config_path, work / "src", work / "deploy.toml")
        doc = tomlkit.parse(self.config.read_text())
        doc["manifest"] = "manifest.toml"
        doc["deployment"]["install_dir"] = INSTALL_DIR  # type: ignore[index]
        self.config.write_text(tomlkit.dumps(doc))
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        self.ssh_opts = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={state.known_hosts}"]
        self.times: dict[str, list[float]] = {
            "flinger fresh": [],
            "flinger again": [],
            "floor fresh": [],
            "floor again": [],
            "design floor fresh": [],
        }
        self.steps: dict[str, dict[str, list[float]]] = {}

    def flinger(self, *argv: str) -> str:
        return harness.checked([sys.executable, "-m", "flinger", "-c", str(self.config), *argv], self.env)

    def prepare(self) -> None:
        for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):
            self.flinger(*step)
        addr, port = self.state.hosts["build1"]
        self.built = f"{_builder_out(self.config)}/packages/blob.tar.gz"
        built = f"deploy@{addr}:{self.built}"
        harness.checked(["scp", "-q", *self.ssh_opts, "-P", str(port), built, str(self.work / "blob.tar.gz")], self.env)
        known = f"deploy@{addr}:floor-known-hosts"
        harness.checked(["scp", "-q", *self.ssh_opts, "-P", str(port), str(self.state.known_hosts), known], self.env)
        (self.work / "floor-one.sh").write_text(FLOOR_ONE)
        (self.work / "push-one.sh").write_text(PUSH_ONE)
        (self.work / "check-one.sh").write_text(CHECK_ONE)

    def deploy(self, label: str, changed: bool) -> None:
        start = time.perf_counter()
        out = self.flinger("--json", "deploy", "install")
        self.times[label].append(time.perf_counter() - start)
        report = json.loads(out)
        servers = report["servers"]
        if report["exit_status"] != 0 or any(bool(s["details"].get("changed")) != changed for s in servers):
            raise SystemExit(f"deploy install: not ok with changed={changed}: {out[:3000]}")
        for server in servers:
            for step in server.get("steps") or []:
                name = str(step["step"]).split(":")[0]
                self.steps.setdefault(label, {}).setdefault(name, []).append(float(step["seconds"]))

    def flinger_round(self, rep: int) -> None:
        self.deploy("flinger fresh", True)
        self.deploy("flinger again", False)
        self.flinger("deploy", "clean")

    def floor_round(self, rep: int) -> None:
        hosts = self.state.hosts
        lines = [f"{n} {hosts[n].addr} {hosts[n].port} floor-{rep}" for n in self.state.nodes]
        argv = ["xargs", "-P", "16", "-L", "1", "sh", str(self.work / "floor-one.sh")]
        start = time.perf_counter()
        harness.checked(argv, self.floor_env(), stdin="\n".join(lines) + "\n")
        self.times["floor fresh"].append(time.perf_counter() - start)
        check = ["xargs", "-P", "16", "-L", "1", "sh", str(self.work / "check-one.sh")]
        start = time.perf_counter()
        harness.checked(check, self.floor_env(), stdin="\n".join(lines) + "\n")
        self.times["floor again"].append(time.perf_counter() - start)
        self.floor_remove()

    def design_floor_round(self, rep: int) -> None:
        hosts, env = self.state.hosts, self.floor_env()
        nodes = self.state.nodes
        vias = range(-(-len(nodes) // SESSIONS_PER_BUILDER_CONNECTION))
        lines = [
            f"{n} {hosts[n].addr} {hosts[n].port} design-{rep} {i // SESSIONS_PER_BUILDER_CONNECTION}"
            for i, n in enumerate(nodes)
        ]
        push = ["xargs", "-P", "16", "-L", "1", "sh", str(self.work / "push-one.sh")]
        start = time.perf_counter()
        opening = [self.builder_master(via, "-o", "ControlMaster=yes", "-fN") for via in vias]
        masters = [subprocess.Popen(argv, env=env) for argv in opening]
        if any(master.wait() != 0 for master in masters):
            raise SystemExit("design floor: a connection to the builder failed")
        harness.checked(push, env, stdin="\n".join(lines) + "\n")
        for via in vias:
            harness.checked(self.builder_master(via, "-O", "exit"), env)
        self.times["design floor fresh"].append(time.perf_counter() - start)
        self.floor_remove()

    def builder_master(self, via: int, *argv: str) -> list[str]:
        addr, port = self.state.hosts["build1"]
        sock = ["-o", f"ControlPath={self.work}/cm-builder-{via}", "-o", "ControlPersist=60"]
        return ["ssh", "-A", *self.ssh_opts, *sock, *argv, "-p", str(port), f"deploy@{addr}"]

    def floor_env(self) -> dict[str, str]:
        addr, port = self.state.hosts["build1"]
        return {
            **self.env,
            "WORK": str(self.work),
            "KNOWN_HOSTS": str(self.state.known_hosts),
            "INSTALL": INSTALL_DIR,
            "BUILDER": addr,
            "BUILDER_PORT": str(port),
            "BUILT": self.built,
        }

    def floor_remove(self) -> None:
        hosts = self.state.hosts
        remove = f"sudo -n rm -rf {shlex.quote(INSTALL_DIR)} /home/deploy/blob.tar.gz"
        for name in self.state.nodes:
            host = hosts[name]
            harness.checked(["ssh", *self.ssh_opts, "-p", str(host.port), f"deploy@{host.addr}", remove], self.env)

    def report(self, servers: int, kb: int, repeat: int) -> None:
        med = {k: statistics.median(v) for k, v in self.times.items()}
        print(f"\nload average after: {os.getloadavg()}")
        fresh, floor, design = med["flinger fresh"], med["floor fresh"], med["design floor fresh"]
        again, floor_again = med["flinger again"], med["floor again"]
        print("| servers | file | reps | flinger fresh (s) | floor (s) | flinger / floor | design floor (s) "
              "| design floor / floor | flinger / design floor | no-change (s) | no-change / fresh "
              "| floor's check (s) | floor's check / floor |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {servers} | {kb} KiB | {repeat} | {fresh:.2f} | {floor:.2f} | {fresh / floor:.2f} | {design:.2f} "
              f"| {design / floor:.2f} | {fresh / design:.2f} | {again:.2f} | {again / fresh:.2f} "
              f"| {floor_again:.2f} | {floor_again / floor:.2f} |")  # fmt: skip
        print("all runs (s): " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in self.times.items()))
        for label, spent in self.steps.items():
            parts = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in spent.items())
            print(f"{label}, median seconds per server and step: {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--kb", type=int, default=100, help="size of the package's one file")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(f"/var/lib/flinger-bench-ssh-{os.getpid()}"))
    parser.add_argument("--base-addr", default="127.77.202.0")
    args = parser.parse_args()
    harness.begin(args.dir)
    print(f"sandbox: {args.servers + 1} runit hosts in {args.dir}; package: one file of {args.kb} KiB", flush=True)
    try:
        state = sandbox.up(args.dir, args.servers + 1, base_addr=args.base_addr, init="runit")
        bench = Bench(state, args.dir / "bench", args.kb)
        bench.prepare()
        for rep in range(args.repeat):
            rounds = (bench.flinger_round, bench.floor_round, bench.design_floor_round)
            for run in rounds if rep % 2 == 0 else rounds[::-1]:
                run(rep)
            done = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in bench.times.items())
            print(f"  repetition {rep + 1}: {done}", flush=True)
        bench.report(args.servers, args.kb, args.repeat)
    finally:
        sandbox.down(args.dir, purge=True)
        if args.dir.exists():
            shutil.rmtree(args.dir, ignore_errors=True)


def _builder_out(config: Path) -> str:
    from flinger.topology import load_topology

    topology = load_topology(config)
    return topology.builder.artifacts_path.replace("$HOME/", "").replace("~/", "")


if __name__ == "__main__":
    main()
