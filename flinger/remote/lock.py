"""The `lock` command: a per-server deploy lock in `<install_dir>/.flinger/lock`.

`lock acquire|release|break --install-dir D --holder TEXT [--wait SECONDS]`. The lock file
is created with O_EXCL and holds {"holder", "pid", "since"}. A held lock is reported (who
and since when) and waited for up to --wait seconds; it is never taken over silently:
`break` is the operator's explicit decision.
"""

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional

from flinger.remote import events, layout

_POLL_SECONDS = 0.5


def read_holder(install_dir: str) -> Optional[Dict[str, Any]]:
    """The lock's content, or None when it is free."""
    try:
        with open(layout.lock_file(install_dir), encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"holder": "(unreadable lock file)", "pid": None, "since": None}
    return content if isinstance(content, dict) else {"holder": str(content)}


def try_acquire(install_dir: str, holder: str) -> bool:
    layout.ensure_install_dir(install_dir)
    record = {"holder": holder, "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        fd = os.open(layout.lock_file(install_dir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return True


def acquire(install_dir: str, holder: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    reported = False
    while True:
        if try_acquire(install_dir, holder):
            return events.result(True, holder=holder)
        current = read_holder(install_dir) or {}
        if current.get("holder") == holder:
            return events.result(True, holder=holder, already_held=True)
        if not reported:
            events.emit("held", holder=current.get("holder"), pid=current.get("pid"),
                        since=current.get("since"))
            reported = True
        if time.monotonic() >= deadline:
            return events.result(False, error="the deploy lock is held by %s since %s"
                                 % (current.get("holder"), current.get("since")),
                                 holder=current.get("holder"), since=current.get("since"))
        time.sleep(_POLL_SECONDS)


def release(install_dir: str, holder: str) -> int:
    current = read_holder(install_dir)
    if current is None:
        return events.result(True, released=False)
    if current.get("holder") != holder:
        return events.result(False, error="the deploy lock is held by %s, not by %s"
                             % (current.get("holder"), holder), holder=current.get("holder"))
    os.unlink(layout.lock_file(install_dir))
    return events.result(True, released=True)


def break_lock(install_dir: str) -> int:
    current = read_holder(install_dir)
    if current is not None:
        os.unlink(layout.lock_file(install_dir))
    return events.result(True, broken=current is not None,
                         holder=(current or {}).get("holder"), since=(current or {}).get("since"))


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
