"""Confirmed switches: a server that switched goes back unless its client confirms in time.

Before `install` switches (with `confirm_within` > 0 and a release to go back to), it arms
a watcher: `.flinger/pending.json` (0600) names the switch (a random token, the release,
the one to go back to, the run holding the lock) and a process that outlives the install
(forked twice, in its own session: SIGHUP, a lost SSH connection or a SIGKILL of the
install do not reach it) becomes the lock's worker, so no other run takes the server
meanwhile. Once the install process is gone (its result sent, or the tool killed), the client has
`confirm_within` seconds to run `confirm` with the token: the watcher stands down and the
lock is given up. Without it (client killed, server cut off, tool killed), the watcher
switches the server back to the release it ran, health-checked like any rollback, records
what it did in `.flinger/self-rollback.json` and gives the lock up: a server nobody can
reach ends where a rollout that lost it ends, on the release it had. The next `install`
or `status` reports that record (install clears it once reported).
"""

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional, Type, TypeVar

from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.plans import ConfirmPlan, RollbackPlan, ServiceSpec
from flinger.protocol.results import ConfirmResult, SelfRollback
from flinger.remote import events, files, layout, lock, receipt

_POLL = 0.5


@dataclass
class Pending:
    token: str
    release: str  # switched to
    previous: str  # to go back to
    holder: str  # the run whose lock the watcher keeps
    confirm_within: float
    services: List[ServiceSpec] = field(default_factory=list)  # the new release's
    worker: Optional[lock.ProcessRef] = None  # the install: no deadline runs while it works
    settled_at: Optional[float] = None  # time.time() when the install was seen gone: the deadline starts


def _pending_path(install_dir: str) -> str:
    return os.path.join(layout.state_dir(install_dir), "pending.json")


def _record_path(install_dir: str) -> str:
    return os.path.join(layout.state_dir(install_dir), "self-rollback.json")


T = TypeVar("T")


def _read(path: str, kind: Type[T]) -> Optional[T]:
    """A record of .flinger/, or None when there is none (or it is damaged: as good as none)."""
    data = files.read_json(path, None)
    if not isinstance(data, dict):
        return None
    try:
        return decode(kind, data, os.path.basename(path), strict=False)
    except ProtocolError:
        return None


def load_pending(install_dir: str) -> Optional[Pending]:
    return _read(_pending_path(install_dir), Pending)


def _save(install_dir: str, pending: Pending) -> None:
    files.write_json_atomic(_pending_path(install_dir), encode(pending), mode=0o600)


def arm(install_dir: str, holder: str, release: str, previous: str, within: float, svcs: List[ServiceSpec]) -> str:
    """Before the switch: the pending record and its watcher; the token."""
    worker = lock.process_ref(os.getpid(), "install")
    pending = Pending(secrets.token_hex(8), release, previous, holder, within, list(svcs), worker)
    _save(install_dir, pending)
    _spawn_watcher(install_dir, pending.token)
    return pending.token


def disarm(install_dir: str, token: str) -> bool:
    """The switch needs no watching (it failed and was undone, or it is confirmed)."""
    with lock.guarded(install_dir):
        pending = load_pending(install_dir)
        if pending is None or pending.token != token:
            return False
        files.remove_path(_pending_path(install_dir))
        return True


def supersede(install_dir: str, holder: str) -> None:
    """A new switch under the lock replaces any switch still waiting here (its watcher
    stands down); one left by another run (its watcher gone: a reboot) is said so."""
    with lock.guarded(install_dir):
        pending = load_pending(install_dir)
        if pending is None:
            return
        if pending.holder != holder:
            events.line("the switch to %s by %s was never confirmed and nothing watches it any more: it "
                        "stays as it is, replaced by this run" % (pending.release, pending.holder))  # fmt: skip
        files.remove_path(_pending_path(install_dir))


def confirm(plan: ConfirmPlan) -> ConfirmResult:
    """`confirm`: the switch stands; the lock is given up."""
    install_dir = os.path.normpath(plan.install_dir)
    if not disarm(install_dir, plan.token):
        done = read_record(install_dir)
        why = " (%s switched back to %s at %s: %s)" % (done.release, done.to, done.at, done.reason) if done else ""
        return ConfirmResult(ok=False, step="confirm", error="no switch here waits for this confirmation%s" % why)
    refused, released = lock.let_go(install_dir, plan.lock_holder)
    return ConfirmResult(confirmed=True, lock_released=released, error=refused)


