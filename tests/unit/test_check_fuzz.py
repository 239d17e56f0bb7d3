"""Mutation fuzzing of `flinger check` through its real entry point: for any bytes in deploy.toml
or the package manifest, check exits 0 or 2 with one-line errors naming a file, never a
traceback or an internal error. Seeded and bounded: the same mutants on every run."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from flinger.cli import run
from flinger.secrets.ca import create_ca

REPO = Path(__file__).resolve().parents[2]
NAMES_A_FILE = re.compile(r"^flinger: error: /[^\n]*?\.(toml|j2)(:\d+)?: \S")  # file[:line]: ...
MUTANTS_PER_EXAMPLE = int(os.environ.get("FLINGER_FUZZ_MUTANTS", "1000"))

VALUES = [
    b" 1", b' "x"', b" []", b" {}", b" true", b" 1.5", b' [1, "a"]', b" {a = 1}", b' "a\\u202eb"', b" -3",
    b" 99999999999999999999", b' "/x y$(touch /tmp/p)"', b' "a/b"', b' ""', b' "\\u0000"', b" nan", b" inf",
    b' """\nx = 1\n"""', b" 1979-05-27", b' "{{ nope }}"', b' "{{"', b' ["*"]', b" [[1]]",
]  # fmt: skip
LINES = [
    b"secrets = 1", b"prereqs = 3", b"[x]", b"unknown = 1", b"[[packages]]", b"servers = []", b"roles = 5",
    b'users = "a"', b"dirs = 1", b"\xef\xbb\xbf", b"[servers.x]", b"[packages.p.service]", b"a.b.c = 1",
    b"[deployment]", b'"quoted key" = 1', b"= 1", b"[", b"]]",
]  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    op = rng.randrange(10)
    if op == 0 and data:  # a byte flipped
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if op == 1 and data:  # a run deleted
        i = rng.randrange(len(data))
        return data[:i] + data[i + rng.randrange(1, 40) :]
    if op == 2:  # a line duplicated elsewhere
        lines.insert(rng.randrange(len(lines)), lines[rng.randrange(len(lines))])
        return b"\n".join(lines)
    if op == 3:  # a value of another type or shape
        i = rng.randrange(len(lines))
        if b"=" in lines[i]:
            lines[i] = lines[i].partition(b"=")[0] + b"=" + rng.choice(VALUES)
        return b"\n".join(lines)
    if op == 4:  # a line that does not belong
        lines.insert(rng.randrange(len(lines)), rng.choice(LINES))
        return b"\n".join(lines)
    if op == 5:
        return b"\xef\xbb\xbf" + data
    if op == 6:  # nothing like the file at all
        return rng.choice([b"", b"\x00\x01\x02", bytes(rng.randrange(256) for _ in range(60)), b"[", b"a=1\na=2"])
    if op == 7:
        del lines[rng.randrange(len(lines))]
        return b"\n".join(lines)
    if op == 8:  # a Unicode character somewhere
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.choice(["\u202e", "\u200b", "é", "\U0001f600", "\u0085"]).encode() + data[i:]
    i = rng.randrange(len(lines))
    lines[i] = lines[i].replace(b'"', b"'", 1)
    return b"\n".join(lines)


def run_check(config: Path) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(["-c", str(config), "check"])
    return code, err.getvalue() + out.getvalue()


REGISTRY_TABLE = b"""
[artifacts]
store = "registry"
url = "https://registry.example.net:5000"
repository = "flinger/orion"
ca = "registry-ca.pem"
username = "deploy"
password_file = "registry.pw"
pull_username = "reader"
pull_password_file = "reader.pw"
plain_http = false
"""


@pytest.mark.parametrize("example", ["orion", "gitmirror", "nativelink", "orion+registry"])
def test_check_is_total_on_mutants(example: str, tmp_path: Path) -> None:
    project = tmp_path / example
    shutil.copytree(REPO / "examples" / example.split("+")[0], project)
    if example.endswith("+registry"):  # an [artifacts] table of every key, mutated like the rest
        (project / "deploy.toml").write_bytes((project / "deploy.toml").read_bytes() + REGISTRY_TABLE)
        (project / "registry-ca.pem").write_bytes(create_ca("fuzz").cert_pem)  # what check reads
        for name in ("registry.pw", "reader.pw"):
            (project / name).write_text("a-password\n")
            (project / name).chmod(0o600)
    files = [project / "deploy.toml", project / "packaging" / "package-manifest.toml"]
    originals = {f: f.read_bytes() for f in files}
    rng = random.Random(f"flinger-check-fuzz-{example}")
    codes: Counter[int] = Counter()
    for n in range(MUTANTS_PER_EXAMPLE):
        target = rng.choice(files)
        data = originals[target]
        for _ in range(rng.randrange(1, 4)):
            data = mutate(data, rng)
        for f in files:
            f.write_bytes(originals[f])
        target.write_bytes(data)
        code, output = run_check(files[0])
        codes[code] += 1
        context = f"mutant {n} of {target.name}: exit {code}\n{output[-2000:]}"
        assert code in (0, 2), context
        assert "Traceback" not in output and "internal error" not in output, context
        if code == 2:
            errors = [line for line in output.splitlines() if line.startswith("flinger: error: ")]
            assert errors, context
            assert all(NAMES_A_FILE.match(line) for line in errors), context
    # The mutants reach both outcomes: a fuzzer that only ever produced garbage would prove little.
    assert codes[0] > MUTANTS_PER_EXAMPLE // 20 and codes[2] > MUTANTS_PER_EXAMPLE // 2, codes
