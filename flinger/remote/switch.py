"""Switching a server to a release, and back: the part of `install` (and of `rollback`)
that changes what runs.

`switch_services` points `current` at the release and (re)starts its services in order,
each healthy before the next, and on a failure puts the previous release back (link,
definitions, running services) and says what happened; `start_stopped` starts the
recorded services that are not running. A failing step raises `StepFailed`, naming it.
"""

import os
import time
from typing import Any, Dict, List, Optional

from flinger.protocol.plans import PathRecord, ServiceRoots, ServiceSpec
from flinger.protocol.results import Health, ServiceLog, SwitchResult
from flinger.remote import events, files, services
from flinger.remote.receipt import Receipt


class StepFailed(Exception):
    """A step of the install failed: names the step."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.output: List[str] = []  # what the failing command printed, where there is one


def switch_current(install_dir: str, release: Optional[str]) -> None:
    """Point `current` at releases/<release> atomically (rename of a new symlink), or
    remove it when release is None."""
    current = os.path.join(install_dir, "current")
    if release is None:
        files.remove_path(current)
        return
    temporary = os.path.join(install_dir, ".current.%d" % os.getpid())
    files.remove_path(temporary)
    os.symlink(os.path.join("releases", release), temporary)
    os.replace(temporary, current)


def current_release(install_dir: str) -> Optional[str]:
    """The release `current` points at (None when there is none, or it dangles)."""
    current = os.path.join(install_dir, "current")
    if not os.path.islink(current):
        return None
    return os.path.basename(os.readlink(current)) if os.path.isdir(current) else None


def activate_service(service: ServiceSpec, roots: ServiceRoots) -> List[PathRecord]:
    try:
        return services.manager_for(service, roots).activate(service)
    except (services.ServiceError, OSError) as exc:
        raise StepFailed("service:" + service.name, str(exc)) from None


def _health() -> Any:
    """The health checks (http.client and ssl: imported only by a command that checks one,
    never by an install with nothing to do)."""
    from flinger.remote import health

    return health


def _healthy(service: ServiceSpec, roots: ServiceRoots) -> Any:
    """Wait for the service to be healthy: its manager says it runs (same process) and its
    probe passes; the board hears how long it has waited. (passed, what was seen)."""
    manager = services.manager_for(service, roots)
    events.step("health: %s" % service.name)
    return _health().wait_healthy(
        service.health,
        unit=lambda: manager.view(service),
        say=lambda text: events.note(text),
    )


def wait_healthy(service: ServiceSpec, roots: ServiceRoots) -> None:
    passed, seen = _healthy(service, roots)
    events.line("health of %s: %s (%s)" % (service.name, "ok" if passed else "failing", seen))
    if not passed:
        raise StepFailed("health:" + service.name, "%s is not healthy: %s" % (service.name, seen))


def is_running(service: ServiceSpec, roots: ServiceRoots) -> bool:
    try:
        return services.manager_for(service, roots).state(service) in services.RUNNING_STATES
    except (services.ServiceError, OSError):
        return False


def start_stopped(state: Receipt) -> List[str]:
    """Start (and health-check) each recorded service that is not running; their names."""
    started: List[str] = []
    for service in state.services:
        if is_running(service, state.service_roots):
            continue
        events.step("service: %s (not running)" % service.name)
        activate_service(service, state.service_roots)
        wait_healthy(service, state.service_roots)
        started.append(service.name)
    return started


def service_log(svcs: List[ServiceSpec], step: str, roots: ServiceRoots, since: float) -> Optional[ServiceLog]:
    """The last lines of the service a failed step names (what it logged since this install
    started it, where the manager can tell), else None."""
    name = step.split(":", 1)[1] if ":" in step else ""
    for service in svcs:
        if service.name == name:
            try:
                lines = services.manager_for(service, roots).log_tail(service, since=since)
            except (services.ServiceError, OSError) as exc:
                lines = ["(its log could not be read: %s)" % exc]
            return ServiceLog(name, lines)
    return None


def merge_paths(*receipts: List[PathRecord]) -> List[PathRecord]:
    merged: List[PathRecord] = []
    for receipt in receipts:
        for entry in receipt:
            if entry not in merged:
                merged.append(entry)
    return merged


def roll_back(
    install_dir: str,
    previous: Receipt,
    roots: ServiceRoots,
    touched: List[ServiceSpec],
    removed: List[ServiceSpec],
    failed_release: Optional[str],
) -> List[str]:
    """Put the previous release back: `current`, service definitions, running services."""
    problems: List[str] = []
    switch_current(install_dir, previous.release)
    before = {s.name: s for s in previous.services}
    for service in reversed(touched):
        try:
            if service.name in before:
                activate_service(before[service.name], roots)
            else:
                services.manager_for(service, roots).deactivate(service)
                services.remove_receipt(service.paths)
        except (StepFailed, services.ServiceError, OSError) as exc:
            problems.append("%s: %s" % (service.name, exc))
    for service in removed:
        try:
            activate_service(service, roots)
        except StepFailed as exc:
            problems.append("%s: %s" % (service.name, exc))
    if failed_release:
        files.remove_path(os.path.join(install_dir, "releases", failed_release))
    return problems


def restored_health(previous: Receipt) -> Dict[str, Health]:
    """After a rollback: does each restored service pass its own health check again?"""
    checked: Dict[str, Health] = {}
    for service in previous.services:
        if service.health is not None:
            try:
                passed, detail = _healthy(service, previous.service_roots)
            except (services.ServiceError, OSError) as exc:
                passed, detail = False, str(exc)
            events.line("health of %s, restored: %s (%s)" % (service.name, "ok" if passed else "failing", detail))
            checked[service.name] = Health(passed, detail)
    return checked


def last_lines(data: bytes, count: int = 20) -> List[str]:
    return data.decode("utf-8", "replace").splitlines()[-count:]


def switch_services(
    install_dir: str,
    release: str,
    svcs: List[ServiceSpec],
    previous: Receipt,
    roots: ServiceRoots,
    discard_on_failure: bool,
) -> Optional[SwitchResult]:
    """Switch `current` to `release` and make its services run (in order, each healthy before
    the next); on failure put `previous` back and return what the result should say."""
    events.step("switch")
    switch_current(install_dir, release)
    before = {s.name: s for s in previous.services}
    wanted = {s.name for s in svcs}
    touched: List[ServiceSpec] = []
    removed: List[ServiceSpec] = []
    since = time.time() - 1  # journald's --since has whole seconds
    try:
        for old in previous.services:
            if old.name not in wanted:
                events.step("remove service: %s" % old.name)
                services.manager_for(old, roots).deactivate(old)
                services.remove_receipt(old.paths)
                removed.append(old)
        for service in svcs:
            events.step("service: %s" % service.name)
            # Touched from the start: its new definition is written before the (re)start,
            # which may fail; the rollback must put the old definition back all the same.
            touched.append(service)
            paths = activate_service(service, roots)
            service.paths = merge_paths(before[service.name].paths if service.name in before else [], paths)
            wait_healthy(service, roots)
    except (StepFailed, services.ServiceError, OSError) as exc:
        step = exc.step if isinstance(exc, StepFailed) else "services"
        # The failing service's own words, read before the rollback restarts it.
        log = service_log(svcs, step, roots, since)
        events.step("rollback")
        problems = roll_back(install_dir, previous, roots, touched, removed, release if discard_on_failure else None)
        return SwitchResult(
            ok=False,
            step=step,
            error=str(exc),
            changed=False,
            rolled_back=True,
            rolled_back_to=previous.release,
            rollback_problems=problems,
            restored_health=restored_health(previous),
            service_log=log,
        )
    return None
