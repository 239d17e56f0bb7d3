"""flinger's wheel holds flinger alone: no sandbox, no demo, no example system (packaging/ and
smf/ are data of the example), and the remote tool's protocol it needs; the sandbox is a
distribution of its own (sandbox/pyproject.toml) with bcrypt as its dependency only."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_no_test_bed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("flinger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"flinger"}, tops
    assert not [n for n in names if "sandbox" in n or "demo" in n], [n for n in names if "sandbox" in n]
    assert "flinger/protocol/messages.py" in names and "flinger/engine/run.py" in names
    assert "flinger/templates/systemd.service.j2" in names


def test_bcrypt_is_the_sandbox_s_dependency_not_flinger_s() -> None:
    product = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bed = tomllib.loads((REPO / "sandbox" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in product if d.startswith("bcrypt")]
    assert [d for d in bed if d.startswith("bcrypt")] and "flinger" in bed
