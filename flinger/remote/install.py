"""The `install` command: a server's side of `deploy install`, from the lock to the health checks.

With `acquire` it takes the deploy lock for `lock_holder` first; when a package is neither
unpacked here nor already in this run's staging dir (a client that expects a server to lack
it delivers it before the first `install`) and nothing pulls it, it answers `need` holding
the lock and keeping that staging dir (the client has the rest delivered into it, then runs
`install` again). With `pull` it fetches
what it lacks from the registry itself. Then: unpack (content addressed under `packages/`),
assemble `releases/<release>/` (links to the packages + the overlay from the plan), run each
service's `validate` there, switch `current` atomically, (re)start the services in dependency
order and wait for their health checks. In phase `prepare` it stops before the switch, the
lock still held (prepared.py), and phase `switch` (or `abort`) finishes it once the client
saw the whole batch ready. If anything fails after the switch, the previous
release is put back (link, definitions, running services). The receipt records every
package, release, service and path created outside the install dir, and `uninstall`
removes exactly those. With `release_lock` the lock is given up just before the result.
"""

import base64
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Tuple

from flinger.protocol import graph, names
from flinger.protocol.codec import decode
from flinger.protocol.plans import Credential, InstallPlan, ServiceRoots, ServiceSpec
from flinger.protocol.results import InstallResult
from flinger.remote import confirm, events, files, layout, lock, prepared, receipt, release, services, switch, validate

KEEP_RELEASES = 3  # the default of [deployment] keep_releases
PHASES = ("all", "prepare", "switch", "abort")


def install_dir_of(path: str) -> str:
    if not os.path.isabs(path) or os.path.normpath(path) == "/":
        raise events.PlanError("install_dir must be an absolute path other than /")
    return os.path.normpath(path)


def ordered_services(specs: List[ServiceSpec]) -> List[ServiceSpec]:
    """The plan's services, checked, each after those it names in `after` (names not in the
    plan, e.g. on other servers, are ignored)."""
    by_name: Dict[str, ServiceSpec] = {}
    for spec in specs:
        problem = names.problem(spec.name, "a service name")
        if problem:
            raise events.PlanError("service %r: %s" % (spec.name, problem))
        if spec.manager not in services.MANAGERS:
            raise events.PlanError("service %s: unknown manager %r" % (spec.name, spec.manager))
        for key in services.DEFINITION_KEYS[spec.manager]:
            if key not in spec.files:
                raise events.PlanError("service %s: files.%s is missing" % (spec.name, key))
        if spec.name in by_name:
            raise events.PlanError("service %s appears twice" % spec.name)
        by_name[spec.name] = spec
    try:
        order = graph.ordered({s.name: [a for a in s.after if a in by_name] for s in specs})
    except graph.Cycle as exc:
        raise events.PlanError("services form an `after` cycle: %s" % exc) from None
    return [by_name[name] for name in order]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def own_run_dir(run_dir: str) -> Optional[str]:
    """`run_dir` when it is a run's own staging dir (`<staging>/runs/<install dir key>/<run>`),
    what this install may write into and removes at its end; else None."""
    if run_dir and os.path.basename(os.path.dirname(os.path.dirname(run_dir))) == "runs":
        return run_dir
    return None


def claim_lock(holder: str, install_dir: str) -> Optional[str]:
    """The error if run `holder` does not hold the lock here; else this process becomes the
    one working for the lock (a re-run judges it live while this runs, even once its client
    is gone)."""
    try:
        return lock.claim_for_worker(install_dir, holder)
    except (lock.LockWriteError, OSError) as exc:
        return str(exc)


def _pull_credential(plan: InstallPlan) -> Optional[Credential]:
    """The pull credential, from the overlay file the pull spec names (never the plan)."""
    assert plan.pull is not None
    rel = plan.pull.credential
    if not rel:
        return None
    encoded = plan.overlay_files.get(rel)
    if encoded is None:
        raise switch.StepFailed(
            "pull", "the overlay has no %s (the registry's pull credential): run flinger overlay" % rel
        )
    try:
        return decode(Credential, json.loads(base64.b64decode(encoded, validate=True).decode()), rel, strict=False)
    except (ValueError, UnicodeDecodeError):  # ProtocolError is a ValueError
        raise switch.StepFailed("pull", "%s in the overlay is not a registry credential" % rel) from None


