"""Where a server's packages come from: the artifact store seam of `deploy install`.

An `ArtifactStore` says which packages are built (name -> digest and file), what a server's
install plan needs to get them, and delivers the ones a server lacks into that run's
staging dir when the server cannot fetch them itself.

- `BuilderRsync` (store = "builder", the default): the builder rsyncs them straight to each
  server over the client's agent, forwarded to the builder alone, with host keys checked
  against a known_hosts file written from the client's verified keys (never learned anew).
  The builder sends N copies for N servers.
- `RegistryStore` (store = "registry"): the builder publishes the build to an OCI registry
  once per run (only the blobs it lacks, one manifest per build), and each server's own
  install pulls the blobs it lacks by digest and checks them (flinger/remote/registry.py).
  The builder sends each package once, whatever the number of servers; no agent is
  forwarded.
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Any, Protocol

from flinger.actions.remote_tool import read_remote_json, resolve_remote_path, run_tool, upload_tool
from flinger.errors import FlingerError, RemoteCommandError
from flinger.secrets import registry_credentials
from flinger.ssh import known_hosts
from flinger.ssh.connection import ConnectionPool
from flinger.ssh.fanout import Reporter
from flinger.ssh.openssh import rsync_rsh, rsync_stat
from flinger.topology.model import Server, Topology

RSYNC_IO_TIMEOUT = 120  # seconds without any data before a push counts as failed (not a hang)
PUSH_STATS = ("bytes_sent", "literal_bytes", "transferred_size")  # what a push reports


class ArtifactStore(Protocol):
    # the step a server's report is in while built() gets the store ready (None: no step of its own)
    wait_step: str | None

    def built(self) -> dict[str, dict[str, Any]]:
        """Every built package: name -> {"sha256": ..., "file": ...}."""
        ...

    def staged_path(self, run_dir: str, package: str) -> str:
        """Where the server finds `package`'s tarball once delivered into `run_dir`."""
        ...

    def install_plan(self) -> dict[str, Any]:
        """What a server's install plan carries for this store (the registry to pull from)."""
        ...

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        """Put `packages` into `run_dir` on `server`; transfer statistics."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the builder sent in this run (for --json and the benchmark)."""
        ...


def package_file(info: dict[str, Any], package: str) -> str:
    """A built package's tarball, relative to the artifacts dir."""
    return str(info.get("file") or f"packages/{package}.tar.gz")


def staged_tarball(run_dir: str, built: dict[str, dict[str, Any]], package: str) -> str:
    """Where a server finds a package's tarball in `run_dir`, pushed or pulled there."""
    return f"{run_dir}/packages/{Path(package_file(built[package], package)).name}"


def builder_manifest(topology: Topology, pool: ConnectionPool) -> tuple[str, dict[str, Any]]:
    """The artifacts dir on the builder and its manifest.json (what `build package` wrote)."""
    conn = pool.get(topology.builder.server)
    artifacts = resolve_remote_path(conn, topology.builder.artifacts_path)
    return artifacts, read_remote_json(conn, f"{artifacts}/manifest.json")


