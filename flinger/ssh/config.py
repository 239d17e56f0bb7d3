"""OpenSSH's own answers about a host: the one config file every ssh flinger starts reads, and
what `ssh -G` resolves for a server.

Every ssh process of a run (commands, connection masters, rsync's `-e`, each ProxyJump hop,
`trust`) reads ONE generated file given with `-F`:
1. the strict options first: OpenSSH keeps the first value it reads for an option, so nothing
   after them can loosen them, and ProxyJump hops (started by ssh with the same `-F`) get them
   too: StrictHostKeyChecking yes, BatchMode yes, no host-key updates, no agent or X11
   forwarding, no multiplexing but flinger's own, and the deployment's known_hosts when
   deploy.toml names one;
2. the operator's ~/.ssh/config and /etc/ssh/ssh_config through `Include` (aliases, Include,
   Match, ProxyJump, ProxyCommand, HostKeyAlias, certificates, identities: OpenSSH's);
3. flinger's defaults for what neither says (ConnectTimeout, ServerAlive*).
A server's own settings in deploy.toml (user, port, the jump host) are given on the command
line, where they win over the config as they do for `ssh -l/-p/-J`.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from flinger.errors import FlingerError
from flinger.ssh import detached
from flinger.topology.model import Server, SshSettings

SERVER_ALIVE_INTERVAL = 15  # a silent peer is given up after interval x count seconds
SERVER_ALIVE_COUNT = 3
CONTROL_PERSIST = 60  # seconds an idle master outlives its last command (and a killed client)

STRICT = (
    "StrictHostKeyChecking yes",
    "BatchMode yes",
    "UpdateHostKeys no",
    "ForwardAgent no",
    "ForwardX11 no",
    "PermitLocalCommand no",
    "RequestTTY no",
    "ControlMaster no",
    "ControlPath none",
)
SYSTEM_CONFIG = "/etc/ssh/ssh_config"


def user_config() -> str:
    """The user's ssh_config where ssh looks for it: the login's home directory from the
    password database (not $HOME), as ssh itself does."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = os.path.expanduser("~")
    return f"{home}/.ssh/config"


# The helper OpenSSH runs as KnownHostsCommand: `record FILE` writes down the key a host showed
# (what `trust` records, under the name OpenSSH looked up) and prints nothing; `pin SHA256:...`
# prints the key as a known_hosts line only when it has the pinned fingerprint.
HOSTKEY_HELPER = """\
import base64, hashlib, sys
mode, arg, reason, name, kind, blob = sys.argv[1:7]
if reason == "HOSTNAME" and blob != "NONE":
    if mode == "record":
        with open(arg, "a") as out:
            out.write(" ".join((name, kind, blob)) + "\\n")
    else:
        digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
        if "SHA256:" + digest == arg:
            print(name, kind, blob)
"""


@dataclass(frozen=True)
class Resolved:
    """What `ssh -G` says about one destination (the keys flinger acts on)."""

    hostname: str
    port: int
    user: str
    host_key_alias: str | None
    user_known_hosts: tuple[Path, ...]
    global_known_hosts: tuple[Path, ...]
    proxy_jump: tuple[str, ...]
    proxy_command: str | None
    hash_known_hosts: bool
    server_alive: tuple[int, int] = (SERVER_ALIVE_INTERVAL, SERVER_ALIVE_COUNT)  # interval, count

    @property
    def lookup_name(self) -> str:
        """The name OpenSSH looks the host key up under (and `trust` records it under)."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def known_hosts_files(self) -> tuple[Path, ...]:
        return (*self.user_known_hosts, *self.global_known_hosts)


def parse_g(text: str) -> Resolved:
    """`ssh -G` output -> Resolved."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), value)

    def paths(key: str) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser() for p in values.get(key, "").split() if p and p != "none")

    jump = values.get("proxyjump", "none")
    alias = values.get("hostkeyalias")
    command = values.get("proxycommand", "none")
    return Resolved(
        hostname=values.get("hostname", ""),
        port=int(values.get("port", "22") or 22),
        user=values.get("user", ""),
        host_key_alias=alias if alias and alias != "none" else None,
        user_known_hosts=paths("userknownhostsfile"),
        global_known_hosts=paths("globalknownhostsfile"),
        proxy_jump=tuple(h for h in jump.split(",") if h) if jump != "none" else (),
        proxy_command=command if command != "none" else None,
        hash_known_hosts=values.get("hashknownhosts", "no") == "yes",
        server_alive=(_int(values.get("serveraliveinterval"), 0), _int(values.get("serveralivecountmax"), 3)),
    )


