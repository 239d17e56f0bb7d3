"""The `forget` command: remove rotated-out secrets from the releases a server keeps.

Each kept release holds its own copy of the server's overlay (secrets, TLS key, rendered
configs). Once the whole fleet completed a release whose overlay generation rotated secrets
out, nothing needs the old ones: `forget` removes `releases/<id>/overlay` of every kept
release but the current one whose generation is older than the plan's `before` (a release
from before generations were recorded counts as older), and marks its receipt, so no
rollback can switch to a release that could no longer run. Under the deploy lock.
"""

import os
from typing import List

from flinger.protocol.plans import ForgetPlan
from flinger.protocol.results import ForgetResult
from flinger.remote import events, files, lock, receipt
from flinger.remote.install import install_dir_of


def forget(plan: ForgetPlan) -> ForgetResult:
    install_dir = install_dir_of(plan.install_dir)
    state = receipt.load(install_dir)
    if not state.release:
        return ForgetResult()
    taken = lock.take(install_dir, plan.lock_holder, plan.acquire_wait)
    if not taken.ok:
        return ForgetResult(ok=False, step="lock", error=taken.error)
    try:
        return ForgetResult(forgotten=_forget(install_dir, receipt.load(install_dir), plan.before))
    finally:
        lock.let_go(install_dir, plan.lock_holder)


def _forget(install_dir: str, state: receipt.Receipt, before: int) -> List[str]:
    forgotten: List[str] = []
    for release in state.releases:
        if release == state.release:
            continue
        kept = receipt.load_kept(install_dir, release)
        if kept is None or kept.overlay_removed or (kept.overlay_generation or 0) >= before:
            continue
        events.step("forget: %s" % release)
        files.remove_path(os.path.join(install_dir, "releases", release, "overlay"))
        kept.overlay_removed = True
        receipt.keep(install_dir, kept)
        forgotten.append(release)
    return forgotten
