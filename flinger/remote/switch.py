"""Switching a server to a release, and back: the part of `install` (and of `rollback`,
releases.py) that changes what runs.

`validate` runs each service's check in the new release before anything moves;
`switch_services` points `current` at the release and (re)starts its services in order,
each healthy before the next, and on a failure puts the previous release back (link,
definitions, running services) and says what happened; `start_stopped` starts the
recorded services that are not running. A failing step raises `StepFailed`, naming it.
"""

import os
import subprocess
import time
from typing import Any, Dict, List, Optional

from flinger.remote import events, files, health, services

VALIDATE_TIMEOUT = 300  # seconds a service's validate command may run


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


def activate_service(service: Dict[str, Any], roots: Dict[str, str]) -> services.Receipt:
    manager = services.manager_for(service["manager"], roots)
    try:
        receipt: services.Receipt = manager.activate(service)
    except (services.ServiceError, OSError) as exc:
        raise StepFailed("service:" + service["name"], str(exc)) from None
    return receipt


def wait_healthy(service: Dict[str, Any]) -> None:
    passed, seen = health.wait_healthy(service["health"])
    events.emit("health", service=service["name"], ok=passed, detail=seen)
    if not passed:
        raise StepFailed("health:" + service["name"], "%s is not healthy: %s" % (service["name"], seen))


def start_stopped(state: Dict[str, Any], roots: Dict[str, str]) -> List[str]:
    """Start (and health-check) each recorded service that is not running; their names."""
    started: List[str] = []
    for service in state.get("services") or []:
        manager = services.manager_for(service["manager"], roots)
        try:
            running = manager.state(service) in services.RUNNING_STATES
        except (services.ServiceError, OSError):
            running = False
        if running:
            continue
        events.emit("step", step="service", service=service["name"], reason="not running")
        activate_service(service, roots)
        wait_healthy(service)
        started.append(service["name"])
    return started


def service_log(svcs: List[Dict[str, Any]], step: str, roots: Dict[str, str], since: float) -> Dict[str, Any]:
    """{"service": name, "lines": [...]} of the service a failed step names (what it logged
    since this install started it, where the manager can tell), else {}."""
    name = step.split(":", 1)[1] if ":" in step else ""
    for service in svcs:
        if service["name"] == name:
            try:
                lines = services.manager_for(service["manager"], roots).log_tail(service, since=since)
            except (services.ServiceError, OSError) as exc:
                lines = ["(its log could not be read: %s)" % exc]
            return {"service": name, "lines": lines}
    return {}


def merge_receipts(*receipts: List[Dict[str, str]]) -> List[Dict[str, str]]:
    merged: List[Dict[str, str]] = []
    for receipt in receipts:
        for entry in receipt:
            if entry not in merged:
                merged.append(entry)
    return merged


def roll_back(
    install_dir: str,
    previous: Dict[str, Any],
    roots: Dict[str, str],
    touched: List[Dict[str, Any]],
    removed: List[Dict[str, Any]],
    failed_release: Optional[str],
) -> List[str]:
    """Put the previous release back: `current`, service definitions, running services."""
    problems: List[str] = []
    switch_current(install_dir, previous.get("release"))
    before = {s["name"]: s for s in previous.get("services") or []}
    for service in reversed(touched):
        try:
            if service["name"] in before:
                activate_service(before[service["name"]], roots)
            else:
                services.manager_for(service["manager"], roots).deactivate(service)
                services.remove_receipt(service.get("paths") or [])
        except (StepFailed, services.ServiceError, OSError) as exc:
            problems.append("%s: %s" % (service["name"], exc))
    for service in removed:
        try:
            activate_service(service, roots)
        except StepFailed as exc:
            problems.append("%s: %s" % (service["name"], exc))
    if failed_release:
        files.remove_path(os.path.join(install_dir, "releases", failed_release))
    return problems


def restored_health(previous: Dict[str, Any]) -> Dict[str, Any]:
    """After a rollback: does each restored service pass its own health check again?"""
    checked: Dict[str, Any] = {}
    for service in previous.get("services") or []:
        if service.get("health"):
            passed, detail = health.wait_healthy(service["health"])
            events.emit("health", service=service["name"], ok=passed, detail=detail, restored=True)
            checked[service["name"]] = {"healthy": passed, "detail": detail}
    return checked


def validate(install_dir: str, release: str, svcs: List[Dict[str, Any]]) -> None:
    """Each service's `validate` command, run against the new release before anything
    switches: in the release's dir, with FLINGER_RELEASE_DIR set to it. A failure leaves
    the running release as it is (not even restarted)."""
    release_dir = os.path.join(install_dir, "releases", release)
    for service in svcs:
        command = service.get("validate")
        if not command:
            continue
        events.emit("step", step="validate", service=service["name"])
        env = dict(os.environ, FLINGER_RELEASE_DIR=release_dir)
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=release_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=VALIDATE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            failed = StepFailed(
                "validate:" + service["name"],
                "validate of %s did not finish in %d s" % (service["name"], VALIDATE_TIMEOUT),
            )
            failed.output = last_lines(exc.output or b"")
            raise failed from None
        output = last_lines(done.stdout or b"")
        if done.returncode != 0:
            failed = StepFailed(
                "validate:" + service["name"],
                "validate of %s failed (exit %d): %s" % (service["name"], done.returncode, command),
            )
            failed.output = output
            raise failed
        events.emit("validated", service=service["name"], output=output[-3:])


def last_lines(data: bytes, count: int = 20) -> List[str]:
    return data.decode("utf-8", "replace").splitlines()[-count:]


def switch_services(
    install_dir: str,
    release: str,
    svcs: List[Dict[str, Any]],
    previous: Dict[str, Any],
    roots: Dict[str, str],
    discard_on_failure: bool,
) -> Optional[Dict[str, Any]]:
    """Switch `current` to `release` and make its services run (in order, each healthy before
    the next); on failure put `previous` back and return what the result should say."""
    events.emit("step", step="switch", release=release)
    switch_current(install_dir, release)
    before = {s["name"]: s for s in previous.get("services") or []}
    wanted = {s["name"] for s in svcs}
    touched: List[Dict[str, Any]] = []
    removed: List[Dict[str, Any]] = []
    since = time.time() - 1  # journald's --since has whole seconds
    try:
        for old in previous.get("services") or []:
            if old["name"] not in wanted:
                events.emit("step", step="remove-service", service=old["name"])
                services.manager_for(old["manager"], roots).deactivate(old)
                services.remove_receipt(old.get("paths") or [])
                removed.append(old)
        for service in svcs:
            events.emit("step", step="service", service=service["name"])
            # Touched from the start: its new definition is written before the (re)start,
            # which may fail; the rollback must put the old definition back all the same.
            touched.append(service)
            receipt = activate_service(service, roots)
            service["paths"] = merge_receipts((before.get(service["name"]) or {}).get("paths") or [], receipt)
            wait_healthy(service)
    except (StepFailed, services.ServiceError, OSError) as exc:
        step = exc.step if isinstance(exc, StepFailed) else "services"
        # The failing service's own words, read before the rollback restarts it.
        log = service_log(svcs, step, roots, since)
        events.emit("step", step="rollback", to=previous.get("release"))
        problems = roll_back(install_dir, previous, roots, touched, removed, release if discard_on_failure else None)
        return {
            "step": step,
            "error": str(exc),
            "changed": False,
            "rolled_back_to": previous.get("release"),
            "rollback_problems": problems,
            "restored_health": restored_health(previous),
            "service_log": log,
        }

    return None
