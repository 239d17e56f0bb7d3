"""A bed of real sshd hosts set up as company fleets have them, for the SSH model's tests.

Each host is a stock OpenSSH `sshd` of this machine on its own loopback address (127.78.0.x,
away from the sandbox's) with its own host keys and a config of its own (a bastion, a host
with a host certificate, one that wants user certificates, one with MaxAuthTries 3, one with
MaxSessions 2). The login is a non-root user made for the bed and removed with it. The
operator's side is an .ssh directory of its own (OpenSSH reads the login's real home, so the
bed's config is given as deploy.toml's [ssh] config and as plain ssh's -F): a config with
Include, aliases, ProxyJump, certificates, UserKnownHostsFile, and an ssh-agent. Every case is
run with plain `ssh` beside flinger,
with the same files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

USER = "flingerssh"
BASE = "127.78.0."
PORT = 2222


def keygen(path: Path, kind: str = "ed25519", comment: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def sign(ca: Path, key_pub: Path, *, host: bool, principals: str, ident: str = "bed") -> Path:
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", ident, "-n", principals, "-V", "-5m:+1d"]
    subprocess.run([*argv, *(["-h"] if host else []), str(key_pub)], check=True)
    return key_pub.with_name(key_pub.name.removesuffix(".pub") + "-cert.pub")


@dataclass
class BedHost:
    name: str
    addr: str
    directory: Path
    pid: int = 0

    @property
    def host_pub(self) -> str:
        return " ".join((self.directory / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def known_line(self) -> str:
        return f"[{self.addr}]:{PORT} {self.host_pub}"

    def children(self, parent: int | None = None) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(parent or self.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def connection_processes(self) -> list[int]:
        """The sshd processes of this host's open connections (not the commands they run)."""
        found: list[int] = []
        todo = self.children()
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    found.append(pid)
                    todo += self.children(pid)
        return found


@dataclass
class Bed:
    directory: Path
    home: Path
    hosts: dict[str, BedHost] = field(default_factory=dict)
    agent: dict[str, str] = field(default_factory=dict)
    made_user: bool = False

    @property
    def ssh_dir(self) -> Path:
        return self.home / ".ssh"

    def env(self, **extra: str) -> dict[str, str]:
        return {"HOME": str(self.home), **self.agent, **extra}

    def plain_ssh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """OpenSSH itself with the operator's files (what flinger must agree with)."""
        argv = [
            "ssh",
            "-F",
            str(self.ssh_dir / "config"),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            *args,
        ]
        env = {**os.environ, **self.env()}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)

    def deploy_toml(self, servers: dict[str, dict[str, object]], **ssh: object) -> Path:
        """A deploy.toml whose servers are `servers` (name -> table); the first is the builder."""
        src = self.directory / "src"
        src.mkdir(exist_ok=True)
        (src / "blob.txt").write_text("bed\n")
        (src / "manifest.toml").write_text(
            '[packages.blob]\nroles = ["node"]\n[packages.blob.source]\ntype = "local"\n'
            'paths = [{ from = "blob.txt", to = "blob.txt" }]\n'
        )
        names = list(servers)
        lines = [
            'name = "bed"', f'source_dir = "{src}"', 'manifest = "manifest.toml"',
            "[builder]", f'server = "{names[0]}"', 'source_dir = "$HOME/bed-src"',
            "[deployment]", f"servers = {names!r}".replace("'", '"'), 'install_dir = "/tmp/bed-install"',
            "threshold = 1", "[ssh]", f'config = "{self.ssh_dir}/config"', "connect_timeout = 3", "retries = 0",
        ]  # fmt: skip
        lines += [f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
                  for k, v in ssh.items()]  # fmt: skip
        for name, table in servers.items():
            lines.append(f"[servers.{name}]")
            lines += [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
            lines.append('privilege = "none"')
        path = self.directory / "deploy.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def ensure_user(home: Path) -> bool:
    """The bed's login user (True when made here, to be removed with the bed)."""
    with contextlib.suppress(KeyError):
        pwd.getpwnam(USER)
        return False
    subprocess.run(
        [
            "useradd",
            "--system",
            "--password",
            "*",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/sh",
            USER,
        ],
        check=True,
    )
    return True


def start_host(
    bed: Bed, name: str, index: int, extra: str = "", keys: tuple[str, ...] = ("ed25519",), *, picky: bool = False
) -> BedHost:
    """An sshd with `extra` before the bed's defaults (sshd keeps the first value it reads);
    logins with the keys of the bed's authorized_keys (picky: of picky_keys) or certificates."""
    directory = bed.directory / name
    directory.mkdir()
    host = BedHost(name, f"{BASE}{index}", directory)
    host_keys = [keygen(directory / f"ssh_host_{kind}_key", kind) for kind in keys]
    keys_file = bed.directory / ("picky_keys" if picky else "authorized_keys")
    config = [
        extra,
        f"ListenAddress {host.addr}:{PORT}",
        *(f"HostKey {k}" for k in host_keys),
        f"PidFile {directory}/sshd.pid",
        "AuthorizedKeysFile none", f"AuthorizedKeysCommand /bin/cat {keys_file}", "AuthorizedKeysCommandUser root",
        "StrictModes no", "UsePAM no", "LogLevel DEBUG1", f"AllowUsers {USER}",
    ]  # fmt: skip
    (directory / "sshd_config").write_text("\n".join(config) + "\n")
    subprocess.run(["/usr/sbin/sshd", "-f", str(directory / "sshd_config"), "-E", str(directory / "log")], check=True)
    host.pid = _pid_written(directory / "sshd.pid")
    bed.hosts[name] = host
    return host


def _pid_written(path: Path) -> int:
    """The pid sshd writes once it has daemonised: the file appears before its line does."""
    for _ in range(200):
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n") and text.strip().isdigit():
            return int(text)
        time.sleep(0.05)
    raise RuntimeError(f"sshd wrote no pid to {path} within 10 s")


def start_agent(bed: Bed) -> None:
    out = subprocess.run(["ssh-agent", "-s", "-a", str(bed.directory / "agent.sock")], capture_output=True, text=True)
    for part in out.stdout.replace("\n", ";").split(";"):
        key, _, value = part.strip().partition("=")
        if key in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            bed.agent[key] = value


def stop(bed: Bed) -> None:
    for host in bed.hosts.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.pid, signal.SIGTERM)
        for child in host.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
    if "SSH_AGENT_PID" in bed.agent:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(bed.agent["SSH_AGENT_PID"]), signal.SIGTERM)
    # what the bed's user still runs (commands whose connection a test cut), then the user
    subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
    if bed.made_user:
        for _ in range(50):
            if subprocess.run(["userdel", USER], check=False, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
