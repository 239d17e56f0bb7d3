"""What `flinger overlay` made: per server, which files its overlay holds (never their
values), and what changed, for the CLI to print or dump as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServerOverlay:
    """What one server's overlay holds (paths relative to its overlay dir), never values."""

    server: str
    files: tuple[str, ...]
    written: tuple[str, ...]  # the files this run created or changed
    cert_sha256: str
    share_index: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "files": list(self.files),
            "written": list(self.written),
            "cert_sha256": self.cert_sha256,
            "share_index": self.share_index,
        }


@dataclass(frozen=True)
class OverlayReport:
    """The result of `make_overlay`: data for the CLI to print or dump as JSON."""

    deployment: str
    overlay_dir: Path
    total: int
    threshold: int | None  # None when no shares were made (a single deployment server)
    secret_fingerprint: str | None
    servers: tuple[ServerOverlay, ...]
    removed: tuple[str, ...] = ()  # servers whose overlay was removed, and SERVER/FILE no longer in one
    messages: tuple[str, ...] = ()
    generation: int = 0  # the overlay generation now (generation.py)
    rotated: tuple[str, ...] = ()  # what this run rotated out (names, never values)

    def server(self, name: str) -> ServerOverlay:
        for s in self.servers:
            if s.server == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "overlay_dir": str(self.overlay_dir),
            "total": self.total,
            "threshold": self.threshold,
            "secret_fingerprint": self.secret_fingerprint,
            "servers": [s.to_json() for s in self.servers],
            "removed": list(self.removed),
            "messages": list(self.messages),
            "generation": self.generation,
            "rotated": list(self.rotated),
        }