class BuilderRsync:
    """The builder rsyncs packages to each server (one rsync, one handshake per server)."""

    wait_step: str | None = None  # the builder's manifest is read at once, beside the servers' connects

    def __init__(self, topology: Topology, pool: ConnectionPool) -> None:
        self.topology = topology
        self.pool = pool
        self._ready: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._sent = 0

    def _side(self) -> dict[str, Any]:
        """Where the artifacts are and their manifest (read once per run, on first use)."""
        with self._lock:
            if self._ready is None:
                artifacts, manifest = builder_manifest(self.topology, self.pool)
                self._ready = {"artifacts": artifacts, "manifest": manifest}
            return self._ready

    def _pushing(self) -> dict[str, Any]:
        """What a push needs besides: the known_hosts it checks servers against, written on
        the builder once per run, before the first push (a run with nothing to push never
        writes it)."""
        side = self._side()
        with self._lock:
            if "known_hosts" not in side:
                conn = self.pool.get(self.topology.builder.server)
                kh_dir = resolve_remote_path(conn, f"$HOME/.flinger/{self.topology.name}")
                conn.run(f"mkdir -p {shlex.quote(kh_dir)} && chmod 700 {shlex.quote(kh_dir)}")
                conn.put_bytes(self._known_hosts().encode(), f"{kh_dir}/known_hosts", mode=0o600)
                side["known_hosts"] = f"{kh_dir}/known_hosts"
            return side

    def _known_hosts(self) -> str:
        """Only the deployment servers' keys, as the client verified them (never learned anew)."""
        known = known_hosts.read(self.topology.ssh.known_hosts)
        lines = []
        if self.topology.ssh.jump:  # the builder's pushes go through it too, checked as strictly
            jump = self.pool.jump_connection()
            assert jump is not None
            for key in known.lookup(jump.server.addr, jump.server.port or 22).values():
                lines.append(known_hosts.key_line(jump.server.addr, jump.server.port or 22, key))
        for server in self.topology.deployment_servers():
            # none recorded: that server fails at its own push step, with the trust hint
            for key in known.lookup(server.addr, server.port or 22).values():
                lines.append(known_hosts.key_line(server.addr, server.port or 22, key))
        return "\n".join(lines) + "\n"

    def built(self) -> dict[str, dict[str, Any]]:
        packages = self._side()["manifest"].get("packages", {})
        return packages if isinstance(packages, dict) else {}

    def staged_path(self, run_dir: str, package: str) -> str:
        return staged_tarball(run_dir, self.built(), package)

    def install_plan(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {"store": "builder", "builder_bytes_sent": self._sent}

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        side = self._pushing()
        built = self.built()
        # "/./" keeps the paths below it (--relative): packages/<file> lands in run_dir/packages/
        sources = [f"{side['artifacts']}/./{package_file(built[p], p)}" for p in packages]
        rsh = rsync_rsh(server, self.topology.ssh, known_hosts=side["known_hosts"])
        host = server.addr if ":" not in server.addr else f"[{server.addr}]"
        argv = ["rsync", "--relative", "--times", "--perms", "--chmod=F600,D700", "--partial", "--stats",
                f"--timeout={RSYNC_IO_TIMEOUT}", "-e", rsh, "--", *sources, f"{host}:{run_dir}/"]  # fmt: skip
        with self.pool.lease(self.topology.builder.server) as builder_conn:
            result = builder_conn.run(shlex.join(argv), on_line=lambda _s, t: report.line(t) if "rror" in t else None,
                                      check=False)  # fmt: skip
        if result.exit_code != 0:
            raise RemoteCommandError(f"rsync from the builder to {server.name}", result.exit_code, result.tail)
        stats = [rsync_stat(line.strip()) for line in result.stdout.splitlines()]
        pushed = {key: number for key, number in filter(None, stats) if key in PUSH_STATS}
        with self._lock:
            self._sent += pushed.get("bytes_sent", 0)
        return pushed


class RegistryStore:
    """The builder publishes the build to an OCI registry once per run; servers pull."""

    wait_step: str | None = "publish"  # a server's step while built() publishes (or fails to)

    def __init__(self, topology: Topology, pool: ConnectionPool) -> None:
        self.topology = topology
        self.pool = pool
        self._lock = threading.Lock()
        self._published: dict[str, Any] | None = None
        self._failure: str | None = None  # the publish failed: what it said
        self._hard_failure: str | None = None  # ... and the builder's manifest could not be read either
        self._spec: dict[str, Any] | None = None

    def _registry(self) -> dict[str, Any]:
        """The registry as plans name it (no credential: that travels apart)."""
        if self._spec is None:
            art = self.topology.artifacts
            self._spec = {
                "url": art.url,
                "repository": art.repository,
                "ca_pem": registry_credentials.ca_pem(self.topology),
                "plain_http": art.plain_http,
            }
        return self._spec

    def built(self) -> dict[str, dict[str, Any]]:
        """The build, published first (once per run: a second call, from any thread, waits
        for the first and shares its outcome). When the publish fails, the build is read
        from the builder's manifest instead: a server that has every package still
        converges (starts what stopped), and one that lacks a package fails at `publish`
        with the publish's own message (`deliver`)."""
        with self._lock:
            if self._hard_failure is not None:
                raise FlingerError(self._hard_failure)
            if self._published is None:
                try:
                    self._published = self._publish()
                except FlingerError as exc:
                    self._failure = exc.message
                    try:
                        self._published = {"packages": builder_manifest(self.topology, self.pool)[1].get("packages")}
                    except FlingerError:
                        self._hard_failure = exc.message
                        raise exc from None
            packages = self._published.get("packages")
            return packages if isinstance(packages, dict) else {}

    def _publish(self) -> dict[str, Any]:
        builder = self.topology.builder_server()
        conn = self.pool.get(builder.name)
        plan = {
            "artifacts_dir": resolve_remote_path(conn, self.topology.builder.artifacts_path),
            "registry": self._registry(),
            "credential": registry_credentials.push_credential(self.topology),
        }
        tool = upload_tool(conn, self.topology, f"$HOME/.flinger/{self.topology.name}")
        try:
            return run_tool(conn, builder, tool, ["registry-push"], plan, as_root=False)
        except RemoteCommandError as exc:
            raise FlingerError(
                f"publishing the build to {self.topology.artifacts.url} from {builder.name}: {exc.message}"
            ) from None

    def staged_path(self, run_dir: str, package: str) -> str:
        return staged_tarball(run_dir, self.built(), package)

    def install_plan(self) -> dict[str, Any]:
        if self._failure is not None:  # nothing to pull from: the install says what it lacks
            return {}
        credential = registry_credentials.PULL_CREDENTIAL_FILE if self.topology.artifacts.pull_credential() else None
        return {"registry": {**self._registry(), "credential": credential}}

    def deliver(self, server: Server, run_dir: str, packages: list[str], report: Reporter) -> dict[str, int]:
        if self._failure is not None:
            report.step("publish")
            raise FlingerError(f"{', '.join(packages)} not installed here, and {self._failure}")
        raise FlingerError(
            f"{server.name} pulls its packages from the registry itself; it asked for "
            f"{', '.join(packages)} instead (a remote tool older than this flinger?)"
        )

    def summary(self) -> dict[str, Any]:
        published = self._published or {}
        return {
            "store": "registry",
            "builder_bytes_sent": int(published.get("bytes_sent") or 0),
            "manifest_digest": published.get("manifest_digest"),
            "tag": published.get("tag"),
            "pushed": published.get("pushed") or [],
            "publish_error": self._failure,
        }
