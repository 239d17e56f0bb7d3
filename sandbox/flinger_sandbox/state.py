"""The sandbox's record of what it started (sandbox.json) and the public views of it."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from flinger.errors import FlingerError
from flinger_sandbox.paths import BUILDER_NAME, SandboxPaths
from flinger_sandbox.procs import ProcessRef
from flinger_sandbox.registry import RegistryRecord

STATE_VERSION = 1


class Endpoint(NamedTuple):
    """Where a sandbox host's sshd listens."""

    addr: str
    port: int


@dataclass(frozen=True)
class HostRecord:
    """One host as started: its address and the processes that make it up."""

    name: str
    addr: str
    port: int
    sshd: ProcessRef | None = None  # runit hosts: sshd and runsvdir run on this machine
    runsvdir: ProcessRef | None = None
    namespace: str | None = None  # mount namespace, e.g. "mnt:[4026532301]"
    container: ProcessRef | None = None  # systemd hosts: the wrapper around systemd-nspawn

    def processes(self) -> list[ProcessRef]:
        return [p for p in (self.sshd, self.runsvdir, self.container) if p is not None]


@dataclass(frozen=True)
class SandboxRecord:
    """Everything `up` started, written to sandbox.json so `down` can stop exactly that."""

    directory: Path
    port: int
    agent: ProcessRef | None = None
    hosts: tuple[HostRecord, ...] = field(default_factory=tuple)
    init: str = "runit"  # what runs the hosts' services: "runit" | "systemd"
    registry: RegistryRecord | None = None  # `up --registry`: the OCI registry

    def host(self, name: str) -> HostRecord:
        for host in self.hosts:
            if host.name == name:
                return host
        names = ", ".join(h.name for h in self.hosts)
        raise FlingerError(f'no sandbox host named "{name}" (hosts: {names})')

    def with_host(self, updated: HostRecord) -> SandboxRecord:
        """A copy with `updated` replacing (or appended after) the host of the same name."""
        hosts = [updated if h.name == updated.name else h for h in self.hosts]
        if all(h.name != updated.name for h in self.hosts):
            hosts.append(updated)
        return replace(self, hosts=tuple(hosts))


@dataclass(frozen=True)
class SandboxState:
    """A running sandbox, as callers (the CLI, the tests) see it."""

    directory: Path
    config_path: Path  # deploy.toml
    known_hosts: Path
    agent_socket: Path
    client_key: Path
    hosts: dict[str, Endpoint]  # name -> (addr, port), builder first
    init: str = "runit"  # "runit" | "systemd"
    registry_url: str | None = None  # https://ADDR:PORT when the sandbox runs a registry

    @property
    def builder(self) -> str:
        return BUILDER_NAME

    @property
    def nodes(self) -> list[str]:
        return [name for name in self.hosts if name != BUILDER_NAME]

    @classmethod
    def of(cls, record: SandboxRecord) -> SandboxState:
        paths = SandboxPaths(record.directory)
        return cls(
            directory=record.directory,
            config_path=paths.config,
            known_hosts=paths.known_hosts,
            agent_socket=paths.agent_socket,
            client_key=paths.client_key,
            hosts={h.name: Endpoint(h.addr, h.port) for h in record.hosts},
            init=record.init,
            registry_url=record.registry.url if record.registry is not None else None,
        )


@dataclass(frozen=True)
class HostStatus:
    """What `status` reports for one host."""

    name: str
    addr: str
    port: int
    sshd_alive: bool
    supervisor_alive: bool  # runsvdir, or the host's systemd


def _ref_json(ref: ProcessRef | None) -> dict[str, int] | None:
    return None if ref is None else {"pid": ref.pid, "start": ref.start}


def _ref(data: Any) -> ProcessRef | None:
    if data is None:
        return None
    return ProcessRef(int(data["pid"]), int(data["start"]))


def _registry(data: Any) -> RegistryRecord | None:
    if data is None:
        return None
    return RegistryRecord(str(data["addr"]), int(data["port"]), _ref(data.get("process")))


def save(record: SandboxRecord) -> None:
    """Write sandbox.json atomically (0600)."""
    path = SandboxPaths(record.directory).state_file
    data = {
        "version": STATE_VERSION,
        "port": record.port,
        "init": record.init,
        "agent": _ref_json(record.agent),
        "hosts": [
            {
                "name": h.name,
                "addr": h.addr,
                "port": h.port,
                "sshd": _ref_json(h.sshd),
                "runsvdir": _ref_json(h.runsvdir),
                "namespace": h.namespace,
                "container": _ref_json(h.container),
            }
            for h in record.hosts
        ],
        "registry": None
        if record.registry is None
        else {
            "addr": record.registry.addr,
            "port": record.registry.port,
            "process": _ref_json(record.registry.process),
        },
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sandbox.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(directory: Path) -> SandboxRecord | None:
    """The record in `directory`, or None when no sandbox was started there."""
    path = SandboxPaths(directory).state_file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FlingerError(f"cannot read the sandbox state {path}: {exc}") from None
    try:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        hosts = tuple(
            HostRecord(
                name=str(h["name"]),
                addr=str(h["addr"]),
                port=int(h["port"]),
                sshd=_ref(h.get("sshd")),
                runsvdir=_ref(h.get("runsvdir")),
                namespace=h.get("namespace"),
                container=_ref(h.get("container")),
            )
            for h in data["hosts"]
        )
        return SandboxRecord(
            directory=directory,
            port=int(data["port"]),
            agent=_ref(data.get("agent")),
            hosts=hosts,
            init=str(data.get("init", "runit")),
            registry=_registry(data.get("registry")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FlingerError(f"{path} is not a sandbox state file ({exc})") from None


def remove(directory: Path) -> None:
    SandboxPaths(directory).state_file.unlink(missing_ok=True)
