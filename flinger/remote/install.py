"""Server-side commands: `install`, `activate`, `deactivate`, `uninstall`, `clean`, `status`.

Each reads a JSON plan on stdin. `install` unpacks the packages it does not have yet
(content addressed under `packages/`), assembles `releases/<release>/` (links to the
packages + the overlay), switches `current` atomically, then (re)starts the services in
dependency order and waits for their health checks. If anything fails after the switch,
`current` goes back to the previous release and the previous service definitions are
restored and restarted, so the previous release keeps running. The receipt
(`.flinger/state.json`) records every package, release, service and path created outside
the install dir, and `uninstall` removes exactly those.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from flinger.remote import events, files, health, layout, lock, registry, services, switch, unpack

KEEP_RELEASES = 3  # the default of [deployment] keep_releases
FLINGER_OWN = "flinger"  # the overlay's dir of files for flinger itself, not for the services
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")


# ---------------------------------------------------------------------------- the plan


def plain_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise events.PlanError("%s %r must be a plain name (letters, digits, . _ @ -)" % (what, value))
    return value


def parse_services(plan: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The plan's services, validated and sorted so each comes after those it names in
    `after` (names not in the plan, e.g. on other servers, are ignored)."""
    parsed: Dict[str, Dict[str, Any]] = {}
    for raw in plan.get("services") or []:
        if not isinstance(raw, dict):
            raise events.PlanError("every service must be an object")
        name = plain_name(raw.get("name"), "service name")
        manager = raw.get("manager")
        if manager not in services.MANAGERS:
            raise events.PlanError("service %s: unknown manager %r" % (name, manager))
        definition = raw.get("files") or {}
        if not isinstance(definition, dict):
            raise events.PlanError("service %s: files must be an object" % name)
        for key in services.DEFINITION_KEYS[manager]:
            if not isinstance(definition.get(key), str):
                raise events.PlanError("service %s: files.%s is missing" % (name, key))
        if name in parsed:
            raise events.PlanError("service %s appears twice" % name)
        parsed[name] = {
            "name": name,
            "package": raw.get("package"),
            "manager": manager,
            "files": {str(k): str(v) for k, v in sorted(definition.items())},
            "health": raw.get("health") or None,
            "after": [str(a) for a in raw.get("after") or []],
            "log_files": [str(p) for p in raw.get("log_files") or []],
        }
        if raw.get("validate"):  # absent rather than null: receipts' fingerprints stay as they were
            if not isinstance(raw["validate"], str):
                raise events.PlanError("service %s: validate must be a string" % name)
            parsed[name]["validate"] = raw["validate"]
    ordered: List[Dict[str, Any]] = []
    state: Dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise events.PlanError("services form an `after` cycle through %s" % name)
        state[name] = 1
        for before in parsed[name]["after"]:
            if before in parsed:
                visit(before)
        state[name] = 2
        ordered.append(parsed[name])

    for name in parsed:
        visit(name)
    return ordered


def install_dir_of(plan: Dict[str, Any]) -> str:
    path = events.require(plan, "install_dir")
    if not os.path.isabs(path) or os.path.normpath(path) == "/":
        raise events.PlanError("install_dir must be an absolute path other than /")
    return os.path.normpath(str(path))


# ---------------------------------------------------------------------- the receipt


def load_state(install_dir: str) -> Dict[str, Any]:
    state = files.read_json(layout.state_file(install_dir), None)
    return state if isinstance(state, dict) else {}


def save_state(install_dir: str, state: Dict[str, Any]) -> None:
    files.write_json_atomic(layout.state_file(install_dir), state, mode=0o600)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------- install steps


def _package_dir(name: str, digest: str) -> str:
    return os.path.join("packages", "%s-%s" % (name, digest[:16]))


def _planned_packages(plan: Dict[str, Any]) -> List[Tuple[Dict[str, Any], str, str, str]]:
    """The plan's packages: (entry, name, digest, dir relative to the install dir)."""
    found = []
    for raw in plan.get("packages") or []:
        name = plain_name(raw.get("name"), "package name")
        digest = str(raw.get("digest", "")).lower()
        found.append((raw, name, digest, _package_dir(name, digest)))
    return found


