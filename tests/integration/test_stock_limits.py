"""A stock sshd's limits (MaxSessions 10 per connection) against a deploy wider than them."""

from __future__ import annotations

import pytest
from flinger_helpers import run_sandbox_cli

import flinger_sandbox as sb

pytestmark = pytest.mark.integration


def test_32_servers_at_parallel_32_through_one_stock_builder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every push runs on the builder; 32 at once on one connection would exceed MaxSessions."""
    directory = tmp_path_factory.mktemp("wide")
    try:
        proc = run_sandbox_cli("demo", "--parallel", "32", "--servers", "33", "--dir", str(directory))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "Connect failed" not in out
        assert "demo complete: 32 quorum nodes unsealed" in out
    finally:
        sb.down(directory)
