"""Assembling a release on a server, and keeping the last few.

`packages/<name>-<digest16>/` holds each package unpacked once (content addressed, never
changed); `releases/<id>/` links the packages of one release and holds its own copy of the
server's overlay (0700 dirs, 0400/0600 files, owned by the one service user that reads it).
The fingerprint of an install says whether anything differs from what runs; `prune` keeps
the last `keep_releases` releases, their receipts and the packages they use.
"""

import base64
import hashlib
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

from flinger.protocol.codec import encode
from flinger.protocol.plans import InstallPlan, Owner, PackageRef, ServiceRoots, ServiceSpec
from flinger.protocol.results import InstalledPackage
from flinger.remote import events, files, layout, unpack
from flinger.remote.receipt import service_fingerprint
from flinger.remote.switch import StepFailed

FLINGER_OWN = "flinger"  # the overlay's dir of files for flinger itself, not for the services
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def package_dir(name: str, digest: str) -> str:
    """Where a package is unpacked, relative to the install dir."""
    return os.path.join("packages", "%s-%s" % (name, digest[:16]))


def staged_tarball(plan: InstallPlan, ref: PackageRef) -> str:
    """Where package `ref`'s tarball is delivered: this run's staging dir (its digest is
    checked when it is unpacked)."""
    return os.path.join(plan.staging_dir, ref.tarball)


def lacking(plan: InstallPlan, install_dir: str) -> List[str]:
    """The plan's packages neither unpacked here yet (by name and digest) nor delivered into
    this run's staging dir."""
    return [
        p.name
        for p in plan.packages
        if not os.path.isdir(os.path.join(install_dir, package_dir(p.name, p.digest)))
        and not (plan.staging_dir and os.path.isfile(staged_tarball(plan, p)))
    ]


def unpack_packages(plan: InstallPlan, install_dir: str) -> Dict[str, InstalledPackage]:
    """Unpack each package not here yet from this run's staging dir, its sha256 checked."""
    unpacked: Dict[str, InstalledPackage] = {}
    for ref in plan.packages:
        digest = ref.digest.lower()
        if not _SHA256.match(digest):
            raise StepFailed("unpack", "package %s: digest must be a sha256 hex digest" % ref.name)
        relative = package_dir(ref.name, digest)
        target = os.path.join(install_dir, relative)
        unpacked[ref.name] = InstalledPackage(digest, relative)
        if os.path.isdir(target):
            continue
        events.step("unpack: %s" % ref.name)  # before: the time is unpack's
        tarball = staged_tarball(plan, ref)
        if not os.path.isfile(tarball):
            raise StepFailed("unpack", "package %s: no tarball at %s" % (ref.name, tarball))
        actual = files.sha256_file(tarball)
        if actual != digest:
            raise StepFailed("unpack", "package %s: tarball sha256 %s does not match %s" % (ref.name, actual, digest))
        try:
            unpack.extract(tarball, target)
        except (unpack.UnsafeArchive, OSError) as exc:
            raise StepFailed("unpack", "package %s: %s" % (ref.name, exc)) from None
    return unpacked


