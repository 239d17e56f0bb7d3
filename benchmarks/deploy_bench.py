"""Time `flinger deploy install` of the example quorum system to N sandbox servers against the
floor: plain OpenSSH doing the same work on all N servers in parallel, in the same run, on the
same hosts, so the results read as ratios.

    python benchmarks/deploy_bench.py [--init runit|systemd] [--servers 16] [--parallel 16] [--repeat 3]
                                      [--store builder|registry] [--payload-mb 0] [--dir D] [--base-addr A]

Needs root (the sandbox). It starts one sandbox of N + 1 hosts of the chosen kind (the builder
build1, node1..nodeN; login `deploy` with `sudo -n`, sshd's stock limits), runs `trust`, `sync`,
`build package` and `overlay` once (with --payload-mb, from a copy of this tree whose quorum
package also carries that many MiB of random bytes: benchmarks/payload.py), copies the built
package tarball out of the builder (scp, untimed) and renders the quorum service exactly as
flinger does for that service manager. Then,
per repetition (the order of the two sides alternates), wall clock of:
  flinger fresh    `flinger --json --parallel P deploy install` (P = --parallel, 16 by default
                   as flinger's), nothing installed
  flinger again    the same, nothing changed (flinger must say `changed: false` everywhere)
  floor fresh      `xargs -P P` over the servers, each: one OpenSSH ControlMaster connection,
                   `scp` of the tarball and of that server's overlay dir over it, then one `ssh`
                   running `sudo -n sh -s` that unpacks into a new release dir, switches
                   `current` (after the service's `validate` command, run in the new release
                   dir as flinger runs it), writes the service definition (systemd unit + daemon-reload +
                   enable + restart, or runit run/finish + link + `sv up|restart`) and polls
                   https://ADDR:8443/status (curl -k, every 0.5 s as the manifest's check)
  floor again      the same again: plain ssh has no way to know nothing changed
Between rounds, untimed: `flinger deploy clean`, or the floor's own removal script. Medians.
The sandbox is always brought down (and its directory purged) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flinger_sandbox as sandbox  # noqa: E402
from flinger.engine.plan import plan_deploy  # noqa: E402
from flinger.manifest import load_manifest  # noqa: E402
from flinger.overlay.store import reader  # noqa: E402
from flinger.topology import load_topology  # noqa: E402
from flinger_sandbox import SandboxState  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from payload import config_from, payload_tree  # noqa: E402

INSTALL_DIR = "/opt/quorum"  # the overlay's config.json names this path: both sides install here
QUORUM_PORT = 8443
HEALTH_INTERVAL = 0.5
RUN_TIMEOUT = 300


def checked(argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    return harness.checked(argv, env, stdin, timeout=RUN_TIMEOUT)


def listening(addr: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((addr, port)) == 0


def install_script(
    manager: str, files: dict[str, str], addr: str, release: str, staging: str, validate: str | None
) -> str:
    """What the floor runs as root on one server (every value quoted). The service's validate
    command runs in the new release dir before the switch, as flinger runs it."""
    q = shlex.quote
    rel = f"{INSTALL_DIR}/releases/{release}"
    check = f"(cd {q(rel)} && FLINGER_RELEASE_DIR={q(rel)} sh -c {q(validate)})" if validate else ":"
    if manager == "systemd":
        activate = f"""printf '%s' {q(files["unit"])} > /etc/systemd/system/quorum.service.new
mv /etc/systemd/system/quorum.service.new /etc/systemd/system/quorum.service
systemctl daemon-reload
systemctl enable --quiet quorum.service
systemctl restart quorum.service"""
    else:
        finish = files.get("finish", "#!/bin/sh\n")
        activate = f"""mkdir -p /etc/sv/quorum /etc/service
