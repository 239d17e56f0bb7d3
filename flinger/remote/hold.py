"""A prepared release held in the process that made it, until the client says what to do.

A batch of servers switches only once every one of them is ready (flinger/engine/strategy.py).
With `hold_within`, an `install` in phase `prepare` that answers `prepared` does not end: it
keeps the deploy lock and waits on stdin for one word from the client, then carries it out in
the same process and answers a second result (the switch's, or the abort's). One start of
the tool per server instead of three (prepare, switch, confirm); and a client that goes
away while its servers wait is seen at once (stdin closes), not when a later run finds the
lock:

- `switch`: switch to the prepared release and start it (install.py, phase `switch`);
- `abort`, stdin closed, or no word for `hold_within` seconds: remove the prepared release
  and give the lock up (phase `abort`); only the silence is answered as a failure, since
  the client that sent nothing may still be waiting for this server's answer;
- `wait`: the client is still there (it says so while other servers get ready);
- `confirm`, after a switch that awaits its confirmation (confirm.py): the switch stands and
  the lock is given up, a third answer; without it this process ends and the switch's
  watcher, which waits for this process to be gone, counts `confirm_within` from then.

Whatever happens once the word is read runs to its end even if the client goes (events.py).
"""

import os
import select
import time
from dataclasses import replace
from typing import Optional, Tuple

from flinger.protocol.plans import ConfirmPlan, InstallPlan
from flinger.protocol.results import InstallResult
from flinger.remote import events, layout


class Stdin:
    """Lines from a file descriptor, read by this module alone (no buffering elsewhere), so
    the plan's line and the words after it are read in turn from the same pipe."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.closed = False

    @classmethod
    def given(cls, data: bytes) -> "Stdin":
        """Lines from `data`, then closed (a command run in this process: the tests')."""
        stdin = cls(-1)
        stdin.buffer, stdin.closed = bytearray(data), True
        return stdin

    def line(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next line, without its newline (a last line without one too); None once the
        pipe is closed. TimeoutError when nothing whole came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        end = self.buffer.find(b"\n")
        while end < 0 and not self.closed:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError
            chunk = os.read(self.fd, 1 << 20)
            if chunk:
                seen = len(self.buffer)
                self.buffer += chunk  # a plan of many MiB: appended in place, searched once
                end = self.buffer.find(b"\n", seen)
            else:
                self.closed = True
        if end < 0:
            line = bytes(self.buffer)
            self.buffer.clear()
            return line or None
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line


def word(stdin: Stdin, within: float, expected: Tuple[str, ...]) -> str:
    """The client's word, one of `expected` (`wait` resets the time); `gone` when stdin
    closed, `silent` when nothing came within `within` seconds."""
    while True:
        try:
            said = stdin.line(within)
        except TimeoutError:
            return "silent"
        if said is None:
            events.client_gone()  # what this process says from now on goes to its log
            return "gone"
        text = said.decode("utf-8", "replace").strip()
        if text in expected:
            return text
        if text != "wait":
            events.line("ignored a word from the client that is none of %s: %r" % (", ".join(expected), text[:40]))


def go_on(plan: InstallPlan, result: InstallResult, stdin: Stdin) -> InstallResult:
    """An install's last answer. With `hold_within`, an answer the client has more to say
    about (`prepared`: switch or abort; `awaiting_confirmation`: confirm) is written now,
    and the word read and carried out; else `result` itself."""
    from flinger.remote import install  # the command module that answered

    if plan.hold_within <= 0 or not result.waits_for_word():
        return result
    # the client may go before it reads this answer: what follows goes to the log then
    events.survive_lost_client(layout.events_log(install.install_dir_of(plan.install_dir)))
    events.finish(result)
    if result.prepared:  # ready: the client decides
        return go_on(plan, _switch_or_abort(plan, result.prepared, stdin), stdin)
    assert result.awaiting_confirmation is not None  # switched: confirmed here, or the watcher waits
    return _confirmation(plan, result.awaiting_confirmation, stdin)


def _switch_or_abort(plan: InstallPlan, prepared: str, stdin: Stdin) -> InstallResult:
    """The switch, or the abort, of the release `prepared`, as the client's word says."""
    from flinger.remote import install  # the command module that made it

    said = word(stdin, plan.hold_within, ("switch", "abort"))
    phase = "switch" if said == "switch" else "abort"
    if said != phase:
        events.line("no word from the client (%s): the release %s is not switched" % (_why(said, plan), prepared))
    finish = replace(plan, phase=phase, release=prepared, overlay_files={}, acquire=False, release_lock=True)
    result = install.install(finish)
    if said == "silent" and result.ok:
        return InstallResult(
            ok=False,
            step="switch",
            error="ready, not switched: no word from the client within %g s; the release was removed and the lock "
            "given up" % plan.hold_within,
            release=result.release,
            lock_released=result.lock_released,
            lock_problem=result.lock_problem,
        )
    return result


def _confirmation(plan: InstallPlan, token: str, stdin: Stdin) -> InstallResult:
    """The client's `confirm` of the switch just answered (confirm.py), as this install's
    last answer; without it, this process ends and the switch's watcher counts from then."""
    from flinger.remote import confirm

    said = word(stdin, plan.hold_within, ("confirm",))
    if said != "confirm":
        return InstallResult(
            ok=False,
            step="confirm",
            error="no confirmation from the client (%s): this server switches back %g s from now unless a confirm "
            "comes" % (_why(said, plan), plan.confirm_within),
        )
    done = confirm.confirm(ConfirmPlan(plan.install_dir, plan.lock_holder, token))
    return InstallResult(ok=done.ok, step=done.step, error=done.error, lock_released=done.lock_released)


def _why(said: str, plan: InstallPlan) -> str:
    return "its stdin closed" if said == "gone" else "nothing within %g s" % plan.hold_within