def _unpack_packages(plan: Dict[str, Any], install_dir: str) -> Dict[str, Dict[str, str]]:
    staging = plan.get("staging_dir") or ""
    unpacked: Dict[str, Dict[str, str]] = {}
    for raw, name, digest, relative in _planned_packages(plan):
        if not re.match(r"^[0-9a-f]{64}$", digest):
            raise switch.StepFailed("unpack", "package %s: digest must be a sha256 hex digest" % name)
        target = os.path.join(install_dir, relative)
        unpacked[name] = {"digest": digest, "dir": relative}
        if os.path.isdir(target):
            events.emit("step", step="unpack", package=name, reused=True)
            continue
        events.emit("step", step="unpack", package=name, reused=False)  # before: the time is unpack's
        tarball = os.path.join(staging, str(raw.get("tarball", "")))
        if not os.path.isfile(tarball):
            raise switch.StepFailed("unpack", "package %s: no tarball at %s" % (name, tarball))
        actual = files.sha256_file(tarball)
        if actual != digest:
            raise switch.StepFailed(
                "unpack", "package %s: tarball sha256 %s does not match %s" % (name, actual, digest)
            )
        try:
            unpack.extract(tarball, target)
        except (unpack.UnsafeArchive, OSError) as exc:
            raise switch.StepFailed("unpack", "package %s: %s" % (name, exc)) from None
    return unpacked


def _copy_overlay(source: str, dest: str, owner: Optional[Dict[str, Any]]) -> None:
    """Copy the overlay with 0700 dirs and owner-only files, owned by the service user."""
    shutil.copytree(source, dest, symlinks=False)
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


def _owner_ids(owner: Optional[Dict[str, Any]]) -> Tuple[int, int]:
    if not owner:
        return -1, -1
    import grp
    import pwd

    try:
        uid = pwd.getpwnam(owner["user"]).pw_uid if owner.get("user") else -1
        gid = grp.getgrnam(owner["group"]).gr_gid if owner.get("group") else -1
    except KeyError as exc:
        raise switch.StepFailed("release", "overlay owner: no such user or group %s" % exc) from None
    return uid, gid


