"""The `lock` command: a per-server deploy lock in `<install_dir>/.flinger/lock`.

Plan: `LockPlan` (action acquire | release | break, install_dir, holder, wait).

The lock says who holds it and which processes *on this server* work for that holder:
the SSH session the run's commands arrive through (`session`, the nearest `sshd`
ancestor of the `lock acquire` process) and, once the install runs, the install process
itself (`worker`). Each is recorded as pid plus start time, with the boot id, so a reused
pid or a reboot is not mistaken for a live holder. A lock is stale only when both are gone
here; then `acquire` breaks it, and says so. A live holder is reported (who, since when,
which process still works for it) and waited for up to --wait seconds; `break` is the
operator's explicit decision for anything else.

The file is written complete before it appears (a temporary file hard-linked into place),
so a full disk fails the acquire with its cause and leaves no lock behind. Every
read-judge-write step runs under an flock on `.flinger/lock.guard`, so two runs judging
the same stale lock cannot both take it.
"""

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.plans import LockPlan
from flinger.protocol.results import LockResult, StaleLock
from flinger.remote import events, layout

_POLL_SECONDS = 0.5
_SESSION_COMMS = ("sshd", "sshd-session")


class LockWriteError(Exception):
    """The lock file could not be written (full disk, read-only filesystem, ...)."""


@dataclass
class ProcessRef:
    """A process on this server: its pid and its start time (clock ticks since boot), so a
    reused pid is not mistaken for it."""

    pid: int
    start: int
    what: str = ""


@dataclass
class LockRecord:
    """The lock file's content."""

    holder: str
    since: str = ""
    boot_id: str = ""
    session: Optional[ProcessRef] = None  # the SSH session the holder's commands arrive through
    worker: Optional[ProcessRef] = None  # the install working for the holder
    unreadable: bool = False  # the file could not be read: never judged live


