"""The environment every command gets: global options, the UI, and lazily loaded inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flinger.errors import UsageError
from flinger.manifest import Manifest, load_manifest
from flinger.ssh import known_hosts
from flinger.tomlfile import suggest
from flinger.topology import Topology, find_config, load_topology
from flinger.topology.loader import config_error
from flinger.topology.model import Server
from flinger.ui import UI

if TYPE_CHECKING:
    from flinger.overlay.store import StateStore


@dataclass
class Env:
    config: Path | None
    parallel: int
    json: bool
    verbose: bool
    ui: UI
    _topology: Topology | None = field(default=None, repr=False)
    _manifest: Manifest | None = field(default=None, repr=False)
    _state: StateStore | None = field(default=None, repr=False)

    def topology(self) -> Topology:
        if self._topology is None:
            self._topology = load_topology(find_config(self.config))
            self.ui.debug(f"config: {self._topology.config_path}; state: {self._topology.state_dir}")
            # Lines of deploy.toml's known_hosts that are not known_hosts lines, said once.
            if self._topology.ssh.known_hosts is not None:
                for note in known_hosts.read(self._topology.ssh.known_hosts).notes:
                    self.ui.note(note)
        return self._topology

    def manifest(self) -> Manifest:
        if self._manifest is None:
            topology = self.topology()
            try:
                present = topology.manifest_path.is_file()
            except OSError as exc:  # a name too long, a loop of links: said as bad input
                raise config_error(topology, "source_dir", f"cannot look under it: {exc.strerror or exc}") from None
            if not present:
                # Say where it was named (deploy.toml's `manifest`, relative to source_dir).
                raise config_error(topology, "manifest", f"no manifest file at {topology.manifest_path}")
            self._manifest = load_manifest(topology.manifest_path)
            self.ui.debug(f"manifest: {topology.manifest_path}")
        return self._manifest

    def state(self) -> StateStore:
        """The deployment's sealed state, opened with the operator's identity (migrated or
        re-encrypted first when it must be; what was done said as notes)."""
        if self._state is None:
            from flinger.overlay.store import open_state

            self._state = open_state(self.topology())
            for note in self._state.notes:
                self.ui.note(note)
            self._state.notes.clear()
        return self._state

    def select_servers(self, names: str | None, *, include_builder: bool = False) -> list[Server]:
        """The deployment servers (plus the builder if asked), or those named in `--servers a,b`."""
        topo = self.topology()
        if not names:
            chosen = topo.deployment_servers()
            if include_builder and topo.builder.server not in topo.deployment.servers:
                chosen = [topo.builder_server(), *chosen]
            return chosen
        out: list[Server] = []
        for name in (n.strip() for n in names.split(",")):
            if not name:
                continue
            if name not in topo.servers:
                raise UsageError(f'--servers: no server named "{name}"{suggest(name, topo.servers)}')
            if topo.servers[name] not in out:
                out.append(topo.servers[name])
        if not out:
            raise UsageError("--servers: name at least one server")
        return out
