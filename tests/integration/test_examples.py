"""Every seed example deploys onto systemd sandbox hosts with one command, and every service
ends running and passing its health check (`deploy status` fails otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flinger_helpers import run_sandbox_cli

import flinger_sandbox as sb

pytestmark = pytest.mark.integration

INOTIFY = Path("/proc/sys/fs/inotify/max_user_watches")


@pytest.fixture
def kernel_settings_restored() -> object:
    """The hosts share this machine's kernel: put back what a prereq sysctl changed."""
    before = INOTIFY.read_text()
    yield None
    if INOTIFY.read_text() != before:
        INOTIFY.write_text(before)


@pytest.mark.parametrize("example", ["orion", "gitmirror", "fustor", "nativelink", "thing-flinger", "quorum"])
def test_example_deploys_on_systemd_hosts(
    example: str, tmp_path_factory: pytest.TempPathFactory, systemd_sandbox: object, kernel_settings_restored: object
) -> None:
    # systemd_sandbox: the rootfs is built, or this is skipped/failed the same way as the others
    directory = tmp_path_factory.mktemp(f"ex-{example}")
    try:
        proc = run_sandbox_cli("demo", "--example", example, "--init", "systemd", "--dir", str(directory))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        if example == "quorum":
            assert "demo complete: 3 quorum nodes unsealed" in out
        else:
            assert f"demo complete: the {example} example is deployed, its services active and healthy" in out
        assert "deploy status" in out
    finally:
        sb.down(directory, purge=True)  # the hosts' files too: the suite leaves no GBs in the temp dir
