"""One run of a deploy command, and the one place it is put together.

`open_run` is the composition root of the engine: from the topology it makes the run's id,
the lock holder name, the sinks its events go to (the caller's, the per-server logs and
events.jsonl), the host pool (flinger/engine/hosts.py: the agent forwarded to the builder
only when its store pushes to the servers) and the artifact store (flinger/engine/stores).
Everything an operation needs of the world, it gets from its `Run`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from flinger.engine.brake import Brake
from flinger.engine.hosts import HostPool, open_hosts
from flinger.engine.stores import STORES, ArtifactStore
from flinger.errors import UsageError
from flinger.manifest.model import Manifest
from flinger.progress import Events, RunLog, Sink, nowhere
from flinger.secrets.private_files import private_dir
from flinger.topology.model import Topology


def new_run_id() -> str:
    """When (to the millisecond, so ids sort by start) and which process: two runs of one
    process never share their logs or staging dir."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z-{os.getpid()}"


@dataclass
class Settings:
    """How the operator asked a run to behave."""

    parallel: int = 16
    lock_wait: float = 0.0  # seconds to wait for another run's deploy lock
    fail_fast: bool = False  # start no new server once one has failed
    # seconds a server that switched waits for this client's confirmation before it switches
    # itself back (remote/confirm.py); 0: no confirmation
    confirm_within: float = 30.0


@dataclass
class Run:
    topology: Topology
    manifest: Manifest
    run_id: str
    holder: str  # who holds the deploy locks this run takes: user@host run ID
    log_dir: Path
    events: Events
    hosts: HostPool
    store: ArtifactStore
    settings: Settings
    brake: Brake = field(default_factory=Brake)  # pulled by a SIGINT or SIGTERM while the run works

    def close(self) -> None:
        self.hosts.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run(
    topology: Topology,
    manifest: Manifest,
    *,
    sink: Sink = nowhere,
    settings: Settings | None = None,
    transport: str = "ssh",
) -> Run:
    """A run of a deploy command: its id, logs, hosts and store (see the module docstring)."""
    kind = topology.artifacts.store
    if kind not in STORES:
        raise UsageError(f"[artifacts] store: no store named {kind!r} (known: {', '.join(sorted(STORES))})")
    store_kind = STORES[kind]
    agent_for = [topology.builder.server] if store_kind.forwards_agent else []
    hosts = open_hosts(topology, transport=transport, agent_for=agent_for)
    run_id = new_run_id()
    log_dir = topology.state_dir / "logs" / run_id
    private_dir(topology.state_dir.parent)  # .flinger/ and the deployment's dir: 0700 (the logs' own: RunLog)
    private_dir(topology.state_dir)
    logging.getLogger("flinger.run").debug("run %s: its logs in %s", run_id, log_dir)
    return Run(
        topology=topology,
        manifest=manifest,
        run_id=run_id,
        holder=f"{getpass.getuser()}@{socket.gethostname()} run {run_id}",
        log_dir=log_dir,
        events=Events([RunLog(log_dir), sink]),
        hosts=hosts,
        store=store_kind.make(topology, hosts),
        settings=settings or Settings(),
    )