printf '%s' {q(files["run"])} > /etc/sv/quorum/run.new
printf '%s' {q(finish)} > /etc/sv/quorum/finish.new
chmod 755 /etc/sv/quorum/run.new /etc/sv/quorum/finish.new
mv /etc/sv/quorum/run.new /etc/sv/quorum/run
mv /etc/sv/quorum/finish.new /etc/sv/quorum/finish
if [ -L /etc/service/quorum ]; then action=restart; else action=up; ln -s /etc/sv/quorum /etc/service/quorum; fi
i=0
until sv status /etc/sv/quorum >/dev/null 2>&1; do
  i=$((i+1)); [ "$i" -lt 300 ] || {{ echo "no runsv for quorum" >&2; exit 1; }}; sleep 0.1
done
sv -w 30 "$action" /etc/sv/quorum >/dev/null"""
    return f"""set -e
mkdir -p {q(rel)}/quorum
tar xzf {q(staging)}/quorum.tar.gz -C {q(rel)}/quorum
rm -rf {q(rel)}/overlay
mv {q(staging)}/overlay {q(rel)}/overlay
chmod 700 {q(rel)}/overlay
{check}
ln -sfn {q("releases/" + release)} {INSTALL_DIR}/current.new
mv -T {INSTALL_DIR}/current.new {INSTALL_DIR}/current
{activate}
i=0
until curl -ksf -o /dev/null {q(f"https://{addr}:{QUORUM_PORT}/status")}; do
  i=$((i+1)); [ "$i" -lt 120 ] || {{ echo "quorum not healthy" >&2; exit 1; }}; sleep {HEALTH_INTERVAL}
done
"""


def remove_script(manager: str) -> str:
    if manager == "systemd":
        stop = """systemctl disable --now --quiet quorum.service 2>/dev/null || true
rm -f /etc/systemd/system/quorum.service
systemctl daemon-reload"""
    else:
        stop = """if [ -L /etc/service/quorum ]; then
  sv down /etc/sv/quorum >/dev/null 2>&1 || true
  rm /etc/service/quorum
  sv exit /etc/sv/quorum >/dev/null 2>&1 || true
  i=0; while sv status /etc/sv/quorum >/dev/null 2>&1 && [ "$i" -lt 100 ]; do i=$((i+1)); sleep 0.1; done
