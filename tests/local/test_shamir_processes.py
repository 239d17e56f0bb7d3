"""Shamir sharing beyond this process: on Python 3.9 alone, and the commitments made by worker processes."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from flinger.remote import shamir
from tests.oldest_python import require_python39
from tests.unit.test_shamir import REPO, _write_shares


def test_runs_on_python39_with_the_standard_library_only() -> None:
    """The quorum service (and the remote tool) load and verify shares on Python 3.9 alone."""
    python39 = require_python39()
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_shares(Path(tmp), "demo", 3, 2, 12345)
        code = (
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from flinger.remote import shamir\n"
            "c, s = shamir.split(12345, 5, 3)\n"
            "assert shamir.combine(s[2:]) == 12345\n"
            "docs = [shamir.load_share(p) for p in sys.argv[1:]]\n"
            "assert all(shamir.verify_share(d['index'], d['share'], d['verifier']['commitments']) for d in docs)\n"
            "print('verified', len(docs))\n"
        )
        proc = subprocess.run(
            [python39, "-S", "-c", code, *map(str, paths)], capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "verified 3"


def test_many_commitments_are_made_by_worker_processes_and_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    real = shamir.subprocess.Popen

    def popen(argv: list[str], **kw: Any) -> Any:
        started.append(argv)
        return real(argv, **kw)

    monkeypatch.setattr(shamir.subprocess, "Popen", popen)
    monkeypatch.setattr(shamir.os, "cpu_count", lambda: 2)
    secret = shamir.random_secret()
    commitments, shares = shamir.split(secret, 300, 151)
    assert len(started) == 2 and all(argv[-1] == "--pow-g" for argv in started)
    assert shamir.verify_shares_batch(shares, commitments) and shamir.check_secret(secret, commitments)
    assert shamir.verify_share(*shares[7], commitments)


def test_a_worker_that_fails_or_lies_is_done_over_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    liar = tmp_path / "liar"
    liar.write_text("#!/bin/sh\nwhile read -r line; do echo 5; done\n")  # one wrong answer a line
    liar.chmod(0o755)
    monkeypatch.setattr(shamir.os, "cpu_count", lambda: 2)
    for executable in ("/bin/false", str(liar)):
        monkeypatch.setattr(shamir.sys, "executable", executable)
        secret = shamir.random_secret()
        commitments, shares = shamir.split(secret, 260, 130)
        assert shamir.verify_shares_batch(shares, commitments), executable
        assert shamir.check_secret(secret, commitments)