def _make_release(
    install_dir: str,
    release: str,
    unpacked: Dict[str, Dict[str, str]],
    overlay_dir: Optional[str],
    owner: Optional[Dict[str, Any]],
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
            os.symlink(os.path.join("..", "..", record["dir"]), os.path.join(partial, package))
        if overlay_dir:
            _copy_overlay(overlay_dir, os.path.join(partial, "overlay"), owner)
        os.rename(partial, os.path.join(releases, name))
    except BaseException:
        files.remove_path(partial)
        raise
    return name


def _current_release(install_dir: str) -> Optional[str]:
    current = os.path.join(install_dir, "current")
    if not os.path.islink(current):
        return None
    target = os.readlink(current)
    return os.path.basename(target) if os.path.isdir(current) else None


def _fingerprint(
    plan: Dict[str, Any], svcs: List[Dict[str, Any]], roots: Dict[str, str], overlay_dir: Optional[str]
) -> str:
    content = {
        "packages": sorted((str(p.get("name")), str(p.get("digest")).lower()) for p in plan.get("packages") or []),
        "overlay": files.tree_digest(overlay_dir) if overlay_dir else None,
        "overlay_owner": plan.get("overlay_owner"),
        "services": svcs,
        "roots": roots,
    }
    return hashlib.sha256(files.canonical_json(content).encode()).hexdigest()


def keep_releases(plan: Dict[str, Any]) -> int:
    value = plan.get("keep_releases", KEEP_RELEASES)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise events.PlanError("plan key 'keep_releases' must be an integer >= 1")
    return value


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


def save_receipt(install_dir: str, state: Dict[str, Any]) -> None:
    """The receipt of one release, kept as long as the release: what a rollback restores."""
    files.make_dirs(layout.receipts_dir(install_dir))
    os.chmod(layout.receipts_dir(install_dir), 0o700)
    files.write_json_atomic(layout.receipt_file(install_dir, state["release"]), state, mode=0o600)


def claim_lock(plan: Dict[str, Any], install_dir: str) -> Optional[str]:
    """With a `lock_holder` in the plan: the error if that run does not hold the lock here;
    else this process becomes the one working for the lock (a re-run judges it live while
    this runs, even once its client is gone)."""
    holder = plan.get("lock_holder")
    if not holder:
        return None
    try:
        return lock.claim_for_worker(install_dir, str(holder))
    except (lock.LockWriteError, OSError) as exc:
        return str(exc)


def install(plan: Dict[str, Any]) -> int:
    """`install`. With `acquire` in the plan it first takes the deploy lock for
    `lock_holder`; when a package is not here yet it stops there, holding the lock, and says
    which (`need`): the client has them delivered, then runs `install` again. With
    `overlay_files` the overlay comes in the plan itself, and with `release_lock` the lock is
    given up just before the result: a run with nothing to deliver is this one command."""
    overlay_dir = plan.get("overlay_dir") or None
    run_dir = plan.get("staging_dir") or None
    try:
        install_dir = install_dir_of(plan)
        release_id = plain_name(events.require(plan, "release"), "release")
        svcs = parse_services(plan)
        roots = services.roots_from(plan)
        holder = str(plan.get("lock_holder") or "")
        if plan.get("acquire") is not None:
            if not holder:
                raise events.PlanError("acquire needs a lock_holder")
            wait = plan["acquire"].get("wait", 0) if isinstance(plan["acquire"], dict) else 0
            taken = lock.take(install_dir, holder, float(wait or 0))
            if not taken.pop("ok"):
                return events.result(False, **taken)
        need = _missing_packages(plan, install_dir)
        if need and plan.get("acquire") is not None and plan.get("registry") is None:
            # the lock stays: the client has these delivered, then installs
            return events.result(True, need=need, changed=False)
        if holder and plan.get("release_lock"):
            events.before_result(lambda fields: _let_go(install_dir, holder, fields))
        if need and plan.get("registry") is not None:  # this server pulls what it lacks itself
            try:
                pulled = _pull_missing(plan, need, run_dir)
            except switch.StepFailed as exc:
                return events.result(False, step=exc.step, error=str(exc), changed=False)
            if pulled:
                events.before_result(lambda fields: fields.update(pulled=pulled))
        # From here on the server changes: finish (install or rollback) even if the client goes.
        events.survive_lost_client(os.path.join(install_dir, ".flinger", "events.log"))
        if plan.get("overlay_files") is not None:
            overlay_dir = _stage_overlay(run_dir, plan["overlay_files"])
        if overlay_dir and not os.path.isdir(overlay_dir):
            raise events.PlanError("overlay_dir %s does not exist" % overlay_dir)
        refused = claim_lock(plan, install_dir)
        if refused:
            return events.result(False, step="lock", error=refused)
        if plan.get("lock_holder"):
            _remove_earlier_runs(plan.get("staging_runs"), run_dir)
        return _install(plan, install_dir, release_id, svcs, roots, overlay_dir)
    finally:
        if overlay_dir:
            shutil.rmtree(overlay_dir, ignore_errors=True)  # staged secrets never linger
        own = _own_run_dir(run_dir)
        if own:
            shutil.rmtree(own, ignore_errors=True)  # this run's staged packages are unpacked


def _own_run_dir(run_dir: Optional[str]) -> Optional[str]:
    """`run_dir` when it is a run's own staging dir (`<staging>/runs/<install dir key>/<run>`),
    what this install may write into and removes at its end; else None."""
    if run_dir and os.path.basename(os.path.dirname(os.path.dirname(run_dir))) == "runs":
        return run_dir
    return None


def _missing_packages(plan: Dict[str, Any], install_dir: str) -> List[str]:
    """The plan's packages not unpacked here yet (by name and digest)."""
    return [
        name
        for _raw, name, _digest, relative in _planned_packages(plan)
        if not os.path.isdir(os.path.join(install_dir, relative))
    ]


def _pull_missing(plan: Dict[str, Any], need: List[str], staging: Optional[str]) -> Dict[str, int]:
    """Pull the packages `need` names (not here yet) from the plan's registry into this
    run's staging dir, each checked against its digest before anything unpacks it; bytes
    received by name."""
    run_dir = _own_run_dir(staging)
    if run_dir is None:
        raise events.PlanError("a registry pull needs the run's own staging_dir")
    spec = plan["registry"]
    try:
        client = registry.from_plan(spec, _registry_credential(plan, spec))
    except registry.RegistryError as exc:
        raise switch.StepFailed("pull", "registry: %s" % exc) from None
    pulled: Dict[str, int] = {}
    try:
        for raw, name, digest, _relative in _planned_packages(plan):
            if name not in need:
                continue
            dest = os.path.abspath(os.path.join(run_dir, str(raw.get("tarball", ""))))
            if os.path.dirname(os.path.dirname(dest)) != os.path.abspath(run_dir):
                raise events.PlanError("package %s: tarball %r is not in the run's packages dir" % (name, dest))
            files.make_dirs(os.path.dirname(dest), mode=0o700)
            events.emit("step", step="pull", package=name)

            def retrying(why: str, package: str = name) -> None:
                events.emit("retry", package=package, why=why)

            try:
                got = client.pull_blob("sha256:" + digest, dest, on_retry=retrying)
            except (registry.RegistryError, OSError) as exc:
                raise switch.StepFailed("pull", "package %s from the registry: %s" % (name, exc)) from None
            pulled[name] = got["bytes"]
            events.emit("pulled", package=name, bytes=got["bytes"], resumed=got["resumed"])
    finally:
        client.close()
    return pulled


def _registry_credential(plan: Dict[str, Any], spec: Any) -> Optional[Dict[str, Any]]:
    """The pull credential, from the overlay file the registry spec names (never the plan)."""
    rel = spec.get("credential") if isinstance(spec, dict) else None
    if not rel:
        return None
    encoded = (plan.get("overlay_files") or {}).get(rel)
    if encoded is None:
        raise switch.StepFailed(
            "pull", "the overlay has no %s (the registry's pull credential): run flinger overlay" % rel
        )
    try:
        value = json.loads(base64.b64decode(str(encoded), validate=True).decode())
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("username"), str):
        raise switch.StepFailed("pull", "%s in the overlay is not a registry credential" % rel)
    return value


