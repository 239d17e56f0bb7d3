"""The local sandbox: N real sshd "hosts" on this machine, each on its own loopback address.

Host 0 is the builder `build1`, the others are `node1..`. runit hosts run this machine's sshd
and a runsvdir in a mount namespace with their own /etc (an overlay), /root, /opt, /srv, /home,
/etc/sv and /etc/service; systemd hosts boot systemd in systemd-nspawn on a cached Debian
rootfs. Either way the login is `deploy` with passwordless `sudo -n`, and sshd keeps its stock
limits. `up` also starts an ssh-agent holding the client key and writes known_hosts and
deploy.toml; with a registry, CNCF Distribution on the next loopback address (TLS, password).
"""

from flinger_sandbox.lifecycle import (
    down,
    env,
    refresh_known_hosts,
    registry_files,
    registry_status,
    rotate_host_key,
    start_host,
    state_of,
    status,
    stop_host,
    up,
)
from flinger_sandbox.paths import DEFAULT_DIRECTORY
from flinger_sandbox.state import Endpoint, HostStatus, SandboxState
from flinger_sandbox.tools import missing_tools

__all__ = [
    "DEFAULT_DIRECTORY",
    "Endpoint",
    "HostStatus",
    "SandboxState",
    "down",
    "env",
    "missing_tools",
    "refresh_known_hosts",
    "registry_files",
    "registry_status",
    "rotate_host_key",
    "start_host",
    "state_of",
    "status",
    "stop_host",
    "up",
]
