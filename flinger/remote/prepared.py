"""A prepared release: assembled and validated under the deploy lock, not switched yet.

`install` with phase `prepare` stops once the new release is ready (packages unpacked, the
release dir made with its overlay, every `validate` passed) and keeps the lock; the client
waits until every server of the batch is ready, then sends phase `switch` to each (or
`abort` when one of them failed and the rollout stops). What `prepare` learned is kept in
`<install_dir>/.flinger/prepared.json` (0600) so the switch needs no second copy of the
overlay. A release dir that is neither current, nor kept, nor prepared by a live run is an
orphan (a run killed between the two phases): it holds an overlay, so the next install
removes it under the lock.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.results import InstalledPackage
from flinger.remote import files, layout, switch


@dataclass
class Prepared:
    release: str
    holder: str  # the run that prepared it (and holds the lock)
    fingerprint: str
    packages: Dict[str, InstalledPackage] = field(default_factory=dict)


def _path(install_dir: str) -> str:
    return os.path.join(layout.state_dir(install_dir), "prepared.json")


def save(install_dir: str, prepared: Prepared) -> None:
    files.write_json_atomic(_path(install_dir), encode(prepared), mode=0o600)


def load(install_dir: str) -> Optional[Prepared]:
    data = files.read_json(_path(install_dir), None)
    if not isinstance(data, dict):
        return None
    try:
        return decode(Prepared, data, _path(install_dir), strict=False)
    except ProtocolError:
        return None  # damaged: treated as nothing prepared (its release dir is an orphan)


def take(install_dir: str, release: str, holder: str) -> Prepared:
    """What this run prepared here as `release`; StepFailed when it did not (or it is gone)."""
    prepared = load(install_dir)
    if prepared is None or prepared.release != release or prepared.holder != holder:
        raise switch.StepFailed("switch", "release %s was not prepared here by this run" % release)
    if not os.path.isdir(os.path.join(install_dir, "releases", release)):
        raise switch.StepFailed("switch", "the prepared release %s is gone" % release)
    return prepared


def forget(install_dir: str) -> None:
    files.remove_path(_path(install_dir))


def discard(install_dir: str, prepared: Prepared, kept: List[str]) -> None:
    """Remove a prepared release that is not to be switched (unless it is current or kept)."""
    if prepared.release not in kept and switch.current_release(install_dir) != prepared.release:
        files.remove_path(os.path.join(install_dir, "releases", prepared.release))
    forget(install_dir)


def remove_orphans(install_dir: str, kept: List[str]) -> List[str]:
    """Release dirs that are not current, not kept and not prepared (a run killed between
    prepare and switch left them, with their overlay): removed; their names. Only called
    while holding the lock, so no run that could still switch one exists."""
    releases = os.path.join(install_dir, "releases")
    if not os.path.isdir(releases):
        return []
    keep = set(kept) | {switch.current_release(install_dir)}
    removed = []
    for name in sorted(os.listdir(releases)):
        if name not in keep and not name.startswith("."):
            files.remove_path(os.path.join(releases, name))
            removed.append(name)
    forget(install_dir)
    return removed
