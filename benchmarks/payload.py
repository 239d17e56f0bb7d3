"""A copy of this source tree whose quorum package also carries N MiB of random bytes, and a
deploy.toml for a sandbox that builds from it: so that package bytes, not handshakes,
dominate a deploy benchmark."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parents[1]
ANCHOR = '  { from = "examples/quorum/*.py", to = "bin/" },'
PAYLOAD_PATH = '  { from = "bench-payload/*", to = "payload/" },'


def payload_tree(dest: Path, megabytes: int) -> Path:
    """This tree (without .git, .venv and client state) at `dest`, with the payload."""
    subprocess.run(["rsync", "-a", "--exclude", ".git/", "--exclude", ".venv/", "--exclude", ".flinger/",
                    "--exclude", "__pycache__/", f"{REPO}/", f"{dest}/"], check=True)  # fmt: skip
    (dest / "bench-payload").mkdir()
    with (dest / "bench-payload" / "blob.bin").open("wb") as out:
        for _ in range(megabytes):
            out.write(os.urandom(1 << 20))
    manifest = dest / "packaging" / "package-manifest.toml"
    text = manifest.read_text()
    if ANCHOR not in text:
        raise SystemExit(f"{manifest} no longer has {ANCHOR!r}: update benchmarks/payload.py")
    manifest.write_text(text.replace(ANCHOR, ANCHOR + "\n" + PAYLOAD_PATH))
    return dest


def config_from(sandbox_config: Path, source: Path, dest: Path, **tables: dict[str, object]) -> Path:
    """The sandbox's deploy.toml building from `source`, with `tables` replacing its own."""
    doc = tomlkit.parse(sandbox_config.read_text())
    doc["source_dir"] = str(source)
    for name, table in tables.items():
        doc[name] = table
    dest.write_text(tomlkit.dumps(doc))
    return dest
