"""The `rollback` command: switch a server back to a kept release and health-check it.

Each install keeps the receipt of its release in `.flinger/releases/<release>.json` as long
as the release itself is kept (`keep_releases`). `rollback` takes the deploy lock, switches
`current` to the target release (default: the one before the current), puts its service
definitions back, (re)starts its services in order and waits for their health; if that
fails, the release that ran before the rollback is put back, exactly as a failed install is
rolled back. The lock is given up at the end.
"""

import os
from typing import List

from flinger.protocol import names
from flinger.protocol.plans import RollbackPlan, ServiceSpec
from flinger.protocol.results import SwitchResult
from flinger.remote import confirm, events, layout, lock, receipt, switch
from flinger.remote.install import claim_lock, install_dir_of, utc_now


def rollback(plan: RollbackPlan) -> SwitchResult:
    install_dir = install_dir_of(plan.install_dir)
    if plan.acquire:
        taken = lock.take(install_dir, plan.lock_holder, plan.acquire_wait)
        if not taken.ok:
            return SwitchResult(ok=False, step="lock", error=taken.error)
        events.before_result(lambda result: _let_go(install_dir, plan.lock_holder, result))
    # From here on the server changes: finish the switch (or its undoing) even if the client goes.
    events.survive_lost_client(layout.events_log(install_dir))
    refused = claim_lock(plan.lock_holder, install_dir)
    if refused:
        return SwitchResult(ok=False, step="lock", error=refused)
    confirm.supersede(install_dir, plan.lock_holder)
    return switch_back(plan, install_dir)


def _let_go(install_dir: str, holder: str, result: SwitchResult) -> None:
    try:
        refused, released = lock.let_go(install_dir, holder)
    except OSError as exc:
        refused, released = str(exc), False
    result.lock_released, result.lock_problem = released, refused


def switch_back(plan: RollbackPlan, install_dir: str) -> SwitchResult:
    """Switch to `plan.to` (default: the kept release before the current one), health-checked."""
    state = receipt.load(install_dir)
    if not state.release:
        return SwitchResult(ok=False, step="rollback", error="nothing is installed in %s" % install_dir)
    now = state.release
    kept = [r for r in state.releases if r != now]
    target = plan.to
    if not target:
        if not kept:
            return SwitchResult(ok=False, step="rollback", error="no earlier release is kept here (only %s)" % now)
        target = kept[-1]
    problem = names.problem(target, "a release")
    if problem:
        raise events.PlanError("to: %s" % problem)
    if target == now:
        if plan.fleet_release and state.fleet != plan.fleet_release:
            state.serve(plan.fleet_release)
            receipt.save(install_dir, state)
        return SwitchResult(release=now, fleet_release=state.fleet)
    wanted = receipt.load_kept(install_dir, target)
    if wanted is None or not os.path.isdir(os.path.join(install_dir, "releases", target)):
        others = ", ".join(kept) or "none but the current %s" % now
        return SwitchResult(
            ok=False, step="rollback", error="release %s is not kept here (kept: %s)" % (target, others)
        )
    if wanted.overlay_removed:
        return SwitchResult(
            ok=False,
            step="rollback",
            error="release %s can no longer run here: its overlay was removed once the fleet completed a "
            "rotation of its secrets" % target,
        )
    events.step("rollback: to %s" % target)
    svcs: List[ServiceSpec] = list(wanted.services)
    roots = wanted.service_roots
    failure = switch.switch_services(install_dir, target, svcs, state, roots, discard_on_failure=False)
    if failure is not None:
        return failure
    wanted.release = target
    wanted.previous_release = now
    wanted.releases = [r for r in state.releases if r != target] + [target]
    wanted.services = svcs
    wanted.switched_at = utc_now()
    wanted.switched_by = plan.lock_holder
    if plan.fleet_release:
        wanted.serve(plan.fleet_release)
    else:
        wanted.fleet_release = wanted.fleet
    receipt.save(install_dir, wanted)
    return SwitchResult(changed=True, release=target, previous_release=now, fleet_release=wanted.fleet)
