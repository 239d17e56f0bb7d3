"""The local sandbox: N real sshd "hosts" on this machine, each in its own mount namespace.

Host 0 is the builder `build1`, the others are `node1..`. Each runs `/usr/sbin/sshd` on its own
loopback address with private /root, /opt, /srv, /etc/sv and /etc/service and its own runsvdir.
`up` also starts an ssh-agent holding the client key and writes known_hosts and deploy.toml.
"""

from flinger.sandbox.lifecycle import (
    down,
    env,
    refresh_known_hosts,
    rotate_host_key,
    start_host,
    state_of,
    status,
    stop_host,
    up,
)
from flinger.sandbox.paths import DEFAULT_DIRECTORY
from flinger.sandbox.state import Endpoint, HostStatus, SandboxState
from flinger.sandbox.tools import missing_tools

__all__ = [
    "DEFAULT_DIRECTORY",
    "Endpoint",
    "HostStatus",
    "SandboxState",
    "down",
    "env",
    "missing_tools",
    "refresh_known_hosts",
    "rotate_host_key",
    "start_host",
    "state_of",
    "status",
    "stop_host",
    "up",
]
