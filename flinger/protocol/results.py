"""What the remote tool answers: one result dataclass per command, and their parts.

Every command ends with one line `{"event": "result", "version": V, ...}`: an `Outcome`
(ok, the error, the step that failed) and the command's own fields. The tool builds these
objects; the client decodes the same classes. Standard library only, Python 3.9.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Outcome:
    """What every result says: whether the command did its job, and if not, why and where."""

    ok: bool = True
    error: Optional[str] = None
    step: Optional[str] = None  # the step that failed: lock, unpack, validate:NAME, service:NAME, ...


# -- the lock ------------------------------------------------------------------------------


@dataclass
class StaleLock:
    """A lock this command broke: nobody worked for its holder on the server any more."""

    holder: Optional[str] = None
    since: Optional[str] = None
    reason: Optional[str] = None


@dataclass
class LockResult(Outcome):
    holder: Optional[str] = None  # who holds it now (or held it, for `break`)
    since: Optional[str] = None
    broke_stale: Optional[StaleLock] = None
    released: bool = False
    broken: bool = False


# -- install and rollback ------------------------------------------------------------------


@dataclass
class ServiceLog:
    """The last lines of a failed service's own log (journal, runit log or log_file)."""

    service: str
    lines: List[str] = field(default_factory=list)


@dataclass
class Health:
    healthy: bool
    detail: str = ""


@dataclass
class SwitchResult(Outcome):
    """What a switch to a release did: an install's or a rollback's."""

    changed: bool = False
    release: Optional[str] = None
    previous_release: Optional[str] = None
    service_log: Optional[ServiceLog] = None  # a failed service's own words, read before the rollback
    validate_output: Optional[List[str]] = None  # what a failed validate command printed
    rolled_back_to: Optional[str] = None  # set when the switch was undone: the release running now
    rolled_back: bool = False  # the switch was undone (rolled_back_to None: nothing was installed before)
    rollback_problems: List[str] = field(default_factory=list)
    restored_health: Dict[str, Health] = field(default_factory=dict)
    broke_stale: Optional[StaleLock] = None
    lock_released: bool = False
    lock_problem: Optional[str] = None
    fleet_release: Optional[str] = None  # the fleet release the server runs now


@dataclass
class SelfRollback:
    """A switch nobody confirmed in time: the server switched itself back (see confirm.py)."""

    release: str  # what it had switched to
    to: str  # what it went back to
    at: str
    reason: str
    fleet_release: Optional[str] = None
    ok: bool = True
    error: Optional[str] = None


@dataclass
class ConfirmResult(Outcome):
    confirmed: bool = False
    lock_released: bool = False


@dataclass
class InstallResult(SwitchResult):
    need: List[str] = field(default_factory=list)  # packages to deliver (the lock still held)
    started: List[str] = field(default_factory=list)  # no new release: services started again
    pulled: Dict[str, int] = field(default_factory=dict)  # bytes pulled from the registry, by package
    prepared: Optional[str] = None  # phase prepare: the release made and validated, the lock still held
    awaiting_confirmation: Optional[str] = None  # switched: `confirm` this token in time (the lock still held)
    self_rollback: Optional[SelfRollback] = None  # what an earlier, unconfirmed switch did here
    lock_held_by: Optional[str] = None  # step lock: the other run that holds it

    def waits_for_word(self) -> bool:
        """After this answer an install told to hold (`hold_within`) waits for the client's
        word (remote/hold.py): a release ready (switch or abort), or a switch awaiting its
        confirmation (confirm). Client and server ask this one question."""
        return self.ok and bool(self.prepared or self.awaiting_confirmation)


# -- what a server has ---------------------------------------------------------------------


@dataclass
class InstalledPackage:
    digest: str
    dir: str


@dataclass
class ServiceState:
    name: str
    manager: str
    state: str
    package: Optional[str] = None
    healthy: Optional[bool] = None


