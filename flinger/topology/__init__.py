"""The deployment topology: a typed model of deploy.toml and its loader."""

from flinger.topology.loader import find_config, load_topology
from flinger.topology.model import Builder, Deployment, Server, SshSettings, Topology

__all__ = [
    "Builder",
    "Deployment",
    "Server",
    "SshSettings",
    "Topology",
    "find_config",
    "load_topology",
]
