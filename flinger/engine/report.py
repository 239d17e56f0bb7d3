"""What a server's report says: a failed remote step as the operator needs it, and the one
line of the summary table for each operation's result.

A failure names the step that really failed (not the rollback that followed), shows the
failing service's own last log lines (or what its validate command printed) as the tail,
and says which release runs there now and whether it is healthy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flinger.errors import FlingerError, RemoteCommandError
from flinger.protocol.results import HistoryResult, SelfRollback, StatusResult, SwitchResult
from flinger.remote.services import RUNNING_STATES

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter


def explained(exc: RemoteCommandError, report: Reporter) -> RemoteCommandError:
    """A failed install or rollback as the operator needs it (see the module docstring)."""
    result = exc.result
    if result is None:
        return exc
    if result.step:
        report.step(result.step)
    if not isinstance(result, SwitchResult):
        return exc
    if result.service_log is not None and result.service_log.lines:
        log = result.service_log
        report.details["service_log"] = {"service": log.service, "lines": log.lines}
        exc.tail = [f"last lines of {log.service}'s log:", *log.lines]
        for line in log.lines:
            report.line(f"{log.service}: {line}")
    if result.validate_output is not None:
        report.details["validate_output"] = result.validate_output
        exc.tail = ["what the validate command printed:", *result.validate_output]
        for line in result.validate_output:
            report.line(f"validate: {line}")
        exc.message += "; nothing was switched or restarted"
    if result.rolled_back:
        exc.message += _rolled_back(result, report)
    return exc


def _rolled_back(result: SwitchResult, report: Reporter) -> str:
    report.details["rolled_back_to"] = result.rolled_back_to
    now = result.rolled_back_to or "nothing (first install)"
    if result.restored_health:
        report.details["restored_health"] = {
            name: {"healthy": h.healthy, "detail": h.detail} for name, h in result.restored_health.items()
        }
        sick = [f"{name}: {h.detail}" for name, h in result.restored_health.items() if not h.healthy]
        now += f", NOT healthy ({'; '.join(sick)})" if sick else ", healthy"
    problems = "; ".join(result.rollback_problems)
    return f"; rolled back to {now}" + (f" (with problems: {problems})" if problems else "")


def status_line(result: StatusResult) -> str:
    """What a server has now: its release, packages and services."""
    if not result.installed:
        return "nothing installed"
    packages = ", ".join(f"{n} {p.digest[:12]}" for n, p in sorted(result.packages.items()))
    health = {None: "", True: " healthy", False: " UNHEALTHY"}
    services = ", ".join(f"{s.name}: {s.state}{health[s.healthy]}" for s in result.services)
    release = f"release {result.release}"
    if result.fleet_release and result.fleet_release != result.release:  # a release that also serves a later run's
        release = f"fleet release {result.fleet_release} (its release {result.release})"
    return f"{release}; {packages}; {services or 'no services'}"


def self_rollback_line(back: SelfRollback) -> str:
    """What a server did when nobody confirmed its switch (remote/confirm.py)."""
    how = "healthy" if back.ok else f"and that failed: {back.error}"
    return f"switched to {back.release}, then back to {back.to} by itself at {back.at} ({back.reason}), {how}"


def require_running(result: StatusResult, report: Reporter) -> None:
    """`deploy status` fails a server where a service is not running or not healthy."""
    bad = [
        f"{s.name} is {s.state}" if s.state not in RUNNING_STATES else f"{s.name} is not healthy"
        for s in result.services
        if s.state not in RUNNING_STATES or s.healthy is False
    ]
    if bad:
        raise FlingerError(f"{'; '.join(bad)} ({status_line(result)})")


def history_line(result: HistoryResult) -> str:
    if not result.installed:
        return "nothing installed"
    current = next((r for r in result.releases if r.current), None)
    others = [r.release for r in result.releases if not r.current]
    by = f" by {current.installed_by}" if current and current.installed_by else ""
    when = (current.installed_at if current else None) or "at an unknown time"
    return f"current {result.current} (installed {when}{by}); earlier: {', '.join(reversed(others)) or 'none kept'}"


def rollback_line(result: SwitchResult) -> str:
    if not result.changed:
        return f"already on release {result.release}"
    return f"rolled back from {result.previous_release} to {result.release}, healthy"


def moved(pushed: dict[str, int], pulled: dict[str, int]) -> str:
    """How this server's packages came: pushed by the builder or pulled from the registry."""
    if pulled:
        return f"{sum(pulled.values()):,} bytes pulled from the registry"
    return f"{pushed.get('bytes_sent', 0):,} bytes pushed"