def _let_go(install_dir: str, holder: str, fields: Dict[str, Any]) -> None:
    """Give up the deploy lock at the end of the install; the result says whether it was."""
    try:
        refused, released = lock.let_go(install_dir, holder)
    except OSError as exc:
        refused, released = str(exc), False
    fields["lock_released"] = released
    if refused:
        fields["lock_problem"] = refused


def _stage_overlay(staging: Optional[str], overlay: Any) -> str:
    """Write the overlay that came in the plan ({relative path: base64}) under this run's
    staging dir: dirs 0700, files 0600, nothing outside it."""
    run_dir = _own_run_dir(staging)
    if run_dir is None:
        raise events.PlanError("overlay_files need the run's own staging_dir")
    if not isinstance(overlay, dict):
        raise events.PlanError("overlay_files: expected an object")
    target = os.path.join(run_dir, "overlay")
    os.makedirs(run_dir, 0o700, exist_ok=True)
    files.remove_path(target)
    os.mkdir(target, 0o700)
    for rel, data in sorted(overlay.items()):
        parts = str(rel).split("/")
        if not rel or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            raise events.PlanError("overlay_files: %r is not a relative path inside the overlay" % rel)
        if parts[0] == FLINGER_OWN:  # for the install itself (the registry's pull credential),
            continue  # read from the plan: never written, never in a release the service reads
        try:
            content = base64.b64decode(str(data), validate=True)
        except (ValueError, TypeError):
            raise events.PlanError("overlay_files: %s is not base64" % rel) from None
        parent = target
        for part in parts[:-1]:
            parent = os.path.join(parent, part)
            if not os.path.isdir(parent):
                os.mkdir(parent, 0o700)
        path = os.path.join(parent, parts[-1])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
    return target