def _pull_missing(plan: InstallPlan, need: List[str]) -> Dict[str, int]:
    """Pull the packages `need` names (not here yet) from the registry into this run's
    staging dir, each checked against its digest before anything unpacks it; bytes
    received by name."""
    from flinger.remote import registry  # http.client and ssl: only for a server that pulls

    run_dir = own_run_dir(plan.staging_dir)
    if run_dir is None or plan.pull is None:
        raise events.PlanError("a registry pull needs the run's own staging_dir")
    try:
        client = registry.Registry.of(plan.pull.registry, _pull_credential(plan))
    except registry.RegistryError as exc:
        raise switch.StepFailed("pull", "registry: %s" % exc) from None
    pulled: Dict[str, int] = {}
    try:
        for ref in plan.packages:
            if ref.name not in need:
                continue
            dest = os.path.abspath(os.path.join(run_dir, ref.tarball))
            if os.path.dirname(os.path.dirname(dest)) != os.path.abspath(run_dir):
                raise events.PlanError("package %s: tarball %r is not in the run's packages dir" % (ref.name, dest))
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            events.step("pull: %s" % ref.name)

            def retrying(why: str, package: str = ref.name) -> None:
                events.line("pull of %s: retrying (%s)" % (package, why))

            try:
                got = client.pull_blob("sha256:" + ref.digest, dest, on_retry=retrying)
            except (registry.RegistryError, OSError) as exc:
                raise switch.StepFailed("pull", "package %s from the registry: %s" % (ref.name, exc)) from None
            pulled[ref.name] = got.received
            events.note("%s: %d bytes pulled%s" % (ref.name, got.received, " (resumed)" if got.resumed else ""))
    finally:
        client.close()
    return pulled


def _let_go(install_dir: str, holder: str, result: InstallResult) -> None:
    """Give up the deploy lock at the end of the install; the result says whether it was.
    A prepared release keeps it: its switch (or abort) comes next."""
    if result.prepared or result.awaiting_confirmation:
        return  # kept for the switch, or for the confirmation (confirm.py gives it up)
    try:
        refused, released = lock.let_go(install_dir, holder)
    except OSError as exc:
        refused, released = str(exc), False
    result.lock_released = released
    result.lock_problem = refused


def _remove_earlier_runs(runs: Optional[str], own: Optional[str]) -> None:
    """Staging dirs of earlier runs of this install dir (killed, or cut off before their
    install): their overlays hold secrets. Only called while holding the lock, so no run
    that could still use one exists; a run waiting for the lock that delivered packages
    ahead finds them gone and is told it `need`s them again."""
    if not runs or os.path.basename(os.path.dirname(runs)) != "runs":
        return
    try:
        entries = os.listdir(runs)
    except OSError:
        return
    for name in entries:
        path = os.path.join(runs, name)
        if own is None or os.path.abspath(path) != os.path.abspath(own):
            events.line("removed an earlier run's staging dir %s" % path)
            shutil.rmtree(path, ignore_errors=True)


def _checked(plan: InstallPlan) -> Tuple[str, List[ServiceSpec]]:
    """The plan's install dir and its services in the order they start; PlanError when the
    plan cannot be carried out as it is."""
    install_dir = install_dir_of(plan.install_dir)
    problem = names.problem(plan.release, "a release")
    if problem:
        raise events.PlanError("release %r: %s" % (plan.release, problem))
    if plan.keep_releases < 1:
        raise events.PlanError("keep_releases must be 1 or more")
    return install_dir, ordered_services(plan.services)


def _fetch(plan: InstallPlan, install_dir: str, result: InstallResult) -> Optional[InstallResult]:
    """Take the lock (with `acquire`) and learn what is missing: the answer to give now
    (need, or a failure), else None to install; what this did goes into `result`."""
    if plan.acquire:
        taken = lock.take(install_dir, plan.lock_holder, plan.acquire_wait)
        if not taken.ok:
            return InstallResult(ok=False, step="lock", error=taken.error, lock_held_by=taken.holder)
        result.broke_stale = taken.broke_stale
    need = release.lacking(plan, install_dir)
    if need and plan.acquire and plan.pull is None:
        return InstallResult(need=need, broke_stale=result.broke_stale)  # the lock stays: deliver, then install
    if plan.release_lock:
        events.before_result(lambda answer: _let_go(install_dir, plan.lock_holder, answer))
    if need and plan.pull is not None:  # this server pulls what it lacks itself
        try:
            result.pulled = _pull_missing(plan, need)
        except switch.StepFailed as exc:
            return InstallResult(ok=False, step=exc.step, error=str(exc), broke_stale=result.broke_stale)
    return None


