"""The receipt of an install dir: what runs there, and how to undo it.

`<install_dir>/.flinger/state.json` is the receipt of the current release: its packages,
services (with every path their managers created), the release history, who installed it
and the fingerprint that tells a re-run nothing changed. Each kept release also keeps its
own receipt in `.flinger/releases/<release>.json`: what a rollback switches back to.
Receipts written by other versions of the tool are read too (unknown keys are ignored).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.plans import HealthSpec, Owner, ServiceRoots, ServiceSpec
from flinger.protocol.results import InstalledPackage
from flinger.remote import files, layout


@dataclass
class Receipt:
    release: Optional[str] = None  # None: nothing is installed
    install_dir: str = ""
    version: int = 1
    previous_release: Optional[str] = None
    releases: List[str] = field(default_factory=list)  # the kept releases, oldest first
    installed_at: Optional[str] = None
    installed_by: Optional[str] = None
    fingerprint: Optional[str] = None
    packages: Dict[str, InstalledPackage] = field(default_factory=dict)
    services: List[ServiceSpec] = field(default_factory=list)
    roots: Optional[ServiceRoots] = None
    overlay_owner: Optional[Owner] = None
    switched_at: Optional[str] = None  # set by a rollback
    switched_by: Optional[str] = None
    # The fleet release this release runs as now, and every one it has served (a server a
    # run finds with nothing to change serves that run's fleet release with the release it
    # has): what `status` reports and a rollback to a fleet release looks for.
    fleet_release: Optional[str] = None
    fleet_releases: List[str] = field(default_factory=list)
    overlay_generation: Optional[int] = None  # the client's overlay generation of its overlay
    overlay_public: List[str] = field(default_factory=list)  # its overlay files that hold no secret
    overlay_removed: bool = False  # `forget` removed its overlay: it can no longer run

    @property
    def service_roots(self) -> ServiceRoots:
        return self.roots or ServiceRoots()

    @property
    def fleet(self) -> Optional[str]:
        """The fleet release it runs as (a receipt from before fleet releases: its own id,
        which was its run's)."""
        return self.fleet_release or (self.fleet_releases[-1] if self.fleet_releases else self.release)

    def served(self) -> List[str]:
        """Every fleet release this release has served, oldest first."""
        return list(self.fleet_releases) or ([self.release] if self.release else [])

    def serve(self, fleet_release: str) -> None:
        """From now on it runs as `fleet_release`."""
        self.fleet_release = fleet_release
        if not self.fleet_releases or self.fleet_releases[-1] != fleet_release:
            self.fleet_releases = [f for f in self.served() if f != fleet_release] + [fleet_release]


def _read(path: str) -> Receipt:
    data = files.read_json(path, None)
    if not isinstance(data, dict):
        return Receipt()
    try:
        return decode(Receipt, data, path, strict=False)
    except ProtocolError as exc:
        raise ProtocolError("the receipt %s is damaged: %s" % (path, exc)) from None


def load(install_dir: str) -> Receipt:
    """The install dir's current receipt (an empty one when nothing is installed)."""
    return _read(layout.state_file(install_dir))


def save(install_dir: str, receipt: Receipt) -> None:
    files.write_json_atomic(layout.state_file(install_dir), encode(receipt), mode=0o600)


def load_kept(install_dir: str, release: str) -> Optional[Receipt]:
    """The receipt of a kept release, or None."""
    if not os.path.isfile(layout.receipt_file(install_dir, release)):
        return None
    kept = _read(layout.receipt_file(install_dir, release))
    return kept if kept.release else None


def keep(install_dir: str, receipt: Receipt) -> None:
    """Keep the receipt of one release as long as the release: what a rollback restores."""
    assert receipt.release is not None
    files.make_dirs(layout.receipts_dir(install_dir))
    os.chmod(layout.receipts_dir(install_dir), 0o700)
    files.write_json_atomic(layout.receipt_file(install_dir, receipt.release), encode(receipt), mode=0o600)


def _health_fingerprint(health: HealthSpec) -> Dict[str, object]:
    return {"url": health.url, "command": health.command, "timeout": health.timeout, "interval": health.interval,
            "ca": health.ca}  # fmt: skip


def service_fingerprint(service: ServiceSpec) -> Dict[str, object]:
    """A service as the install fingerprint has always described it (the same text as the
    tool of version 1 made, so an upgrade of flinger alone restarts nothing)."""
    health = service.health
    described: Dict[str, object] = {
        "name": service.name,
        "package": service.package,
        "manager": service.manager,
        "files": dict(sorted(service.files.items())),
        "health": None if health is None else _health_fingerprint(health),
        "after": list(service.after),
        "log_files": list(service.log_files),
    }
    if service.validate:
        described["validate"] = service.validate
    return described
