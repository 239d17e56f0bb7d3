"""Helpers of the integration tests: run the real CLI, derive a deploy.toml from the sandbox's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from flinger.sandbox import SandboxState


def run_flinger(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `flinger` CLI in a subprocess (real exit status, real output)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "flinger", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def flinger_json(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run `flinger -c CONFIG --json ARGS`: (exit status, the JSON report)."""
    import json

    proc = run_flinger("-c", str(config), "--json", *args, env=env)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def by_server(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A --json report's per-server results by server name."""
    return {s["server"]: s for s in doc["servers"]}


def derived_config(state: SandboxState, directory: Path, edits: dict[str, object]) -> Path:
    """A copy of the sandbox's deploy.toml with dotted-key edits (e.g. {"builder.source_dir": "/root/x"}),
    written as DIR/deploy.toml so its client state (.flinger/) stays in DIR."""
    import tomlkit

    doc = tomlkit.parse(state.config_path.read_text())
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        table = doc
        for part in parents:
            table = table[part]  # type: ignore[assignment]
        table[last] = value  # type: ignore[index]
    path = directory / "deploy.toml"
    path.write_text(tomlkit.dumps(doc))
    return path
