"""Package build timings, all measured in one run on the same sample tree:
a cold build vs a no-change rebuild (the inputs-digest cache), and flinger's deterministic
packing vs plain `tar czf` of the same files.

    python benchmarks/build_bench.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path) -> dict[str, int]:
    """A sample source tree: binaries (incompressible), a web tree of many small files,
    and compressible data. Returns the size of each part in bytes."""
    rng = random.Random(42)
    sizes = {}
    (root / "bin").mkdir(parents=True)
    for name in ("server", "agent"):
        path = root / "bin" / name
        path.write_bytes(rng.randbytes(6 << 20))
        path.chmod(0o755)
    sizes["bin"] = 12 << 20
    web = root / "web"
    total = 0
    for index in range(2000):
        path = web / f"d{index % 40}" / f"page{index}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"<p>page {index}</p>\n" * rng.randint(10, 200)
        path.write_text(text)
        total += len(text)
    sizes["web"] = total
    data = root / "data"
    data.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "quorum", "share", "node"]
    text = " ".join(rng.choice(words) for _ in range(1_500_000))
    (data / "corpus.txt").write_text(text)
    sizes["data"] = len(text)
    return sizes


def plan(src: Path, out: Path, no_cache: bool) -> dict[str, object]:
    return {
        "source_dir": str(src),
        "artifacts_dir": str(out),
        "no_cache": no_cache,
        "jobs": os.cpu_count() or 1,
        "packages": [
            {"name": "bin", "paths": [{"from": "bin", "to": "bin"}]},
            {"name": "web", "paths": [{"from": "web", "to": "web"}]},
            {"name": "data", "paths": [{"from": "data", "to": "data"}]},
            {"name": "all", "type": "composite", "packages": ["bin", "web", "data"]},
        ],
    }


def timed_build(build_plan: dict[str, object]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flinger.remote", "build"],
        input=json.dumps(build_plan),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    elapsed = time.perf_counter() - start
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"], done.stdout[-2000:]
    return elapsed, result["built"]


def timed_tar(src: Path, dest: Path) -> float:
    start = time.perf_counter()
    for part in ("bin", "web", "data"):
        subprocess.run(["tar", "czf", str(dest / f"{part}.tar.gz"), "-C", str(src), part], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flinger-bench-"))
    try:
        src = work / "src"
        sizes = make_tree(src)
        cold, warm, single, tar = [], [], [], []
        for attempt in range(args.repeat):
            out = work / f"out{attempt}"
            elapsed, built = timed_build(plan(src, out, no_cache=True))
            assert sorted(built) == ["all", "bin", "data", "web"]
            cold.append(elapsed)
            elapsed, built = timed_build(plan(src, out, no_cache=False))
            assert built == []
            warm.append(elapsed)
            # the same three packages without the composite and with one job, for the
            # like-for-like comparison with tar (which packs them one after another)
            one = plan(src, work / f"single{attempt}", no_cache=True)
            one["packages"] = one["packages"][:3]  # type: ignore[index]
            one["jobs"] = 1
            single.append(timed_build(one)[0])
            tar_dir = work / f"tar{attempt}"
            tar_dir.mkdir()
            tar.append(timed_tar(src, tar_dir))
        ours = sum(p.stat().st_size for p in (work / "single0" / "packages").iterdir())
        theirs = sum(p.stat().st_size for p in (work / "tar0").iterdir())
        median = statistics.median
        print(
            f"sample: {sum(sizes.values()) / 2**20:.1f} MiB in "
            f"{2 + 2000 + 1} files; {os.cpu_count()} CPUs; median of {args.repeat}"
        )
        print("| measurement | seconds |")
        print("|---|---|")
        print(f"| cold build, 3 packages + 1 composite, no cache | {median(cold):.2f} |")
        print(f"| no-change rebuild (all cached) | {median(warm):.2f} |")
        print(f"| flinger packing, 3 packages, 1 job | {median(single):.2f} |")
        print(f"| `tar czf` of the same 3 trees | {median(tar):.2f} |")
        print(f"\ncompressed size: flinger {ours / 2**20:.1f} MiB, tar czf {theirs / 2**20:.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
