"""Where everything of one sandbox lives inside its directory (one place for the layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The host-private directories: real path on the machine -> name of its backing dir.
PRIVATE_MOUNTS: tuple[tuple[str, str], ...] = (
    ("/root", "root"),
    ("/opt", "opt"),
    ("/srv", "srv"),
    ("/etc/sv", "etc-sv"),
    ("/etc/service", "etc-service"),
    ("/home", "home"),
)

# The login every sandbox host has, as on a real fleet: not root, passwordless `sudo -n`.
LOGIN_USER = "deploy"

BUILDER_NAME = "build1"

# Outside every path a host mounts over, not world-writable, short enough for a unix socket.
DEFAULT_DIRECTORY = Path("/var/lib/flinger-sandbox")


def host_names(servers: int) -> list[str]:
    """Host 0 is the builder, the others are node1..nodeN-1."""
    return [BUILDER_NAME] + [f"node{k}" for k in range(1, servers)]


@dataclass(frozen=True)
class HostPaths:
    """The files of one sandbox host, all under `<sandbox>/hosts/<name>/`."""

    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def sshd_config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def host_key_pub(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    @property
    def sshd_pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def runsvdir_pid_file(self) -> Path:
        return self.directory / "runsvdir.pid"

    @property
    def sshd_log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def runsvdir_log(self) -> Path:
        return self.directory / "runsvdir.log"

    @property
    def etc_upper(self) -> Path:
        """The host's own changes to /etc (an overlay on the machine's /etc)."""
        return self.directory / "etc-upper"

    @property
    def etc_work(self) -> Path:
        return self.directory / "etc-work"

    def backing(self, mount_dir: str) -> Path:
        """The directory bind-mounted over `mount_dir` (one of PRIVATE_MOUNTS) on this host."""
        for target, backing_name in PRIVATE_MOUNTS:
            if target == mount_dir:
                return self.directory / backing_name
        raise KeyError(mount_dir)


@dataclass(frozen=True)
class SandboxPaths:
    """The files of a whole sandbox directory."""

    directory: Path

    @property
    def state_file(self) -> Path:
        return self.directory / "sandbox.json"

    @property
    def config(self) -> Path:
        return self.directory / "deploy.toml"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def client_key(self) -> Path:
        return self.directory / "client_key"

    @property
    def agent_socket(self) -> Path:
        return self.directory / "agent.sock"

    @property
    def agent_log(self) -> Path:
        return self.directory / "agent.log"

    @property
    def registry_dir(self) -> Path:
        return self.directory / "registry"

    @property
    def hosts_dir(self) -> Path:
        return self.directory / "hosts"

    def host(self, name: str) -> HostPaths:
        return HostPaths(self.hosts_dir / name)