def awaiting(install_dir: str, holder: str) -> Optional[str]:
    """Why `holder`'s lock is live when its switch here waits for a confirmation that its
    client, gone, may never send: until when, and what happens then."""
    pending = load_pending(install_dir)
    if pending is None or pending.holder != holder or pending.settled_at is None:
        return None
    left = max(0.0, pending.settled_at + pending.confirm_within - time.time())
    return ("its switch to %s waits for its client's confirmation: without it, this server goes back "
            "to %s in %d s (run again then, or with --lock-wait)" % (pending.release, pending.previous,
                                                                     int(left + 0.999)))  # fmt: skip


def read_record(install_dir: str) -> Optional[SelfRollback]:
    return _read(_record_path(install_dir), SelfRollback)


def take_record(install_dir: str) -> Optional[SelfRollback]:
    """The record of a self-rollback, removed once read (an install reports it once)."""
    record = read_record(install_dir)
    if record is not None:
        files.remove_path(_record_path(install_dir))
    return record


# ------------------------------------------------------------------ the watcher


def _spawn_watcher(install_dir: str, token: str) -> None:
    """Fork a process that outlives this one (two forks, its own session) and watches."""
    # imported now, all the watcher may need: the tool's file may be replaced while it waits
    from flinger.remote import health, install, rollback, switch  # noqa: F401

    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:  # the first child
        os.setsid()
        if os.fork():
            os._exit(0)
        _detach(install_dir)
        code = _watch(install_dir, token)
    except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code
        code = 1
    os._exit(code)


def _detach(install_dir: str) -> None:
    """No terminal, no client: stdin from /dev/null, its events into .flinger/events.log."""
    log = layout.events_log(install_dir)
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 256)
    events.survive_lost_client(log)


def _watch(install_dir: str, token: str) -> int:
    """Wait for the confirmation; without it by the deadline, switch back."""
    first = load_pending(install_dir)
    if first is None or first.token != token:
        return 0
    lock.claim_for_worker(install_dir, first.holder)  # the lock stays live while this watches
    while True:
        with lock.guarded(install_dir):
            pending = load_pending(install_dir)
            if pending is None or pending.token != token:
                return 0  # confirmed, or the switch failed and was undone
            if lock.alive(pending.worker):
                settled = None
            else:
                settled = pending.settled_at or time.time()
                if pending.settled_at is None:  # the install died before it settled
                    pending.settled_at = settled
                    _save(install_dir, pending)
            if settled is not None and time.time() >= settled + pending.confirm_within:
                files.remove_path(_pending_path(install_dir))
                break
        time.sleep(_POLL)
    _switch_back(install_dir, pending)
    return 0


def _switch_back(install_dir: str, pending: Pending) -> None:
    from flinger.remote import rollback
    from flinger.remote.install import utc_now

    refused = lock.claim_for_worker(install_dir, pending.holder)
    reason = "no confirmation within %g s of the switch" % pending.confirm_within
    state = receipt.load(install_dir)
    if state.release != pending.release:  # the install was killed before its receipt: say what runs
        kept = receipt.load_kept(install_dir, pending.release)
        state = kept or receipt.Receipt(release=pending.release, install_dir=install_dir,
                                        releases=[*state.releases, pending.release], services=pending.services,
                                        roots=state.roots, previous_release=pending.previous)  # fmt: skip
        receipt.save(install_dir, state)
    events.step("self-rollback: %s to %s (%s)" % (pending.release, pending.previous, reason))
    result = rollback.switch_back(RollbackPlan(install_dir=install_dir, lock_holder=pending.holder,
                                               to=pending.previous), install_dir)  # fmt: skip
    record = SelfRollback(release=pending.release, to=pending.previous, at=utc_now(), reason=reason,
                          fleet_release=state.fleet, ok=result.ok, error=result.error or refused)  # fmt: skip
    files.write_json_atomic(_record_path(install_dir), encode(record), mode=0o600)
    events.line("self-rollback: %s" % json.dumps(encode(record)))
    lock.let_go(install_dir, pending.holder)
