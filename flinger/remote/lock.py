"""The `lock` command: a per-server deploy lock in `<install_dir>/.flinger/lock`.

`lock acquire|release|break --install-dir D --holder TEXT [--wait SECONDS]`.

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

import argparse
import contextlib
import fcntl
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from flinger.remote import events, layout

_POLL_SECONDS = 0.5
_SESSION_COMMS = ("sshd", "sshd-session")


class LockWriteError(Exception):
    """The lock file could not be written (full disk, read-only filesystem, ...)."""


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


def process_ref(pid: int, what: str) -> Optional[Dict[str, Any]]:
    """{"pid", "start", "what"} for a live process; start is its start time in clock ticks."""
    fields = _stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return {"pid": pid, "start": int(fields[19]), "what": what}


def session_ref() -> Optional[Dict[str, Any]]:
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


def _alive(ref: Any) -> bool:
    if not isinstance(ref, dict) or not isinstance(ref.get("pid"), int):
        return False
    fields = _stat(ref["pid"])
    return fields is not None and len(fields) >= 20 and fields[0] != "Z" and int(fields[19]) == ref.get("start")


def why_live(record: Dict[str, Any]) -> Optional[str]:
    """Why the holder may still be working here, or None when the lock is stale."""
    if "session" not in record and "worker" not in record:
        return "it names no process (an older flinger wrote it)"  # never judged stale
    if record.get("boot_id") and record.get("boot_id") != _boot_id():
        return None  # the server rebooted since: none of its processes survive that
    for key in ("worker", "session"):
        ref = record.get(key)
        if isinstance(ref, dict) and _alive(ref):
            return "its %s (pid %s) is still running here" % (ref.get("what") or key, ref.get("pid"))
    return None


# ------------------------------------------------------------------ the lock file


@contextlib.contextmanager
def _guard(install_dir: str) -> Iterator[None]:
    """Serialise read-judge-write steps on this install dir's lock."""
    path = os.path.join(layout.state_dir(install_dir), "lock.guard")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_holder(install_dir: str) -> Optional[Dict[str, Any]]:
    """The lock's content, or None when it is free."""
    try:
        with open(layout.lock_file(install_dir), encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"holder": "(unreadable lock file)", "unreadable": True}
    return content if isinstance(content, dict) else {"holder": str(content), "unreadable": True}


def _write_error(path: str, exc: OSError) -> LockWriteError:
    return LockWriteError("cannot write the deploy lock in %s: %s" % (os.path.dirname(path), exc.strerror or exc))


def _write_complete(path: str, record: Dict[str, Any]) -> str:
    """A private temporary file next to `path` holding `record`, flushed to disk."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(path, exc) from None
    return tmp


def _new_record(holder: str) -> Dict[str, Any]:
    return {
        "holder": holder,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "boot_id": _boot_id(),
        "session": session_ref(),
    }


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


def _replace(install_dir: str, record: Dict[str, Any]) -> None:
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
    with _guard(install_dir):
        current = read_holder(install_dir) or {}
        if current.get("holder") != holder:
            return "the deploy lock is held by %s" % (current.get("holder") or "nobody")
        current["worker"] = process_ref(os.getpid(), "install")
        current["boot_id"] = _boot_id()
        _replace(install_dir, current)
    return None


def acquire(install_dir: str, holder: str, wait: float) -> int:
    """`lock acquire`: take the lock, waiting up to `wait` seconds; the result says how."""
    outcome = take(install_dir, holder, wait)
    return events.result(bool(outcome.pop("ok")), **outcome)


def take(install_dir: str, holder: str, wait: float) -> Dict[str, Any]:
    """Take the lock for `holder` (breaking a stale one, waiting up to `wait` seconds for a
    live one): the outcome's fields, `ok` first. Progress (`held`, `stale`) goes out as
    events."""
    deadline = time.monotonic() + wait
    reported = False
    while True:
        live: Optional[str] = None
        current: Dict[str, Any] = {}
        try:
            layout.ensure_install_dir(install_dir)
            with _guard(install_dir):
                if try_acquire(install_dir, holder):
                    return {"ok": True, "holder": holder}
                current = read_holder(install_dir) or {}
                if current.get("holder") == holder:
                    return {"ok": True, "holder": holder, "already_held": True}
                live = why_live(current) if not current.get("unreadable") else None
                if live is None:
                    # Nobody works for that holder here any more: say so, break it, take it.
                    events.emit(
                        "stale",
                        holder=current.get("holder"),
                        since=current.get("since"),
                        reason="an unreadable lock file"
                        if current.get("unreadable")
                        else "no process of that run is left on this server",
                    )
                    os.unlink(layout.lock_file(install_dir))
                    if try_acquire(install_dir, holder):
                        return {"ok": True, "holder": holder, "broke_stale": current.get("holder")}
                    continue
        except LockWriteError as exc:
            return {"ok": False, "error": str(exc), "step": "lock"}
        except OSError as exc:  # no room even for the install dir or the guard file
            return {
                "ok": False,
                "step": "lock",
                "error": "cannot take the deploy lock in %s: %s" % (layout.state_dir(install_dir), exc.strerror or exc),
            }
        if not reported:
            events.emit("held", holder=current.get("holder"), since=current.get("since"), why=live)
            reported = True
        if time.monotonic() >= deadline:
            return {
                "ok": False,
                "error": "the deploy lock is held by %s since %s (%s)"
                % (current.get("holder"), current.get("since"), live),
                "holder": current.get("holder"),
                "since": current.get("since"),
            }
        time.sleep(_POLL_SECONDS)


def release(install_dir: str, holder: str) -> int:
    """`lock release`: give the lock up, if `holder` holds it."""
    refused, released = let_go(install_dir, holder)
    if refused:
        return events.result(False, error=refused, holder=(read_holder(install_dir) or {}).get("holder"))
    return events.result(True, released=released)


def let_go(install_dir: str, holder: str) -> Tuple[Optional[str], bool]:
    """Remove the lock if `holder` holds it: (the error if another does, whether removed)."""
    if not os.path.isdir(layout.state_dir(install_dir)):
        return None, False
    with _guard(install_dir):
        current = read_holder(install_dir)
        if current is None:
            return None, False
        if current.get("holder") != holder:
            return "the deploy lock is held by %s, not by %s" % (current.get("holder"), holder), False
        os.unlink(layout.lock_file(install_dir))
    return None, True


def break_lock(install_dir: str) -> int:
    if not os.path.isdir(layout.state_dir(install_dir)):
        return events.result(True, broken=False, holder=None, since=None)
    with _guard(install_dir):
        current = read_holder(install_dir)
        if current is not None:
            os.unlink(layout.lock_file(install_dir))
    return events.result(
        True, broken=current is not None, holder=(current or {}).get("holder"), since=(current or {}).get("since")
    )


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="flinger-remote lock")
    parser.add_argument("action", choices=["acquire", "release", "break"])
    parser.add_argument("--install-dir", required=True)
    parser.add_argument("--holder", default="")
    parser.add_argument("--wait", type=float, default=0.0)
    args = parser.parse_args(argv[1:])
    install_dir = os.path.abspath(args.install_dir)
    if args.action == "break":
        return break_lock(install_dir)
    if not args.holder:
        return events.result(False, error="--holder is required to %s the lock" % args.action)
    if args.action == "acquire":
        return acquire(install_dir, args.holder, args.wait)
    return release(install_dir, args.holder)
