"""Host keys as OpenSSH meets them: what a host shows on the way a connection reaches it, and
`trust` (explicit first use) recording it under the name OpenSSH will look up.

A probe is one strict `ssh` to the host, exactly as a connection goes (its aliases,
ProxyJump hops, ProxyCommand, HostKeyAlias), with a KnownHostsCommand helper that writes down
the key the host showed and the name OpenSSH looked it up under, and adds nothing to what is
trusted. OpenSSH's answer (accepted; unknown; CHANGED; @revoked; a hop unknown) decides what
`trust` does: record it (hashed when HashKnownHosts yes), report a change (replaced only with
--replace), trust the jump hosts on the way first, or refuse.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from flinger.errors import HostKeyError, UnreachableError
from flinger.ssh import detached, known_hosts
from flinger.ssh.config import Hop, Resolved, SshConfig
from flinger.ssh.failures import CHANGED_FOR, REVOKED, UNKNOWN_KEY, unreachable_reason
from flinger.topology.model import Server

PROBE_COMMAND = "exit 0"


@dataclass(frozen=True)
class Shown:
    """A key a host showed, under the name OpenSSH looked it up."""

    name: str
    kind: str
    blob: str

    @property
    def fingerprint(self) -> str:
        return known_hosts.fingerprint_of(self.blob)

    @property
    def certificate(self) -> bool:
        return "-cert-" in self.kind


@dataclass(frozen=True)
class Probe:
    shown: tuple[Shown, ...]
    stderr: str
    code: int

    @property
    def key(self) -> Shown | None:
        """The host's own (plain) key, the last one shown."""
        plain = [s for s in self.shown if not s.certificate]
        return plain[-1] if plain else None

    @property
    def accepted(self) -> bool:
        return self.shown != () and "Host key verification failed" not in self.stderr


@dataclass(frozen=True)
class Trusted:
    """What `trust` did for one host (a server or a jump host on its way)."""

    host: str
    name: str
    kind: str
    fingerprint: str
    state: str  # recorded, replaced, already trusted, trusted by certificate authority
    previous: str | None
    file: str


class HostKeyTrust:
    """`trust` for the hosts of one run, through the run's generated config."""

    def __init__(self, config: SshConfig) -> None:
        self.config = config
        self._write = threading.Lock()
        self._probes = 0

    def probe(self, hop: Hop, options: list[str]) -> Probe:
        """One strict ssh to `hop` with `options`; what it showed and what OpenSSH said."""
        with self._write:
            self._probes += 1
            out = self.config.directory / f"shown-{self._probes}"
        argv = [
            *self.config.base_argv(), *options,
            "-o", "KnownHostsCommand=" + self.config.helper_command("record", str(out)),
            "-o", "ControlPath=none", "-o", "ForwardAgent=no", *hop.argv(), PROBE_COMMAND,
        ]  # fmt: skip
        limit = max(1.0, self.config.settings.connect_timeout) * 3 + 30
        try:
            proc = detached.run(argv, capture_output=True, text=True, timeout=limit)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, stderr = -1, f"no answer within {limit:.0f}s (timed out)"
        try:
            lines = out.read_text().splitlines()
            out.unlink()
        except FileNotFoundError:
            lines = []
        shown = tuple(Shown(*line.split(" ", 2)) for line in lines if line.count(" ") == 2)
        return Probe(shown, stderr, code)

    def trust(self, server: Server, *, replace: bool) -> list[Trusted]:
        """Trust `server` and, when its key cannot be reached otherwise, the jump hosts on
        the way to it first (in order); what was done for each."""
        target = Hop.of(server)
        resolved = self.config.resolve(target)
        options = self.config.hop_options(server, pin=False)
        probe = self.probe(target, options)
        done: list[Trusted] = []
        if self._hop_unknown(probe, resolved):
            jumps = self.config.jumps(resolved)
            for index, jump in enumerate(jumps):
                before = ["-o", f"ProxyJump={','.join(jumps[:index])}"] if index else []
                hop = Hop.parse(jump)
                done.append(
                    self._settle(
                        f"jump:{jump}", hop, self.config.resolve(hop, jump=False), self.probe(hop, before), replace
                    )
                )
            probe = self.probe(target, options)
        settled = self._settle(server.name, target, resolved, probe, replace)
        if server.host_key is not None and settled.fingerprint != server.host_key:
            raise HostKeyError(
                f"{server.name}: host key {settled.fingerprint} does not match the pinned host_key {server.host_key}"
            )
        return [*done, settled]

    def _hop_unknown(self, probe: Probe, resolved: Resolved) -> bool:
        unknown = UNKNOWN_KEY.search(probe.stderr)
        changed = CHANGED_FOR.search(probe.stderr)
        name = unknown[2] if unknown else changed[1] if changed else None
        return name is not None and name != resolved.lookup_name and not probe.shown

    def _settle(self, host: str, hop: Hop, resolved: Resolved, probe: Probe, replace: bool) -> Trusted:
        """Record what `probe` showed for `hop`, or say why not."""
        key = probe.key
        if probe.accepted and key is None and probe.shown:
            ca = probe.shown[-1]
            return Trusted(host, ca.name, ca.kind, ca.fingerprint, "trusted by certificate authority", None, "")
        if key is None:
            raise self._unreached(host, hop, probe)
        file = (
            self.config.settings.known_hosts
            or (resolved.user_known_hosts or (Path("~/.ssh/known_hosts").expanduser(),))[0]
        )
        if REVOKED.search(probe.stderr):
            raise HostKeyError(
                f"{host}: host key {key.fingerprint} is marked @revoked in known_hosts; not recording it"
            )
        if probe.accepted:
            return Trusted(host, key.name, key.kind, key.fingerprint, "already trusted", None, str(file))
        with self._write:
            known = known_hosts.read(*resolved.known_hosts_files)
            before = known.keys_for(key.name).get(key.kind)
            previous = known_hosts.fingerprint_of(before) if before else None
            changed = CHANGED_FOR.search(probe.stderr) is not None
            if changed and not replace:
                raise HostKeyError(
                    f"{host}: host key CHANGED for {key.name}: it shows {key.fingerprint} ({key.kind})"
                    + (f", known_hosts has {previous}" if previous else ", known_hosts has a key of another type")
                    + f"; if the host was re-keyed, run: flinger trust --replace --servers {host.removeprefix('jump:')}"
                )
            write = known_hosts.replace if changed else known_hosts.append
            write(file, key.name, key.kind, key.blob, hashed=resolved.hash_known_hosts)
        state = "replaced" if changed else "recorded"
        return Trusted(host, key.name, key.kind, key.fingerprint, state, previous, str(file))

    def _unreached(self, host: str, hop: Hop, probe: Probe) -> Exception:
        unknown = UNKNOWN_KEY.search(probe.stderr)
        if unknown:  # a hop, not this host, is unknown (and could not be trusted on the way)
            return HostKeyError(
                f"{host}: could not reach its key: the key of {unknown[2]} on the way is not known, and it is "
                "reached through a ProxyCommand flinger cannot trust for you; record it first (ssh-keyscan, "
                "or flinger trust for that host)"
            )
        return UnreachableError(f"{host}: cannot reach {hop}: {unreachable_reason(probe.stderr, self.config)}")