fi
rm -rf /etc/sv/quorum"""
    return f"{stop}\nrm -rf {INSTALL_DIR}\n"


# One server of the floor, run by `xargs -P`: $1 = name, then addr, port, release; the rest
# comes from the environment (the known_hosts, the work dir). Values never reach the script text.
FLOOR_ONE = r"""
set -eu
name=$1 addr=$2 port=$3
sock="$WORK/cm-$name"
opts="-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes"
opts="$opts -o UserKnownHostsFile=$KNOWN_HOSTS -o ControlPath=$sock"
ssh $opts -o ControlMaster=yes -o ControlPersist=60 -fN -p "$port" "deploy@$addr"
ssh $opts -p "$port" "deploy@$addr" 'rm -rf bench-staging && mkdir -m 700 bench-staging'
scp -q -r $opts -P "$port" "$WORK/quorum.tar.gz" "deploy@$addr:bench-staging/quorum.tar.gz"
scp -q -r $opts -P "$port" "$WORK/overlay/$name" "deploy@$addr:bench-staging/overlay"
ssh $opts -p "$port" "deploy@$addr" 'sudo -n sh -s' <"$WORK/install-$name.sh"
ssh $opts -O exit -p "$port" "deploy@$addr" 2>/dev/null
"""


class Bench:
    def __init__(self, state: SandboxState, work: Path, nodes: list[str]) -> None:
        self.state = state
        self.work = work
        self.nodes = nodes
        self.env = {**os.environ, "SSH_AUTH_SOCK": str(state.agent_socket)}
        self.config = state.config_path
        self.manager = state.init
        self.files: dict[str, str] = {}
        self.rounds = 0
        self.parallel = 16

    def flinger(self, *args: str) -> str:
        return checked([sys.executable, "-m", "flinger", "-c", str(self.config), *args], self.env)

    def prepare(self) -> None:
        for step in (["trust"], ["sync"], ["build", "package"], ["overlay"]):
            self.flinger(*step)
        addr, port = self.state.hosts["build1"]
        built = f"deploy@{addr}:src/out/packages/quorum.tar.gz"
        checked(["scp", "-q", *self.ssh_options(), "-P", str(port), built, str(self.work / "quorum.tar.gz")], self.env)
        state = reader(self.config.parent / ".flinger" / "sandbox")  # the sealed overlays, opened for the floor's scp
        for server in state.overlay_names():
            for rel, data in (state.overlay(server) or {}).items():
                (self.work / "overlay" / server / rel).parent.mkdir(parents=True, exist_ok=True)
                (self.work / "overlay" / server / rel).write_bytes(data)
        topology = load_topology(self.config)
        plans = plan_deploy(topology, load_manifest(topology.manifest_path), topology.deployment_servers())
        (service,) = [s for s in plans[0].services if s.name == "quorum"]
        self.files = dict(service.files)
        self.validate = service.validate
        (self.work / "floor-one.sh").write_text(FLOOR_ONE)
        self.steps: dict[str, dict[str, list[float]]] = {}  # fresh | no-change -> step -> seconds
        self.pushed: dict[str, list[int]] = {}  # fresh | no-change -> bytes the builder sent, per run

    def ssh_options(self) -> list[str]:
        return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.state.known_hosts}"]  # fmt: skip

    def flinger_deploy(self, action: str, changed: bool | None) -> float:
        start = time.perf_counter()
        out = self.flinger("--json", "--parallel", str(self.parallel), "deploy", action)
        wall = time.perf_counter() - start
        report = json.loads(out)
        servers = report["servers"]
        if report["exit_status"] != 0 or sorted(s["server"] for s in servers) != sorted(self.nodes):
            raise SystemExit(f"deploy {action} did not succeed on exactly {self.nodes}: {out[:3000]}")
        if changed is not None and any(bool(s["details"].get("changed")) != changed for s in servers):
            raise SystemExit(f"deploy {action}: expected changed={changed}: {out[:3000]}")
        if action == "install":  # where each server's time went (flinger's own step timeline)
            label = "fresh" if changed else "no-change"
            for server in servers:
                spent: dict[str, float] = {}
                for step in server.get("steps") or []:
                    name = str(step["step"]).split(":")[0]  # "install: service: quorum" -> "install"
                    spent[name] = spent.get(name, 0.0) + float(step["seconds"])
                for name, seconds in spent.items():
                    self.steps.setdefault(label, {}).setdefault(name, []).append(seconds)
            self.pushed.setdefault(label, []).append(int(report["artifacts"]["builder_bytes_sent"]))
        return wall

    def floor(self) -> float:
        self.rounds += 1
        release = f"floor-{os.getpid()}-{self.rounds}"
        lines = []
        for name in self.nodes:
            addr, port = self.state.hosts[name]
            (self.work / f"install-{name}.sh").write_text(
                install_script(self.manager, self.files, addr, release, "/home/deploy/bench-staging", self.validate)
            )
            lines.append(f"{name} {addr} {port}")
        env = {**self.env, "WORK": str(self.work), "KNOWN_HOSTS": str(self.state.known_hosts)}
        argv = ["xargs", "-P", str(self.parallel), "-L", "1", "sh", str(self.work / "floor-one.sh")]
        start = time.perf_counter()
        checked(argv, env, stdin="\n".join(lines) + "\n")
        return time.perf_counter() - start

    def floor_remove(self) -> None:
        for name in self.nodes:
            addr, port = self.state.hosts[name]
            checked(["ssh", *self.ssh_options(), "-p", str(port), f"deploy@{addr}", "sudo -n sh -s"], self.env,
                    stdin=remove_script(self.manager))  # fmt: skip

    def assert_nothing_serves(self) -> None:
        deadline = time.monotonic() + 15
        while busy := [n for n in self.nodes if listening(self.state.hosts[n].addr, QUORUM_PORT)]:
            if time.monotonic() > deadline:
                raise SystemExit(f"quorum still serving on {busy} after removal")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", choices=("runit", "systemd"), default="systemd")
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=16, help="servers at once, both sides (flinger's default)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--store",
        choices=("builder", "registry"),
        default="builder",
        help="registry: flinger's servers pull from the sandbox registry, emptied before each round",
    )
    parser.add_argument(
        "--payload-mb",
        type=int,
        default=0,
        help="MiB of random bytes added to the quorum package (0: the example as it is)",
    )
    parser.add_argument("--dir", type=Path, default=Path(f"/var/lib/flinger-bench-deploy-{os.getpid()}"))
    parser.add_argument("--base-addr", default="127.77.201.0")
    args = parser.parse_args()
    harness.begin(args.dir)
    print(f"sandbox: {args.servers + 1} {args.init} hosts in {args.dir}", flush=True)
    try:
        state = sandbox.up(
            args.dir, args.servers + 1, base_addr=args.base_addr, init=args.init, with_registry=args.store == "registry"
        )
        work = args.dir / "bench"
        work.mkdir(mode=0o700)
        bench = Bench(state, work, state.nodes)
        bench.parallel = args.parallel
        if args.payload_mb:
            source = payload_tree(work / "src", args.payload_mb)
            bench.config = config_from(state.config_path, source, work / "deploy.toml")
        bench.prepare()
        print(f"package: {(work / 'quorum.tar.gz').stat().st_size} bytes", flush=True)
        labels = ("flinger fresh", "flinger again", "floor fresh", "floor again")
        times: dict[str, list[float]] = {k: [] for k in labels}
        for rep in range(args.repeat):

            def flinger_round() -> None:
                bench.assert_nothing_serves()
                if args.store == "registry":  # the builder publishes in every round, as it pushes
                    shutil.rmtree(sandbox.registry_files(state.directory).data / "docker", ignore_errors=True)
                times["flinger fresh"].append(bench.flinger_deploy("install", True))
                times["flinger again"].append(bench.flinger_deploy("install", False))
                bench.flinger_deploy("clean", None)

            def floor_round() -> None:
                bench.assert_nothing_serves()
                times["floor fresh"].append(bench.floor())
                times["floor again"].append(bench.floor())
                bench.floor_remove()

            for run in (flinger_round, floor_round) if rep % 2 == 0 else (floor_round, flinger_round):
                run()
            done = ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
            print(f"  repetition {rep + 1}: {done}", flush=True)
        print(f"load average after: {os.getloadavg()}")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n| {args.init} servers | reps | flinger fresh (s) | floor fresh (s) | fresh: flinger / floor "
              "| flinger no-change (s) | floor again (s) | no-change: flinger / floor again "
              "| no-change / fresh (flinger) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {args.servers} | {args.repeat} | {med['flinger fresh']:.2f} | {med['floor fresh']:.2f} "
              f"| {med['flinger fresh'] / med['floor fresh']:.2f} | {med['flinger again']:.2f} "
              f"| {med['floor again']:.2f} | {med['flinger again'] / med['floor again']:.2f} "
              f"| {med['flinger again'] / med['flinger fresh']:.2f} |")  # fmt: skip
        print("\nall runs (s): " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in times.items()))
        for label, steps in bench.steps.items():
            parts = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in steps.items())
            print(f"flinger {label}, median seconds per server and step: {parts}")
            print(
                f"flinger {label}, package bytes the builder sent, in all per run: "
                f"{sum(bench.pushed[label]) // args.repeat}"
            )
    finally:
        sandbox.down(args.dir, purge=True)
        shutil.rmtree(args.dir / "bench", ignore_errors=True)
        if args.dir.exists():
            args.dir.rmdir()


if __name__ == "__main__":
    main()