def stage_overlay(run_dir: str, overlay: Dict[str, str]) -> str:
    """Write the overlay that came in the plan ({relative path: base64}) under this run's
    staging dir: dirs 0700, files 0600, nothing outside it; the `flinger/` files (for the
    install itself: the registry's pull credential) are not written at all."""
    target = os.path.join(run_dir, "overlay")
    os.makedirs(run_dir, 0o700, exist_ok=True)
    files.remove_path(target)
    os.mkdir(target, 0o700)
    for rel, data in sorted(overlay.items()):
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            raise events.PlanError("overlay_files: %r is not a relative path inside the overlay" % rel)
        if parts[0] == FLINGER_OWN:
            continue
        try:
            content = base64.b64decode(data, validate=True)
        except ValueError:
            raise events.PlanError("overlay_files: %s is not base64" % rel) from None
        parent = target
        for part in parts[:-1]:
            parent = os.path.join(parent, part)
            if not os.path.isdir(parent):
                os.mkdir(parent, 0o700)
        fd = os.open(os.path.join(parent, parts[-1]), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
    return target


def _owner_ids(owner: Optional[Owner]) -> Tuple[int, int]:
    if owner is None:
        return -1, -1
    import grp
    import pwd

    try:
        return pwd.getpwnam(owner.user).pw_uid, grp.getgrnam(owner.group).gr_gid
    except KeyError as exc:
        raise StepFailed("release", "overlay owner: no such user or group %s" % exc) from None


def _copy_overlay(source: str, dest: str, owner: Optional[Owner]) -> None:
    """Copy the overlay with 0700 dirs and owner-only files, owned by the service user."""
    try:
        shutil.copytree(source, dest, symlinks=False)
    except shutil.Error as exc:  # one (source, dest, why) per file that failed
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        first = failures[0][2] if failures and len(failures[0]) == 3 else str(exc)
        more = " (and %d more)" % (len(failures) - 1) if len(failures) > 1 else ""
        raise StepFailed("release", "copying the overlay into the release: %s%s" % (first, more)) from None
    uid, gid = _owner_ids(owner)
    for dirpath, dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, os.stat(path).st_mode & 0o700 | 0o400)
        for path in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            if uid >= 0 or gid >= 0:
                os.chown(path, uid, gid)
        dirnames.sort()


def make_release(
    install_dir: str,
    release: str,
    unpacked: Dict[str, InstalledPackage],
    overlay_dir: Optional[str],
    owner: Optional[Owner],
) -> str:
    """Assemble releases/<id> (a fresh name if that one exists) and return the id."""
    releases = os.path.join(install_dir, "releases")
    os.makedirs(releases, exist_ok=True)
    name, serial = release, 1
    while os.path.lexists(os.path.join(releases, name)):
        name, serial = "%s.%d" % (release, serial), serial + 1
    partial = os.path.join(releases, "." + name + ".partial")
    files.remove_path(partial)
    os.mkdir(partial, 0o755)
    try:
        for package, record in sorted(unpacked.items()):
            os.symlink(os.path.join("..", "..", record.dir), os.path.join(partial, package))
        if overlay_dir:
            _copy_overlay(overlay_dir, os.path.join(partial, "overlay"), owner)
        os.rename(partial, os.path.join(releases, name))
    except BaseException:
        files.remove_path(partial)
        raise
    return name


def fingerprint(plan: InstallPlan, svcs: List[ServiceSpec], roots: ServiceRoots, overlay_dir: Optional[str]) -> str:
    """What an install would put in place, as one digest: the same digest as what runs
    means there is nothing to install."""
    owner = plan.overlay_owner
    content = {
        "packages": sorted((p.name, p.digest.lower()) for p in plan.packages),
        "overlay": files.tree_digest(overlay_dir) if overlay_dir else None,
        "overlay_owner": None if owner is None else {"user": owner.user, "group": owner.group},
        "services": [service_fingerprint(s) for s in svcs],
        "roots": encode(roots),
    }
    return hashlib.sha256(files.canonical_json(content).encode()).hexdigest()


def prune(install_dir: str, history: List[str], keep: int) -> List[str]:
    """Keep the last `keep` releases (their receipts and the packages they use); return them."""
    releases_dir = os.path.join(install_dir, "releases")
    kept = history[-keep:]
    for name in os.listdir(releases_dir):
        if name not in kept:
            files.remove_path(os.path.join(releases_dir, name))
    receipts = layout.receipts_dir(install_dir)
    for name in os.listdir(receipts) if os.path.isdir(receipts) else []:
        if name[: -len(".json")] not in kept:
            files.remove_path(os.path.join(receipts, name))
    used = set()
    for name in kept:
        release_dir = os.path.join(releases_dir, name)
        for entry in os.listdir(release_dir) if os.path.isdir(release_dir) else []:
            path = os.path.join(release_dir, entry)
            if os.path.islink(path):
                used.add(os.path.basename(os.readlink(path)))
    packages_dir = os.path.join(install_dir, "packages")
    for name in os.listdir(packages_dir) if os.path.isdir(packages_dir) else []:
        if name not in used:
            files.remove_path(os.path.join(packages_dir, name))
    return kept