def install(plan: InstallPlan) -> InstallResult:
    """`install` (see the module docstring)."""
    if plan.phase not in PHASES:
        raise events.PlanError("phase must be one of %s" % ", ".join(PHASES))
    if plan.phase in ("switch", "abort"):
        return _finish_prepared(plan)
    overlay_dir: Optional[str] = None
    keep_staged = False  # a `need` answer: what was delivered ahead stays for the install to come
    try:
        install_dir, svcs = _checked(plan)
        if plan.hold_within > 0:  # a client lost from here on is an abort (hold.py): never die half-way
            events.survive_lost_client(layout.events_log(install_dir))
        fetched = InstallResult()
        answer = _fetch(plan, install_dir, fetched)
        if answer is not None:
            keep_staged = bool(answer.need)
            return answer
        # From here on the server changes: finish (install or rollback) even if the client goes.
        events.survive_lost_client(layout.events_log(install_dir))
        run_dir = own_run_dir(plan.staging_dir)
        if plan.overlay_files:
            if run_dir is None:
                raise events.PlanError("overlay_files need the run's own staging_dir")
            overlay_dir = release.stage_overlay(run_dir, plan.overlay_files)
        refused = claim_lock(plan.lock_holder, install_dir)
        if refused:
            return InstallResult(ok=False, step="lock", error=refused)
        _remove_earlier_runs(plan.staging_runs, run_dir)
        confirm.supersede(install_dir, plan.lock_holder)
        earlier = confirm.take_record(install_dir)
        result = _install(plan, install_dir, svcs, overlay_dir)
        result.pulled, result.broke_stale, result.self_rollback = fetched.pulled, fetched.broke_stale, earlier
        return result
    finally:
        if overlay_dir:
            shutil.rmtree(overlay_dir, ignore_errors=True)  # staged secrets never linger
        own = own_run_dir(plan.staging_dir)
        if own and not keep_staged:
            shutil.rmtree(own, ignore_errors=True)  # this run's staged packages are unpacked


def _public(plan: InstallPlan, overlay_dir: str) -> List[str]:
    """The plan's overlay files that hold no secret, of those the release has (regular files)."""
    return sorted(
        rel
        for rel in set(plan.overlay_public)
        if os.path.isfile(os.path.join(overlay_dir, rel)) and not os.path.islink(os.path.join(overlay_dir, rel))
    )


def _unchanged(previous: receipt.Receipt, install_dir: str, plan: InstallPlan) -> InstallResult:
    """Nothing to install, but the manifest also says the services run: start any that does
    not (stopped by hand, crashed for good) and check its health. The release it has serves
    the run's fleet release from now on (its receipts say so), and its receipt learns which
    of its overlay files hold no secret if it did not know (a release of an older version)."""
    events.step("compare: no change")
    fleet_release = plan.fleet_release
    public = _public(plan, os.path.join(install_dir, "current", "overlay"))
    if public != previous.overlay_public:
        previous.overlay_public = public
        receipt.save(install_dir, previous)
    if fleet_release and previous.fleet != fleet_release:
        _serve(install_dir, previous, fleet_release)
    try:
        started = switch.start_stopped(previous)
    except switch.StepFailed as exc:
        log = switch.service_log(previous.services, exc.step, previous.service_roots, time.time() - 60)
        return InstallResult(ok=False, step=exc.step, error=str(exc), service_log=log, fleet_release=previous.fleet)
    return InstallResult(changed=bool(started), started=started, release=previous.release,
                         fleet_release=previous.fleet)  # fmt: skip


def _serve(install_dir: str, current: receipt.Receipt, fleet_release: str) -> None:
    """Record that the current release runs as `fleet_release` (its receipt and its kept one)."""
    assert current.release is not None
    current.serve(fleet_release)
    receipt.save(install_dir, current)
    kept = receipt.load_kept(install_dir, current.release)
    if kept is not None:
        kept.serve(fleet_release)
        receipt.keep(install_dir, kept)