def _remove_earlier_runs(runs: Any, own: Optional[str]) -> None:
    """Staging dirs of earlier runs of this install dir (killed, or cut off before their
    install): their overlays hold secrets. Only called while holding the lock, so no run
    that could still use one exists."""
    if not isinstance(runs, str) or not runs or os.path.basename(os.path.dirname(runs)) != "runs":
        return
    try:
        names = os.listdir(runs)
    except OSError:
        return
    for name in names:
        path = os.path.join(runs, name)
        if own is None or os.path.abspath(path) != os.path.abspath(own):
            events.emit("cleanup", removed=path)
            shutil.rmtree(path, ignore_errors=True)


def _install(
    plan: Dict[str, Any],
    install_dir: str,
    release_id: str,
    svcs: List[Dict[str, Any]],
    roots: Dict[str, str],
    overlay_dir: Optional[str],
) -> int:
    layout.ensure_install_dir(install_dir)
    previous = load_state(install_dir)
    fingerprint = _fingerprint(plan, svcs, roots, overlay_dir)
    if previous.get("fingerprint") == fingerprint and _current_release(install_dir) == previous.get("release"):
        events.emit("step", step="compare", changed=False)
        # Nothing to install, but the manifest also says the services run: start any that
        # does not (stopped by hand, crashed for good) and check its health.
        try:
            started = switch.start_stopped(previous, roots)
        except switch.StepFailed as exc:
            return events.result(
                False,
                step=exc.step,
                error=str(exc),
                changed=False,
                service_log=switch.service_log(previous.get("services") or [], exc.step, roots, time.time() - 60),
            )
        return events.result(True, changed=bool(started), started=started, release=previous.get("release"))
    events.emit("step", step="compare", changed=True)
    try:
        unpacked = _unpack_packages(plan, install_dir)
        events.emit("step", step="release")
        release = _make_release(install_dir, release_id, unpacked, overlay_dir, plan.get("overlay_owner"))
    except switch.StepFailed as exc:
        return events.result(False, step=exc.step, error=str(exc), changed=False)
    except OSError as exc:
        return events.result(False, step="release", error=str(exc), changed=False)

    try:
        switch.validate(install_dir, release, svcs)
    except switch.StepFailed as exc:
        files.remove_path(os.path.join(install_dir, "releases", release))
        return events.result(False, step=exc.step, error=str(exc), changed=False, validate_output=exc.output)
    failure = switch.switch_services(install_dir, release, svcs, previous, roots, discard_on_failure=True)
    if failure is not None:
        return events.result(False, **failure)

    history = [r for r in previous.get("releases") or [] if r != release] + [release]
    events.emit("step", step="prune")
    history = prune(install_dir, history, keep_releases(plan))
    state = {
        "version": 1,
        "install_dir": install_dir,
        "release": release,
        "previous_release": previous.get("release"),
        "releases": history,
        "installed_at": utc_now(),
        "installed_by": plan.get("lock_holder"),
        "fingerprint": fingerprint,
        "packages": unpacked,
        "services": svcs,
        "roots": roots,
        "overlay_owner": plan.get("overlay_owner"),
    }
    save_state(install_dir, state)
    save_receipt(install_dir, state)
    return events.result(True, changed=True, release=release, previous_release=previous.get("release"))


# ------------------------------------------------------------------- other commands


def activate(plan: Dict[str, Any]) -> int:
    roots = services.roots_from(plan)
    created: List[Dict[str, str]] = []
    for service in parse_services(plan):
        try:
            created.extend(switch.activate_service(service, roots))
            switch.wait_healthy(service)
        except switch.StepFailed as exc:
            return events.result(False, step=exc.step, error=str(exc), paths=created)
    return events.result(True, paths=created)


