"""`flinger sync`: rsync the client's source tree to the builder (delta, --delete, excludes).

The copy is the host pool's bulk capability (flinger/engine/hosts.py): over OpenSSH with
strict host keys for real hosts. The plan is the rsync command line, made before anything
runs.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flinger.engine.hosts import open_hosts
from flinger.errors import ConfigError, FlingerError, UnreachableError, UsageError
from flinger.ssh.openssh import RSYNC_STAT_FIELDS, require_local, rsync_stat
from flinger.topology.model import Server, Topology


@dataclass(frozen=True)
class SyncPlan:
    options: list[str]  # rsync's, besides the remote shell
    source: Path
    builder: Server
    path: str  # on the builder

    @property
    def destination(self) -> str:
        return f"{self.builder.addr}:{self.path}"

    def describe(self) -> str:
        return f"rsync {self.source}/ -> {self.destination}"


@dataclass
class SyncResult:
    stats: dict[str, int]
    deleted: list[str]
    transferred: list[str]


def plan_sync(topology: Topology) -> SyncPlan:
    source = topology.source_dir
    if not source.is_dir():
        raise ConfigError(
            f"source_dir {source} is not a directory",
            file=topology.config_path,
            line=topology.line_of("source_dir"),
            key="source_dir",
        )
    builder = topology.builder_server()
    excludes = [".git/", ".flinger/"]
    artifacts = topology.builder.artifacts_dir
    if not artifacts.startswith(("/", "~", "$HOME")):
        excludes.append(f"/{artifacts.strip('/')}/")
    excludes += list(topology.sync_exclude)
    options = [
        "--recursive",
        "--links",
        "--perms",
        "--times",
        "--compress",
        "--delete",
        "--mkpath",
        "--stats",
        "--itemize-changes",
        "--info=progress2",
        "--timeout=120",  # no data for two minutes: a failure, not a hang
    ]
    for pattern in excludes:
        options += ["--exclude", pattern]
    if (source / ".gitignore").exists():
        # Each directory's .gitignore applies below it, as git does; the files themselves go too.
        options += ["--filter", ":- .gitignore"]
    return SyncPlan(options=options, source=source, builder=builder, path=topology.builder.source_dir)


_ITEM = re.compile(r"^([<>ch.*][fdLDS][^ ]{9}) (.+)$")
_DELETE = re.compile(r"^\*deleting\s+(.+)$")


def run_sync(plan: SyncPlan, topology: Topology, on_progress: Callable[[str], None] | None = None) -> SyncResult:
    """Run rsync through the host pool's bulk copy; progress lines go to `on_progress`; the
    stats come back as numbers."""
    require_local("rsync", "ssh")
    hosts = open_hosts(topology)
    try:
        if hosts.bulk is None:
            raise UsageError("this transport cannot copy a tree to the builder")
        return _rsync(hosts.bulk.push_argv(plan.builder, plan.path, plan.options, plan.source), on_progress)
    finally:
        hosts.close()


def _rsync(argv: list[str], on_progress: Callable[[str], None] | None) -> SyncResult:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stats: dict[str, int] = {}
    deleted: list[str] = []
    transferred: list[str] = []
    buf = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        *parts, buf = re.split(rb"[\r\n]", buf)
        for raw in parts:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            _parse_line(line, stats, deleted, transferred, on_progress)
    if buf.strip():
        _parse_line(buf.decode("utf-8", "replace").strip(), stats, deleted, transferred, on_progress)
    err = proc.stderr.read().decode("utf-8", "replace").strip()
    code = proc.wait()
    if code != 0:
        lines = err.splitlines()
        # ssh's own words (host key refused, connection refused) say more than rsync's summary.
        said = [ln for ln in lines if not ln.startswith("rsync")] or lines
        last = "; ".join(said[:2]) if said else f"exit status {code}"  # the first: the cause
        if code == 255 or "Host key verification failed" in err or "Connection refused" in err:
            raise UnreachableError(f"sync: cannot reach the builder: {last}")
        raise FlingerError(f"sync: rsync exited with status {code}: {last}")
    return SyncResult(stats=stats, deleted=deleted, transferred=transferred)


def _parse_line(
    line: str,
    stats: dict[str, int],
    deleted: list[str],
    transferred: list[str],
    on_progress: Callable[[str], None] | None,
) -> None:
    if line.partition(":")[0] in RSYNC_STAT_FIELDS:
        stat = rsync_stat(line)
        if stat is not None:
            stats[stat[0]] = stat[1]
        return
    m = _DELETE.match(line)
    if m:
        deleted.append(m.group(1))
        return
    m = _ITEM.match(line)
    if m:
        if m.group(1)[1] == "f" and m.group(1)[0] in "<>":
            transferred.append(m.group(2))
        return
    if on_progress is not None and "%" in line:
        on_progress(line)