# ------------------------------------------------------------------ processes on this server


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name (so field 0 is the state)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _comm(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def process_ref(pid: int, what: str) -> Optional[ProcessRef]:
    """A live process as pid + start time; None when it is gone."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return ProcessRef(pid, int(fields[19]), what)


def session_ref() -> Optional[ProcessRef]:
    """The SSH session this command came through: its nearest sshd ancestor (or, run by
    hand outside SSH, its parent process)."""
    pid = os.getppid()
    seen = 0
    while pid > 1 and seen < 64:
        if _comm(pid) in _SESSION_COMMS:
            return process_ref(pid, "ssh session")
        fields = _stat(pid)
        if fields is None:
            break
        pid = int(fields[1])
        seen += 1
    return process_ref(os.getppid(), "parent process")


def alive(ref: Optional[ProcessRef]) -> bool:
    """The process is still the one `ref` names (not gone, not a zombie, not a reused pid)."""
    if ref is None:
        return False
    fields = _stat(ref.pid)
    return fields is not None and len(fields) >= 20 and fields[0] != "Z" and int(fields[19]) == ref.start


def why_live(record: LockRecord, install_dir: Optional[str] = None) -> Optional[str]:
    """Why the holder may still be working here, or None when the lock is stale."""
    if record.session is None and record.worker is None:
        return "it names no process (an older flinger wrote it)"  # never judged stale
    if record.boot_id and record.boot_id != _boot_id():
        return None  # the server rebooted since: none of its processes survive that
    for key, ref in (("worker", record.worker), ("session", record.session)):
        if ref is not None and alive(ref):
            from flinger.remote import confirm  # imports this module

            waiting = confirm.awaiting(install_dir, record.holder) if install_dir else None
            return waiting or "its %s (pid %s) is still running here" % (ref.what or key, ref.pid)
    return None


# ------------------------------------------------------------------ the lock file


@contextlib.contextmanager
def guarded(install_dir: str) -> Iterator[None]:
    """Serialise read-judge-write steps on this install dir's lock (and on the other files of
    .flinger/ that change under the same rule: confirm.py)."""
    path = os.path.join(layout.state_dir(install_dir), "lock.guard")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_holder(install_dir: str) -> Optional[LockRecord]:
    """The lock's content, or None when it is free."""
    try:
        with open(layout.lock_file(install_dir), encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        return LockRecord("(unreadable lock file)", unreadable=True)
    try:
        return decode(LockRecord, content, "lock", strict=False)
    except ProtocolError:
        return LockRecord("(unreadable lock file)", unreadable=True)


def _write_error(path: str, exc: OSError) -> LockWriteError:
    return LockWriteError("cannot write the deploy lock in %s: %s" % (os.path.dirname(path), exc.strerror or exc))


def _write_complete(path: str, record: LockRecord) -> str:
    """A private temporary file next to `path` holding `record`, flushed to disk."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(encode(record), handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, exc) from None
    return tmp


def _new_record(holder: str) -> LockRecord:
    return LockRecord(holder, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), _boot_id(), session_ref())


def try_acquire(install_dir: str, holder: str) -> bool:
    """Create the lock for `holder`; False when another lock file exists."""
    layout.ensure_install_dir(install_dir)
    path = layout.lock_file(install_dir)
    tmp = _write_complete(path, _new_record(holder))
    try:
        os.link(tmp, path)  # appears whole, or not at all
    except FileExistsError:
        return False
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


def _replace(install_dir: str, record: LockRecord) -> None:
    path = layout.lock_file(install_dir)
    tmp = _write_complete(path, record)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, exc) from None


def claim_for_worker(install_dir: str, holder: str) -> Optional[str]:
    """Record the calling process as the one working for `holder`; the error if the lock is
    not (or no longer) held by `holder`."""
    layout.ensure_install_dir(install_dir)
    with guarded(install_dir):
        current = read_holder(install_dir)
        if current is None or current.holder != holder:
            return "the deploy lock is held by %s" % (current.holder if current else "nobody")
        current.worker = process_ref(os.getpid(), "install")
        current.boot_id = _boot_id()
        _replace(install_dir, current)
    return None


def _judge(install_dir: str, holder: str) -> Tuple[Optional[LockResult], Optional[LockRecord], Optional[str]]:
    """One look at the lock, under the guard: (the outcome when decided, else the live
    holder's record and why it is live)."""
    layout.ensure_install_dir(install_dir)
    with guarded(install_dir):
        if try_acquire(install_dir, holder):
            return LockResult(holder=holder), None, None
        current = read_holder(install_dir) or LockRecord("nobody")
        if current.holder == holder:
            return LockResult(holder=holder), None, None
        live = why_live(current, install_dir) if not current.unreadable else None
        if live is not None:
            return None, current, live
        # Nobody works for that holder here any more: say so, break it, take it.
        reason = "an unreadable lock file" if current.unreadable else "no process of that run is left on this server"
        events.line("broke a stale deploy lock of %s since %s: %s" % (current.holder, current.since, reason))
        os.unlink(layout.lock_file(install_dir))
        if try_acquire(install_dir, holder):
            return LockResult(holder=holder, broke_stale=StaleLock(current.holder, current.since, reason)), None, None
        return None, None, None  # another run was quicker: look again


def take(install_dir: str, holder: str, wait: float) -> LockResult:
    """Take the lock for `holder`, breaking a stale one and waiting up to `wait` seconds for
    a live one."""
    deadline = time.monotonic() + wait
    reported = False
    while True:
        try:
            decided, current, live = _judge(install_dir, holder)
        except LockWriteError as exc:
            return LockResult(ok=False, step="lock", error=str(exc))
        except OSError as exc:  # no room even for the install dir or the guard file
            where = layout.state_dir(install_dir)
            return LockResult(ok=False, step="lock", error="cannot take the deploy lock in %s: %s"
                              % (where, exc.strerror or exc))  # fmt: skip
        if decided is not None:
            return decided
        if current is None:
            continue
        if not reported:
            events.line("waiting for the deploy lock: held by %s since %s; %s" % (current.holder, current.since, live))
            reported = True
        if time.monotonic() >= deadline:
            return LockResult(
                ok=False,
                step="lock",
                error="the deploy lock is held by %s since %s (%s)" % (current.holder, current.since, live),
                holder=current.holder,
                since=current.since,
            )
        time.sleep(_POLL_SECONDS)


def let_go(install_dir: str, holder: str) -> Tuple[Optional[str], bool]:
    """Remove the lock if `holder` holds it: (the error if another does, whether removed)."""
    if not os.path.isdir(layout.state_dir(install_dir)):
        return None, False
    with guarded(install_dir):
        current = read_holder(install_dir)
        if current is None:
            return None, False
        if current.holder != holder:
            return "the deploy lock is held by %s, not by %s" % (current.holder, holder), False
        os.unlink(layout.lock_file(install_dir))
    return None, True


def break_lock(install_dir: str) -> LockResult:
    if not os.path.isdir(layout.state_dir(install_dir)):
        return LockResult()
    with guarded(install_dir):
        current = read_holder(install_dir)
        if current is not None:
            os.unlink(layout.lock_file(install_dir))
    if current is None:
        return LockResult()
    return LockResult(broken=True, holder=current.holder, since=current.since)


def run(plan: LockPlan) -> LockResult:
    """The `lock` command."""
    from flinger.remote.install import install_dir_of

    install_dir = install_dir_of(plan.install_dir)
    if plan.action == "acquire":
        return take(install_dir, plan.holder, plan.wait)
    if plan.action == "release":
        refused, released = let_go(install_dir, plan.holder)
        if refused:
            current = read_holder(install_dir)
            return LockResult(ok=False, error=refused, holder=current.holder if current else None)
        return LockResult(released=released)
    if plan.action == "break":
        return break_lock(install_dir)
    raise events.PlanError("lock: unknown action %r (acquire, release or break)" % plan.action)
