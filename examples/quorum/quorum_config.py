"""The quorum service's configuration: the JSON file flinger renders per server, read and checked.

Format (every path absolute):
    {
      "name": "node1",                   this server's name (as in deploy.toml)
      "deployment": "demo",              optional; must match share.json when given
      "addr": "10.0.0.11",               address to listen on (and peers reach us at)
      "port": 8443,                      optional, default 8443
      "threshold": 2,                    shares needed to unseal (must match share.json)
      "peers": [{"name", "addr", "port"}, ...],
                                         every node of the deployment; an entry with our
                                         own name is allowed and skipped
      "paths": {"cert", "key", "ca", "share"},
      "retry_initial": 0.5,              optional, seconds before the first retry of a peer
      "retry_max": 10.0                  optional, longest wait between retries
    }
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

DEFAULT_PORT = 8443
PATH_KEYS = ("cert", "key", "ca", "share")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or malformed (one-line message)."""


@dataclass(frozen=True)
class Peer:
    name: str
    addr: str
    port: int


@dataclass(frozen=True)
class QuorumConfig:
    name: str
    addr: str
    port: int
    threshold: int
    peers: tuple[Peer, ...]  # other nodes only: our own entry is dropped on load
    cert: str
    key: str
    ca: str
    share: str
    deployment: str | None = None
    retry_initial: float = 0.5
    retry_max: float = 10.0


def _require(data: dict, key: str, kind: type, where: str) -> object:
    if key not in data:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = data[key]
    # bool is an int subclass: "port": true is a mistake, not port 1
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}")
    return value


def _port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{where}: expected a port number (1-65535)")
    return value


def _seconds(data: dict, key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"config.{key}: expected a positive number of seconds")
    return float(value)


def parse_config(data: object) -> QuorumConfig:
    """Check a decoded config document and return it typed."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a JSON object")
    name = str(_require(data, "name", str, "config"))
    addr = str(_require(data, "addr", str, "config"))
    port = _port(data.get("port", DEFAULT_PORT), "config.port")
    threshold = int(_require(data, "threshold", int, "config"))  # type: ignore[call-overload]
    if threshold < 1:
        raise ConfigError("config.threshold: must be at least 1")
    raw_peers = _require(data, "peers", list, "config")
    peers = []
    seen = set()
    for i, raw in enumerate(raw_peers):  # type: ignore[arg-type]
        where = f"config.peers[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected an object")
        peer = Peer(
            name=str(_require(raw, "name", str, where)),
            addr=str(_require(raw, "addr", str, where)),
            port=_port(raw.get("port", DEFAULT_PORT), where + ".port"),
        )
        if peer.name in seen:
            raise ConfigError(f"{where}: duplicate peer name {peer.name!r}")
        seen.add(peer.name)
        # the rendered list may include ourselves: asking ourselves adds nothing
        if peer.name != name:
            peers.append(peer)
    paths = _require(data, "paths", dict, "config")
    resolved = {}
    for key in PATH_KEYS:
        path = str(_require(paths, key, str, "config.paths"))  # type: ignore[arg-type]
        if not os.path.isabs(path):
            raise ConfigError(f"config.paths.{key}: expected an absolute path")
        resolved[key] = path
    deployment = data.get("deployment")
    if deployment is not None and not isinstance(deployment, str):
        raise ConfigError("config.deployment: expected a string")
    retry_initial = _seconds(data, "retry_initial", 0.5)
    retry_max = max(retry_initial, _seconds(data, "retry_max", 10.0))
    return QuorumConfig(
        name=name,
        addr=addr,
        port=port,
        threshold=threshold,
        peers=tuple(peers),
        cert=resolved["cert"],
        key=resolved["key"],
        ca=resolved["ca"],
        share=resolved["share"],
        deployment=deployment,
        retry_initial=retry_initial,
        retry_max=retry_max,
    )


def load_config(path: str) -> QuorumConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"config {path} is not valid JSON: {e}") from None
    return parse_config(data)
