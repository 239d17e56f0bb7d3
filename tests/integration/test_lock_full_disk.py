"""The deploy lock on a full disk: it fails with its cause and leaves no lock file (a real
filesystem with no space left: a tmpfs, so this needs root)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flinger.remote import layout, lock

pytestmark = pytest.mark.integration


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with no space left: a 256 KiB tmpfs, filled (needs root, as CI is)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        layout.ensure_install_dir(str(mount / "install"))
        with open(mount / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield mount / "install"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_lock_that_cannot_be_written_fails_with_its_cause_and_leaves_no_file(full_disk: Path) -> None:
    result = lock.take(str(full_disk), "bob run 2", wait=0)
    assert result.step == "lock" and "No space left on device" in str(result.error), result
    state = Path(layout.state_dir(str(full_disk)))
    assert not (state / "lock").exists()
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    (full_disk.parent / "filler").unlink()  # space again: the next run takes the lock
    assert lock.take(str(full_disk), "bob run 2", wait=0).ok