def _install(plan: InstallPlan, install_dir: str, svcs: List[ServiceSpec], overlay_dir: Optional[str]) -> InstallResult:
    layout.ensure_install_dir(install_dir)
    previous = receipt.load(install_dir)
    roots = plan.roots or ServiceRoots()
    fingerprint = release.fingerprint(plan, svcs, roots, overlay_dir)
    if previous.fingerprint == fingerprint and switch.current_release(install_dir) == previous.release:
        return _unchanged(previous, install_dir, plan)
    events.step("compare: changed")
    for name in prepared.remove_orphans(install_dir, previous.releases):
        events.line("removed release %s: neither current, kept nor prepared (a run stopped before its switch)" % name)
    try:
        unpacked = release.unpack_packages(plan, install_dir)
        events.step("release")
        made = release.make_release(install_dir, plan.release, unpacked, overlay_dir, plan.overlay_owner)
    except switch.StepFailed as exc:
        return InstallResult(ok=False, step=exc.step, error=str(exc))
    except OSError as exc:
        return InstallResult(ok=False, step="release", error=str(exc))
    try:
        validate.validate(install_dir, made, svcs)
    except switch.StepFailed as exc:
        files.remove_path(os.path.join(install_dir, "releases", made))
        return InstallResult(ok=False, step=exc.step, error=str(exc), validate_output=exc.output)
    ready = prepared.Prepared(made, plan.lock_holder, fingerprint, unpacked)
    if plan.phase == "prepare":  # ready: the switch waits for the rest of the batch
        prepared.save(install_dir, ready)
        events.step("ready")
        return InstallResult(prepared=made, release=made, previous_release=previous.release)
    return _switch(plan, install_dir, svcs, previous, ready)


def _finish_prepared(plan: InstallPlan) -> InstallResult:
    """Phase `switch` or `abort` of a release this run prepared here (it holds the lock)."""
    install_dir, svcs = _checked(plan)
    if plan.release_lock:
        events.before_result(lambda answer: _let_go(install_dir, plan.lock_holder, answer))
    refused = claim_lock(plan.lock_holder, install_dir)
    if refused:
        return InstallResult(ok=False, step="lock", error=refused)
    previous = receipt.load(install_dir)
    try:
        ready = prepared.take(install_dir, plan.release, plan.lock_holder)
    except switch.StepFailed as exc:
        return InstallResult(ok=False, step=exc.step, error=str(exc))
    if plan.phase == "abort":
        events.step("abort")
        prepared.discard(install_dir, ready, previous.releases)
        return InstallResult(release=previous.release)
    # From here on the server changes: finish (install or rollback) even if the client goes.
    events.survive_lost_client(layout.events_log(install_dir))
    prepared.forget(install_dir)
    return _switch(plan, install_dir, svcs, previous, ready)


def _switch(
    plan: InstallPlan, install_dir: str, svcs: List[ServiceSpec], previous: receipt.Receipt, ready: prepared.Prepared
) -> InstallResult:
    """Switch to the release made (and validated) here, start it, keep the receipts."""
    made, roots = ready.release, plan.roots or ServiceRoots()
    token = None
    if plan.confirm_within > 0 and previous.release and previous.release != made:
        token = confirm.arm(install_dir, plan.lock_holder, made, previous.release, plan.confirm_within, svcs)
    failure = switch.switch_services(install_dir, made, svcs, previous, roots, discard_on_failure=True)
    if failure is not None:
        if token:
            confirm.disarm(install_dir, token)  # undone already: nothing to watch
        return InstallResult(**vars(failure))
    events.step("prune")
    history = release.prune(install_dir, [r for r in previous.releases if r != made] + [made], plan.keep_releases)
    state = receipt.Receipt(
        release=made,
        install_dir=install_dir,
        previous_release=previous.release,
        releases=history,
        installed_at=utc_now(),
        installed_by=plan.lock_holder,
        fingerprint=ready.fingerprint,
        packages=ready.packages,
        services=svcs,
        roots=roots,
        overlay_owner=plan.overlay_owner,
        overlay_generation=plan.overlay_generation,
        overlay_public=_public(plan, os.path.join(install_dir, "releases", made, "overlay")),
    )
    state.serve(plan.fleet_release or made)
    receipt.save(install_dir, state)
    receipt.keep(install_dir, state)
    return InstallResult(changed=True, release=made, previous_release=previous.release, fleet_release=state.fleet,
                         awaiting_confirmation=token)  # fmt: skip