def _int(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default


@dataclass(frozen=True)
class Hop:
    """A destination as `ssh` is given it: [user@]host[:port] (a ProxyJump hop, a server)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Hop:
        user, _, hostport = spec.strip().rpartition("@")
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = hostport.partition(":")
        return cls(host=host, user=user or None, port=int(port) if port.isdigit() else None)

    @classmethod
    def of(cls, server: Server) -> Hop:
        return cls(host=server.addr, user=server.user, port=server.port)

    def argv(self) -> list[str]:
        """-l/-p and the destination, last on an ssh command line."""
        out = []
        if self.user:
            out += ["-l", self.user]
        if self.port:
            out += ["-p", str(self.port)]
        return [*out, "--", self.host]

    def __str__(self) -> str:
        where = f"[{self.host}]:{self.port}" if self.port and ":" in self.host else self.host
        where = f"{where}:{self.port}" if self.port and ":" not in self.host else where
        return f"{self.user}@{where}" if self.user else where


@dataclass
class SshConfig:
    """The generated config file of one run and its private directory (control sockets, the
    key helper), removed by `close`."""

    settings: SshSettings
    directory: Path = field(init=False)
    path: Path = field(init=False)
    helper: Path = field(init=False)
    _resolved: dict[Hop, Resolved] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _sockets: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        # Short: a control socket's path must fit in 104 bytes with ssh's own suffix.
        parent = _short_temp_dir()
        _sweep(Path(parent))
        self.directory = Path(tempfile.mkdtemp(prefix=f"flinger-ssh-{os.getpid()}-", dir=parent))
        self.path = self.directory / "config"
        self.path.write_text(render_config(self.settings))
        self.helper = self.directory / "hostkey.py"
        self.helper.write_text(HOSTKEY_HELPER)

    def control_path(self) -> Path:
        """A fresh control socket path for one connection master."""
        with self._lock:
            self._sockets += 1
            return self.directory / f"c{self._sockets}"

    def base_argv(self) -> list[str]:
        return ["ssh", "-F", str(self.path), "-T"]

    def hop_options(self, server: Server | None = None, *, pin: bool = True) -> list[str]:
        """deploy.toml's jump host for a server (its pin, when it has one, too: then only a
        key with that fingerprint is accepted)."""
        out: list[str] = []
        if self.settings.jump:
            out += ["-o", f"ProxyJump={self.settings.jump}"]
        if pin and server is not None and server.host_key:
            out += [
                "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "KnownHostsCommand=" + self.helper_command("pin", server.host_key),
            ]  # fmt: skip
        return out

    def jumps(self, resolved: Resolved) -> list[str]:
        """The jump hosts on the way to a host, in order: deploy.toml's, else ssh_config's."""
        return [self.settings.jump] if self.settings.jump else list(resolved.proxy_jump)

    def helper_command(self, mode: str, arg: str) -> str:
        argv = [sys.executable, "-I", str(self.helper), mode, arg]
        return " ".join(shlex.quote(a).replace("%", "%%") for a in argv) + " %I %H %t %K"

    def resolve(self, hop: Hop, *, jump: bool = True) -> Resolved:
        """What OpenSSH makes of `hop` with this config (cached for the run)."""
        with self._lock:
            if hop in self._resolved:
                return self._resolved[hop]
        options = ["-o", f"ProxyJump={self.settings.jump}"] if jump and self.settings.jump else []
        argv = [*self.base_argv(), "-G", *options, *hop.argv()]
        try:
            proc = detached.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FlingerError(f"{hop}: `ssh -G` failed: {exc}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise FlingerError(
                f"{hop}: your ssh configuration does not resolve: {lines[-1] if lines else proc.returncode}"
            )
        resolved = parse_g(proc.stdout)
        with self._lock:
            self._resolved[hop] = resolved
        return resolved

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _sweep(parent: Path) -> None:
    """Remove what runs killed before their end left (their private dirs; a master of theirs
    still running ends by itself after ControlPersist)."""
    for directory in parent.glob("flinger-ssh-*-*"):
        pid = directory.name.split("-")[2]
        if not pid.isdigit() or directory.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:
            continue


def _short_temp_dir() -> str:
    """The temp dir, unless its path is too long for control sockets (then /tmp)."""
    default = tempfile.gettempdir()
    return default if len(default) <= 40 else "/tmp"  # noqa: S108 - mkdtemp makes a private dir there


def render_config(settings: SshSettings) -> str:
    """The text of the generated config: strict first, then the user's, then defaults."""
    lines = ["# Written by flinger for one run: strict options first (the first value read wins)."]
    lines += STRICT
    if settings.known_hosts is not None:
        lines.append(f"UserKnownHostsFile {_config_quote(str(settings.known_hosts))}")
    if settings.use_ssh_config:
        names = [str(settings.config)] if settings.config is not None else [user_config(), SYSTEM_CONFIG]
        lines += [f"Include {_config_quote(name)}" for name in names]
    lines += [
        "# flinger's defaults, for what the configuration above does not say",
        f"ConnectTimeout {max(1, int(settings.connect_timeout))}",
        f"ServerAliveInterval {SERVER_ALIVE_INTERVAL}",
        f"ServerAliveCountMax {SERVER_ALIVE_COUNT}",
    ]
    return "\n".join(lines) + "\n"


def _config_quote(value: str) -> str:
    if any(c in value for c in ' \t"'):
        return '"' + value.replace('"', "") + '"'
    return value