def deactivate(plan: Dict[str, Any]) -> int:
    roots = services.roots_from(plan)
    for service in reversed(parse_services(plan)):
        events.emit("step", step="deactivate", service=service["name"])
        services.manager_for(service["manager"], roots).deactivate(service)
    return events.result(True)


def uninstall_dir(install_dir: str) -> List[str]:
    """Stop and remove every service and path the receipt lists, then what flinger made
    in and for the install dir. Returns the problems met (the rest still goes)."""
    state = load_state(install_dir)
    roots = state.get("roots") or services.roots_from({})
    problems: List[str] = []
    for service in reversed(state.get("services") or []):
        events.emit("step", step="deactivate", service=service["name"])
        try:
            services.manager_for(service["manager"], roots).deactivate(service)
        except (services.ServiceError, OSError) as exc:
            problems.append("%s: %s" % (service["name"], exc))
        services.remove_receipt(service.get("paths") or [])
        for log_file in service.get("log_files") or []:
            files.remove_path(log_file)
    made = layout.created_dirs(install_dir)
    for name in ("current", "releases", "packages", layout.STATE_DIR):
        files.remove_path(os.path.join(install_dir, name))
    for directory in reversed(made):
        try:
            os.rmdir(directory)
        except OSError:
            problems.append("%s is not empty; left in place" % directory)
    return problems


def uninstall(plan: Dict[str, Any], clean: bool = False) -> int:
    install_dir = install_dir_of(plan)
    events.survive_lost_client(os.devnull)  # what it removes, it removes whole
    had_state = bool(load_state(install_dir))
    problems = uninstall_dir(install_dir) if os.path.isdir(install_dir) else []
    if clean and plan.get("staging_dir"):
        staging = os.path.abspath(plan["staging_dir"])
        if staging == "/" or staging == install_dir:
            raise events.PlanError("refusing to remove staging_dir %s" % staging)
        files.remove_path(staging)
    return events.result(not problems, removed=had_state, problems=problems)


def status(plan: Dict[str, Any]) -> int:
    install_dir = install_dir_of(plan)
    state = load_state(install_dir)
    if not state:
        return events.result(True, installed=False)
    roots = state.get("roots") or services.roots_from({})
    report = []
    for service in state.get("services") or []:
        try:
            run_state = services.manager_for(service["manager"], roots).state(service)
        except (services.ServiceError, OSError) as exc:
            run_state = "unknown (%s)" % exc
        healthy: Optional[bool] = None
        if service.get("health"):
            healthy = health.check_once(service["health"])[0]
        report.append(
            {
                "name": service["name"],
                "manager": service["manager"],
                "package": service.get("package"),
                "state": run_state,
                "healthy": healthy,
            }
        )
    return events.result(
        True,
        installed=True,
        release=state.get("release"),
        current=_current_release(install_dir),
        previous_release=state.get("previous_release"),
        installed_at=state.get("installed_at"),
        packages=state.get("packages"),
        services=report,
    )


PlanCommand = Callable[[Dict[str, Any]], int]


def run_plan_command(command: str, handlers: Dict[str, PlanCommand]) -> int:
    """Read the plan from stdin and run the command's handler; a bad plan, or a service or
    file error, becomes the command's failed result (one place for every plan command)."""
    try:
        plan = events.read_plan()
        if command in handlers:
            return handlers[command](plan)
    except events.PlanError as exc:
        return events.result(False, error=str(exc))
    except (services.ServiceError, OSError) as exc:
        return events.result(False, error="%s: %s" % (command, exc))
    return events.result(False, error="unknown command %s" % command)


def main(argv: List[str]) -> int:
    return run_plan_command(
        argv[0],
        {
            "install": install,
            "activate": activate,
            "deactivate": deactivate,
            "uninstall": uninstall,
            "clean": lambda plan: uninstall(plan, clean=True),
            "status": status,
        },
    )