def definition_digest(files: Dict[str, str]) -> str:
    """One digest of a service's rendered definition files (the same on client and server)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


OVERLAY_TEXT_LIMIT = 64 * 1024  # an overlay file shown in a dry run's diff is at most this long


def overlay_text(data: bytes) -> Optional[str]:
    """An overlay file's content as a diff may show it: UTF-8 of at most OVERLAY_TEXT_LIMIT
    bytes, else None (the same rule on client and server)."""
    if len(data) > OVERLAY_TEXT_LIMIT:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class StatusResult(Outcome):
    installed: bool = False
    release: Optional[str] = None
    current: Optional[str] = None
    previous_release: Optional[str] = None
    installed_at: Optional[str] = None
    packages: Dict[str, InstalledPackage] = field(default_factory=dict)
    services: List[ServiceState] = field(default_factory=list)
    fleet_release: Optional[str] = None  # the fleet release it runs (see receipt.fleet_releases)
    self_rollback: Optional[SelfRollback] = None  # the last switch it undid itself, unconfirmed
    overlay: Optional[Dict[str, str]] = None  # with compare: sha256 of each running overlay file
    definitions: Dict[str, str] = field(default_factory=dict)  # with compare: service -> definition_digest
    overlay_text: Dict[str, str] = field(default_factory=dict)  # with texts: the running text asked for


@dataclass
class ReleaseInfo:
    release: str
    current: bool = False
    installed_at: Optional[str] = None
    installed_by: Optional[str] = None
    packages: Dict[str, str] = field(default_factory=dict)  # name -> digest
    can_roll_back_to: bool = False
    fleet_releases: List[str] = field(default_factory=list)  # the fleet releases it served, oldest first
    overlay_generation: Optional[int] = None
    overlay_removed: bool = False  # its overlay was removed after a rotation (`forget`): no way back to it


@dataclass
class HistoryResult(Outcome):
    installed: bool = False
    current: Optional[str] = None
    releases: List[ReleaseInfo] = field(default_factory=list)
    switched_at: Optional[str] = None
    switched_by: Optional[str] = None


@dataclass
class ForgetResult(Outcome):
    forgotten: List[str] = field(default_factory=list)  # the releases whose overlay was removed


@dataclass
class UninstallResult(Outcome):
    removed: bool = False
    problems: List[str] = field(default_factory=list)


# -- the builder ---------------------------------------------------------------------------


@dataclass
class BuiltPackage:
    """A package in the builder's manifest.json (and in a build's result)."""

    sha256: str
    file: str
    version: str = "0.0.0"
    inputs_digest: str = ""
    size: int = 0


@dataclass
class PackageOutcome:
    state: str  # built | cached | checked | failed | skipped
    sha256: Optional[str] = None
    size: Optional[int] = None
    command: Optional[str] = None
    exit_status: Optional[int] = None
    tail: List[str] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class BuildResult(Outcome):
    packages: Dict[str, PackageOutcome] = field(default_factory=dict)
    manifest: Optional[str] = None  # the manifest.json the build wrote


@dataclass
class PushResult(Outcome):
    packages: Dict[str, BuiltPackage] = field(default_factory=dict)
    manifest_digest: Optional[str] = None
    tag: Optional[str] = None
    pushed: List[str] = field(default_factory=list)
    present: List[str] = field(default_factory=list)
    bytes_sent: int = 0


# -- prerequisites -------------------------------------------------------------------------


@dataclass
class PrereqItem:
    kind: str  # apt, pkg, sysctl, group, user, dir, script
    name: str
    state: str  # ok | changed | would-change | failed
    detail: str = ""


@dataclass
class PrereqsResult(Outcome):
    items: List[PrereqItem] = field(default_factory=list)  # every item that is not "ok"
    unchanged: int = 0
    changed: int = 0
    would_change: int = 0
    failed: int = 0
    failures: List[str] = field(default_factory=list)
