"""Time `make_overlay` for 10, 100 and 1000 servers (threshold = majority) against baselines
measured in the same run, so the results read as ratios on any machine.

    python benchmarks/overlay_bench.py [--sizes 10,100,1000] [--repeat 3] [--template quorum|peers|own]
                                       [--no-verify-each]

Per size it measures, best of --repeat:
  overlay   make_overlay on an empty state dir (CA, certs, split, templates, files)
  rerun     make_overlay again with nothing changed (everything kept; files compared)
  certs     issuing the same number of server certificates alone (baseline)
  split     shamir.split of one secret alone (baseline)
  verify    verifying every share alone against the commitments (verify_share each)
  batch     verifying all of them in one randomised check (verify_shares_batch, what
            `flinger secret verify` uses for 4 shares or more)
  write     writing the same content in clear as files (the layout before the state was
            sealed: every state file and every server's overlay files, 0600, atomic, one
            sync for all), without any crypto (baseline); the one verifier written once
            and linked into every server's dir
  MB        the sealed state on disk (index, sealed files, one sealed bundle per server)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from overlay_helpers import make_manifest, make_topology, nodes, write_template  # noqa: E402

from flinger.manifest.model import OverlayFile, SecretSpec  # noqa: E402
from flinger.overlay.make import make_overlay  # noqa: E402
from flinger.overlay.store import reader  # noqa: E402
from flinger.remote import shamir  # noqa: E402
from flinger.secrets.ca import create_ca, issue_server_cert  # noqa: E402
from flinger.secrets.private_files import write_private_all  # noqa: E402

TEMPLATES = {
    # the example quorum system's own config template: every node lists every peer (with
    # tojson), about 60 KB per config at 1000 servers
    "quorum": (REPO / "smf" / "quorum" / "config.json.j2").read_text(),
    # every server's config lists every server: output (and time) grow as n^2
    "peers": """\
name = {{ server.name }}
addr = {{ server.addr }}
share_index = {{ overlay.index }}
threshold = {{ deployment.threshold }}
peers = [{% for s in servers %}"{{ s.addr }}"{{ ", " if not loop.last }}{% endfor %}]
""",
    # only the server's own values: output grows as n
    "own": """\
name = {{ server.name }}
addr = {{ server.addr }}
share_index = {{ overlay.index }}
threshold = {{ deployment.threshold }}
""",
}


def best_of(repeat: int, run: Callable[[], object], setup: Callable[[], object] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(n: int, repeat: int, work: Path, template: str, verify: bool) -> dict[str, float]:
    root = work / f"n{n}"
    write_template(root, "t/app.conf.j2", TEMPLATES[template])
    topology = make_topology(root, nodes(n))
    manifest = make_manifest(
        root,
        overlay=[OverlayFile(template="t/app.conf.j2", dest="app/app.conf")],
        secrets=[SecretSpec(name="api_key", roles=("node",))],
    )
    t = topology.deployment.threshold
    state = topology.state_dir

    def clean() -> None:
        shutil.rmtree(state.parent, ignore_errors=True)

    results: dict[str, float] = {}
    results["overlay"] = best_of(repeat, lambda: make_overlay(topology, manifest), clean)
    results["rerun"] = best_of(repeat, lambda: make_overlay(topology, manifest))

    ca = create_ca("bench")
    results["certs"] = best_of(
        repeat,
        lambda: [issue_server_cert(ca, f"node{i}", f"10.0.0.{i % 250 + 1}", deployment="bench") for i in range(n)],
    )
    secret = shamir.random_secret()
    results["split"] = best_of(repeat, lambda: shamir.split(secret, n, t))
    commitments, shares = shamir.split(secret, n, t)
    results["verify"] = (
        best_of(1, lambda: all(shamir.verify_share(i, v, commitments) for i, v in shares)) if verify else float("nan")
    )
    results["batch"] = best_of(repeat, lambda: shamir.verify_shares_batch(shares, commitments))

    # The baseline writes the same content in clear, as files (the layout before sealing: the
    # state's files, then each server's overlay files, the one verifier written once and linked).
    stored, overlays = reader(state).contents()
    files: list[tuple[Path, bytes | Path]] = [(Path(rel), data) for rel, data in sorted(stored.items())]
    for server in sorted(overlays):
        for rel, data in sorted(overlays[server].items()):
            is_verifier = rel == shamir.VERIFIER_FILE
            files.append((Path("overlay", server, rel), Path("state", rel) if is_verifier else data))
    copy = work / f"copy{n}"

    def write_all() -> None:
        write_private_all((copy / rel, data) for rel, data in files if isinstance(data, bytes))
        for rel, data in files:
            if isinstance(data, Path):
                os.link(copy / data, copy / rel)

    results["write"] = best_of(repeat, write_all, lambda: shutil.rmtree(copy, ignore_errors=True))
    results["files"] = float(len(files))
    results["mb"] = sum(p.stat().st_size for p in state.rglob("*") if p.is_file()) / 1e6  # the sealed state on disk
    clean()
    shutil.rmtree(copy, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="peers")
    parser.add_argument("--no-verify-each", action="store_true", help="skip checking every share alone (slow)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(f"template: {args.template}")
    header = (
        "servers",
        "t",
        "files",
        "MB",
        "overlay s",
        "rerun s",
        "certs s",
        "split s",
        "write s",
        "overlay / (certs+split+write)",
        "verify s",
        "batch s",
        "verify / batch",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="flinger-bench-") as tmp:
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # the bench's own age identity
        for n in sizes:
            repeat = args.repeat if n < 1000 else max(1, args.repeat // 3)
            r = measure(n, repeat, Path(tmp), args.template, not args.no_verify_each)
            base = r["certs"] + r["split"] + r["write"]
            row = (
                str(n),
                str(n // 2 + 1),
                str(int(r["files"])),
                f"{r['mb']:.1f}",
                *(f"{r[k]:.3f}" for k in ("overlay", "rerun", "certs", "split", "write")),
                f"{r['overlay'] / base:.2f}",
                f"{r['verify']:.3f}",
                f"{r['batch']:.3f}",
                f"{r['verify'] / r['batch']:.1f}",
            )
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
