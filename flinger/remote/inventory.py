"""What a server has, and taking it away: `status`, `history` and `uninstall`.

`status` reports the current release, its packages and each service's state and health;
`history` the kept releases (which is current, when and by whom each was installed, which
can be rolled back to); `uninstall` stops and removes every service and path the receipt
lists, then what flinger made in and for the install dir (and, with `clean`, the staging
dir), under the deploy lock.
"""

import os
from typing import Dict, List

from flinger.protocol.plans import InventoryPlan, UninstallPlan
from flinger.protocol.results import (
    OVERLAY_TEXT_LIMIT,
    HistoryResult,
    ReleaseInfo,
    ServiceState,
    StatusResult,
    UninstallResult,
    definition_digest,
    overlay_text,
)
from flinger.remote import confirm, events, files, health, layout, lock, receipt, services, switch
from flinger.remote.install import install_dir_of


def status(plan: InventoryPlan) -> StatusResult:
    install_dir = install_dir_of(plan.install_dir)
    state = receipt.load(install_dir)
    if not state.release:
        return StatusResult(installed=False)
    report: List[ServiceState] = []
    for service in state.services:
        try:
            run_state = services.manager_for(service, state.service_roots).state(service)
        except (services.ServiceError, OSError) as exc:
            run_state = "unknown (%s)" % exc
        healthy = health.check_once(service.health)[0] if service.health is not None else None
        report.append(ServiceState(service.name, service.manager, run_state, service.package, healthy))
    result = StatusResult(
        installed=True,
        release=state.release,
        current=switch.current_release(install_dir),
        previous_release=state.previous_release,
        installed_at=state.installed_at,
        packages=state.packages,
        services=report,
        fleet_release=state.fleet,
        self_rollback=confirm.read_record(install_dir),
    )
    if plan.compare:
        top = os.path.join(install_dir, "current", "overlay")
        result.overlay = _overlay_digests(top)
        result.definitions = {s.name: definition_digest(s.files) for s in state.services}
        result.overlay_text = _overlay_texts(top, result.overlay, plan.texts, state.overlay_public)
    return result


def _overlay_texts(top: str, running: Dict[str, str], asked: Dict[str, str], public: List[str]) -> Dict[str, str]:
    """The running text of each file asked for whose content differs from the client's: only
    files the receipt says hold no secret (an older one may have, whatever the client's
    templates say now), and only as overlay_text allows (UTF-8, OVERLAY_TEXT_LIMIT bytes)."""
    texts: Dict[str, str] = {}
    for rel in sorted(set(asked) & set(public) & set(running)):
        path = os.path.join(top, rel)
        if running[rel] == asked[rel] or os.path.islink(path):
            continue
        with open(path, "rb") as f:
            text = overlay_text(f.read(OVERLAY_TEXT_LIMIT + 1))
        if text is not None:
            texts[rel] = text
    return texts


def _overlay_digests(top: str) -> Dict[str, str]:
    """sha256 of each file of the running overlay (digests only: never its content)."""
    found: Dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = files.sha256_file(path)
    return found


def history(plan: InventoryPlan) -> HistoryResult:
    install_dir = install_dir_of(plan.install_dir)
    state = receipt.load(install_dir)
    if not state.release:
        return HistoryResult(installed=False)
    releases: List[ReleaseInfo] = []
    for release in state.releases:
        kept = receipt.load_kept(install_dir, release)
        source = state if release == state.release else kept
        releases.append(
            ReleaseInfo(
                release=release,
                current=release == state.release,
                installed_at=kept.installed_at if kept else None,
                installed_by=kept.installed_by if kept else None,
                packages={name: info.digest for name, info in kept.packages.items()} if kept else {},
                can_roll_back_to=kept is not None
                and release != state.release
                and not kept.overlay_removed
                and os.path.isdir(os.path.join(install_dir, "releases", release)),
                fleet_releases=source.served() if source is not None else [release],
                overlay_generation=source.overlay_generation if source is not None else None,
                overlay_removed=bool(kept and kept.overlay_removed),
            )
        )
    return HistoryResult(
        installed=True,
        current=state.release,
        releases=releases,
        switched_at=state.switched_at,
        switched_by=state.switched_by,
    )


def uninstall_dir(install_dir: str) -> List[str]:
    """Stop and remove every service and path the receipt lists, then what flinger made
    in and for the install dir. Returns the problems met (the rest still goes)."""
    state = receipt.load(install_dir)
    problems: List[str] = []
    for service in reversed(state.services):
        events.step("remove service: %s" % service.name)
        try:
            services.manager_for(service, state.service_roots).deactivate(service)
        except (services.ServiceError, OSError) as exc:
            problems.append("%s: %s" % (service.name, exc))
        services.remove_receipt(service.paths)
        for log_file in service.log_files:
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


def uninstall(plan: UninstallPlan) -> UninstallResult:
    install_dir = install_dir_of(plan.install_dir)
    if os.path.isdir(install_dir):
        taken = lock.take(install_dir, plan.lock_holder, plan.acquire_wait)
        if not taken.ok:
            return UninstallResult(ok=False, step="lock", error=taken.error)
    events.survive_lost_client(os.devnull)  # what it removes, it removes whole
    had_state = bool(receipt.load(install_dir).release)
    problems = uninstall_dir(install_dir) if os.path.isdir(install_dir) else []
    if plan.clean and plan.staging_dir:
        staging = os.path.abspath(plan.staging_dir)
        if staging == "/" or staging == install_dir:
            raise events.PlanError("refusing to remove staging_dir %s" % staging)
        files.remove_path(staging)
    return UninstallResult(ok=not problems, removed=had_state, problems=problems)
