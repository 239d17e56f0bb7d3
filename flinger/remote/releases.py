"""Releases as history: `history` (the kept releases, which is current, when and by whom)
and `rollback` (switch back to a kept release and health-check it).

Each install keeps the receipt of its release in `.flinger/releases/<release>.json` as long
as the release itself is kept (`keep_releases`). `rollback` switches `current` to the
target release, puts its service definitions back, (re)starts its services in order and
waits for their health; if that fails, the release that ran before the rollback is put
back, exactly as a failed install is rolled back. Plans: {install_dir, to?, lock_holder?}.
"""

import os
from typing import Any, Dict, List

from flinger.remote import events, files, install, layout, services, switch


def _receipt(install_dir: str, release: str) -> Dict[str, Any]:
    receipt = files.read_json(layout.receipt_file(install_dir, release), None)
    return receipt if isinstance(receipt, dict) else {}


def history(plan: Dict[str, Any]) -> int:
    install_dir = install.install_dir_of(plan)
    state = install.load_state(install_dir)
    if not state:
        return events.result(True, installed=False, releases=[])
    current = state.get("release")
    releases: List[Dict[str, Any]] = []
    for release in state.get("releases") or []:
        receipt = _receipt(install_dir, release)
        releases.append(
            {
                "release": release,
                "current": release == current,
                "installed_at": receipt.get("installed_at"),
                "installed_by": receipt.get("installed_by"),
                "packages": {
                    name: (info or {}).get("digest") for name, info in (receipt.get("packages") or {}).items()
                },
                "can_roll_back_to": bool(receipt)
                and release != current
                and os.path.isdir(os.path.join(install_dir, "releases", release)),
            }
        )
    return events.result(
        True,
        installed=True,
        current=current,
        releases=releases,
        switched_at=state.get("switched_at"),
        switched_by=state.get("switched_by"),
    )


def rollback(plan: Dict[str, Any]) -> int:
    install_dir = install.install_dir_of(plan)
    # From here on the server changes: finish the switch (or its undoing) even if the client goes.
    events.survive_lost_client(os.path.join(install_dir, ".flinger", "events.log"))
    refused = install.claim_lock(plan, install_dir)
    if refused:
        return events.result(False, step="lock", error=refused)
    state = install.load_state(install_dir)
    if not state:
        return events.result(False, step="rollback", error="nothing is installed in %s" % install_dir)
    now = state.get("release")
    kept = [r for r in state.get("releases") or [] if r != now]
    target = plan.get("to")
    if not target:
        if not kept:
            return events.result(False, step="rollback", error="no earlier release is kept here (only %s)" % now)
        target = kept[-1]
    target = install.plain_name(target, "to")
    if target == now:
        return events.result(True, changed=False, release=now, previous_release=None)
    receipt = _receipt(install_dir, target)
    if not receipt or not os.path.isdir(os.path.join(install_dir, "releases", target)):
        return events.result(
            False,
            step="rollback",
            error="release %s is not kept here (kept: %s)"
            % (target, ", ".join(kept) or "none but the current %s" % now),
        )
    events.emit("step", step="rollback", to=target, since=now)
    svcs: List[Dict[str, Any]] = [dict(s) for s in receipt.get("services") or []]
    roots = receipt.get("roots") or services.roots_from({})
    failure = switch.switch_services(install_dir, target, svcs, state, roots, discard_on_failure=False)
    if failure is not None:
        return events.result(False, **failure)
    history_now = [r for r in state.get("releases") or [] if r != target] + [target]
    restored = dict(receipt)
    restored.update(
        {
            "release": target,
            "previous_release": now,
            "releases": history_now,
            "services": svcs,
            "switched_at": install.utc_now(),
            "switched_by": plan.get("lock_holder"),
        }
    )
    install.save_state(install_dir, restored)
    return events.result(True, changed=True, release=target, previous_release=now)


def main(argv: List[str]) -> int:
    return install.run_plan_command(argv[0], {"history": history, "rollback": rollback})
