"""The plans flinger sends to the remote tool: one dataclass per command, and its parts.

A plan travels as the JSON line `{"version": V, "command": NAME, "plan": {...}}` on the
command's stdin (messages.py). The client builds these objects, the remote tool decodes the
same classes (codec.py refuses a field of the wrong type, an unknown key, a missing one).
Standard library only, Python 3.9 (the remote tool imports this module on the hosts).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

# -- services ------------------------------------------------------------------------------


@dataclass
class HealthSpec:
    """How a service proves it is up: an http(s) GET answering 2xx, or a command exiting 0,
    retried every `interval` seconds for up to `timeout`."""

    url: Optional[str] = None
    command: Optional[str] = None
    timeout: float = 30.0
    interval: float = 0.5
    ca: Optional[str] = None  # CA bundle verifying an https url


@dataclass
class PathRecord:
    """A path a service manager created outside the install dir: "file" (a file or link),
    "tree" (a directory and all under it) or "dir" (a directory, removed only when empty)."""

    path: str
    kind: str


@dataclass
class ServiceSpec:
    """One service as its server's manager runs it: the rendered definition files (`unit`
    for systemd, `manifest` for SMF, `run` and `finish`/`log_run` for runit), the services
    it starts after, its health check and the log files that explain a failure. In a
    receipt it also lists the paths its manager created (`paths`)."""

    name: str
    manager: str
    files: Dict[str, str]
    package: Optional[str] = None
    after: List[str] = field(default_factory=list)
    health: Optional[HealthSpec] = None
    log_files: List[str] = field(default_factory=list)
    validate: Optional[str] = None  # run in the new release's dir before `current` moves
    paths: List[PathRecord] = field(default_factory=list)


@dataclass
class ServiceRoots:
    """Where the service managers keep definitions (tests and sandboxes point them elsewhere)."""

    systemd_dir: str = "/etc/systemd/system"
    smf_dir: str = "/var/svc/manifest/site"
    sv_dir: str = "/etc/sv"
    service_dir: str = "/etc/service"


# -- install -------------------------------------------------------------------------------


@dataclass
class PackageRef:
    """A package a server's release holds: its digest, and where its tarball is staged
    (relative to the run's staging dir) when it has to be unpacked."""

    name: str
    digest: str
    tarball: str


@dataclass
class Owner:
    user: str
    group: str


@dataclass
class RegistrySpec:
    """An OCI registry (no credential in here: that travels apart)."""

    url: str
    repository: str
    ca_pem: Optional[str] = None
    plain_http: bool = False


@dataclass
class PullSpec:
    """With a registry store: where the install pulls what it lacks, and which overlay file
    holds the pull credential (read from the plan, never written on the server)."""

    registry: RegistrySpec
    credential: Optional[str] = None


@dataclass
class Credential:
    username: str
    password: str = field(repr=False)  # never in a repr, a log line or an error


@dataclass
class InstallPlan:
    """`install`: with `acquire`, take the deploy lock for `lock_holder` first (waiting up to
    `acquire_wait` s) and, when a package is not unpacked here and there is no `pull`, answer
    `need` holding the lock; else unpack, assemble the release, validate, switch, (re)start,
    health-check, keep `keep_releases`; with `release_lock`, give the lock up at the end
    (not after a `prepare` that answers `prepared`: the switch or abort gives it up)."""

    install_dir: str
    staging_dir: str  # this run's own staging dir: <staging>/runs/<install-dir key>/<run>
    release: str
    lock_holder: str
    packages: List[PackageRef] = field(default_factory=list)
    services: List[ServiceSpec] = field(default_factory=list)
    overlay_files: Dict[str, str] = field(default_factory=dict)  # relative path -> base64
    # the overlay files that hold no secret (flinger/overlay/public.py): the receipt keeps
    # them, and a dry run may be shown their text later
    overlay_public: List[str] = field(default_factory=list)
    overlay_owner: Optional[Owner] = None
    staging_runs: Optional[str] = None  # where earlier runs of this install dir stage
    acquire: bool = False
    acquire_wait: float = 0.0
    release_lock: bool = False
    keep_releases: int = 3
    pull: Optional[PullSpec] = None
    roots: Optional[ServiceRoots] = None
    # The fleet release this install is part of (the same on every server of the run); a
    # server that has nothing to change records that it runs it too.
    fleet_release: Optional[str] = None
    overlay_generation: Optional[int] = None  # the client's overlay generation the overlay comes from
    # all: to the end in one command; prepare: stop when the release is made and validated,
    # keeping the lock (answer `prepared`); switch / abort: of the release `prepare` made
    phase: str = "all"
    # > 0 with phase prepare: once `prepared` is answered, the same process waits on stdin
    # for the client's word (`switch`, `abort`; `wait` to keep waiting) and carries it out,
    # answering a second result; no word within this many seconds, or stdin closed (the
    # client gone), is an abort: the release is removed, the lock given up (remote/hold.py)
    hold_within: float = 0.0
    # > 0: after a switch the server waits this many seconds (once the install is over) for
    # `confirm`; without it, a watcher that outlives the install switches it back
    confirm_within: float = 0.0


# -- the other server commands -------------------------------------------------------------


@dataclass
class InventoryPlan:
    """`status` and `history`: what is installed in `install_dir` (no lock needed); with
    `compare`, status also says the digest of each file of the running overlay and of each
    service's definition (what `deploy install --dry-run` compares with its plan)."""

    install_dir: str
    compare: bool = False
    # with compare: overlay files (relative path -> the sha256 an install would put there)
    # whose running text to send back when it differs, if the receipt says it holds no secret
    texts: Dict[str, str] = field(default_factory=dict)


@dataclass
class RollbackPlan:
    """`rollback`: switch back to release `to` (default: the one before the current) under
    the lock of `lock_holder`, taking it first with `acquire` and giving it up at the end."""

    install_dir: str
    lock_holder: str
    to: Optional[str] = None
    acquire: bool = True
    acquire_wait: float = 0.0
    fleet_release: Optional[str] = None  # the fleet release `to` serves in this rollback


@dataclass
class ConfirmPlan:
    """`confirm`: the switch `token` names stands (its watcher stands down); the lock of
    `lock_holder` is given up."""

    install_dir: str
    lock_holder: str
    token: str


@dataclass
class ForgetPlan:
    """`forget`: remove the overlay (secrets, keys, rendered configs) of every kept release
    but the current one whose overlay generation is older than `before` (a rotation that
    the whole fleet completed replaced them), under the lock of `lock_holder`."""

    install_dir: str
    lock_holder: str
    before: int
    acquire_wait: float = 0.0


@dataclass
class UninstallPlan:
    """`uninstall`: stop and remove what the receipt lists; `clean` also removes
    `staging_dir`. Takes the lock of `lock_holder` first (the state dir goes with it)."""

    install_dir: str
    lock_holder: str
    staging_dir: Optional[str] = None
    clean: bool = False
    acquire_wait: float = 0.0


@dataclass
class LockPlan:
    """`lock`: acquire (waiting up to `wait` s for a live holder), release or break the
    deploy lock of `install_dir`."""

    action: str  # acquire | release | break
    install_dir: str
    holder: str
    wait: float = 0.0


# -- the builder ---------------------------------------------------------------------------


@dataclass
class PathMap:
    """Copy `source` (a file, directory or glob in the source tree) to `dest` in the package."""

    source: str
    dest: str


@dataclass
class PackageSource:
    """How one package is built: `local` (build commands, then `paths` packed), `prebuilt`
    (downloaded, its sha256 checked) or `composite` (the union of other packages)."""

    name: str
    type: str = "local"
    version: str = "0.0.0"
    build: List[str] = field(default_factory=list)
    paths: List[PathMap] = field(default_factory=list)
    inputs: List[str] = field(default_factory=list)  # globs of what the build commands read
    url: Optional[str] = None
    sha256: Optional[str] = None
    to: Optional[str] = None
    packages: List[str] = field(default_factory=list)


@dataclass
class BuildPlan:
    """`build`: build (or with `check_only` only run the commands of) every package."""

    source_dir: str
    artifacts_dir: str
    packages: List[PackageSource]
    check_only: bool = False
    no_cache: bool = False
    jobs: int = 2


@dataclass
class PushPlan:
    """`registry-push`: publish the build in `artifacts_dir` to the registry."""

    artifacts_dir: str
    registry: RegistrySpec
    credential: Optional[Credential] = None


# -- prerequisites -------------------------------------------------------------------------


@dataclass
class UserSpec:
    name: str
    group: Optional[str] = None
    home: Optional[str] = None
    shell: Optional[str] = None
    system: bool = False


@dataclass
class DirSpec:
    path: str
    owner: Optional[str] = None
    group: Optional[str] = None
    mode: Optional[int] = None


@dataclass
class ScriptSpec:
    """A setup script, run with sh when its sha256 is what the client has."""

    name: str
    path: str
    sha256: str
    cwd: Optional[str] = None


@dataclass
class PrereqsPlan:
    """`prereqs`: OS packages, sysctls, groups, users, directories and scripts; with
    `check`, only look and report what would change."""

    os: str = "auto"  # auto | debian | illumos
    apt: List[str] = field(default_factory=list)
    pkg: List[str] = field(default_factory=list)
    sysctl: Dict[str, str] = field(default_factory=dict)
    groups: List[str] = field(default_factory=list)
    users: List[UserSpec] = field(default_factory=list)
    dirs: List[DirSpec] = field(default_factory=list)
    scripts: List[ScriptSpec] = field(default_factory=list)
    check: bool = False
    sysctl_file: Optional[str] = None
