"""The remote tool as tables: a plan and a file tree in, a result and a file tree out.

Each case in tests/golden/remote/*.json runs its steps in order, in this process, against a
fresh root: packages built from the small trees the case names, staged where a step says,
each command given its plan as the client would send it (placeholders: {root}, {run:NAME}
the run's own staging dir, {digest:PKG} and {digest16:PKG}). A step's `result` is compared
key by key with what the tool answered; the case's `tree` is the whole tree under {root}
afterwards: "dir", "file" (there, content not compared), "-> target" (a symlink) or the
file's exact content. No service manager is involved (services are tests/integration's).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from flinger.protocol.codec import encode
from flinger.protocol.messages import VERSION, parse_line
from flinger.remote import events, files, tarball
from flinger.remote.__main__ import run as run_command

CASES = sorted((Path(__file__).resolve().parents[1] / "golden" / "remote").glob("*.json"))


class Case:
    def __init__(self, root: Path, spec: dict[str, Any]) -> None:
        self.root = root
        self.digests: dict[str, str] = {}
        self.tarballs: dict[str, Path] = {}
        for name, tree in spec.get("packages", {}).items():
            source = root.parent / "trees" / name
            for rel, content in tree.items():
                (source / rel).parent.mkdir(parents=True, exist_ok=True)
                (source / rel).write_text(content)
            pack = root.parent / "built" / f"{name}.tar.gz"
            pack.parent.mkdir(parents=True, exist_ok=True)
            tarball.pack_tree(str(source), str(pack))
            self.digests[name] = files.sha256_file(str(pack))
            self.tarballs[name] = pack

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            for name, digest in self.digests.items():
                value = value.replace(f"{{digest:{name}}}", digest).replace(f"{{digest16:{name}}}", digest[:16])
            while "{run:" in value:
                start = value.index("{run:")
                end = value.index("}", start)
                value = (
                    value[:start]
                    + str(self.root / "staging" / "runs" / "app" / value[start + 5 : end])
                    + value[end + 1 :]
                )
            return value.replace("{root}", str(self.root))
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        return value

    def step(self, step: dict[str, Any]) -> dict[str, Any]:
        for where, package in step.get("stage", {}).items():
            dest = Path(self.fill(where))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.tarballs[package], dest)
        command = step["command"]
        stdin = json.dumps({"version": VERSION, "command": command, "plan": self.fill(step["plan"])})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = run_command(command, stdin)
        answer = [parse_line(command, line) for line in out.getvalue().splitlines()]
        result = encode(answer[-1])
        assert status == (0 if result["ok"] else 1)
        return {"status": status, **result}

    def tree(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if path.is_symlink():
                found[rel] = "-> " + str(path.readlink())
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_text(errors="replace")
        return found


def expected_tree(case: Case, expected: dict[str, str], actual: dict[str, str]) -> dict[str, str]:
    """`expected` filled in; where it says "file", the file's actual content (not compared)."""
    filled = case.fill(expected)
    return {k: (actual.get(k, "(missing)") if v == "file" else v) for k, v in filled.items()}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_remote_table(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = json.loads(path.read_text())
    monkeypatch.setattr(events, "_fallback", None)
    monkeypatch.setattr(events, "_client_gone", False)
    hangup = signal.getsignal(signal.SIGHUP)
    case = Case(tmp_path / "root", spec)
    case.root.mkdir()
    try:
        for number, step in enumerate(spec["steps"], start=1):
            got = case.step(step)
            want = case.fill(step["result"])
            assert {k: got.get(k) for k in want} == want, f"step {number} ({step['command']}): {got}"
    finally:
        signal.signal(signal.SIGHUP, hangup)
    actual = case.tree()
    assert actual == expected_tree(case, spec["tree"], actual)
