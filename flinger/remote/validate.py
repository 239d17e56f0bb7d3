"""Each service's `validate` command, run against the new release before anything switches.

It runs in the release's dir with FLINGER_RELEASE_DIR set to it, and sees the new release
at `<install_dir>/current` too, so a config that names `{{ install_dir }}/current/...`
paths is checked with the files it will use: on Linux as root, the command runs in a
private mount namespace (`unshare --mount --propagation private`) in which the release
`current` points at is covered by a bind mount of the new one. Nothing of that namespace
reaches the running services, which keep seeing the old release until the switch. On a
first install (no `current` yet) `current` points at the new release while validate runs
(nothing runs from it yet) and is removed again after it: the switch makes it for good. Where no private mount
namespace can be made (not Linux, not root, no util-linux), validate sees the running
release at `current`, and a note says so. A failure leaves the running release as it is
(not even restarted).
"""

import os
import shutil
import subprocess
import sys
from typing import List, Optional

from flinger.protocol.plans import ServiceSpec
from flinger.remote import events, files
from flinger.remote.switch import StepFailed, last_lines, switch_current

VALIDATE_TIMEOUT = 300  # seconds a service's validate command may run

# $1 the new release, $2 the dir `current` points at, $3 the validate command
_IN_VIEW = 'mount --bind -- "$1" "$2" || exit 125; cd -- "$1" && exec /bin/sh -c "$3"'


def _private_mounts() -> Optional[str]:
    """None when validate can run in a private mount namespace here, else why not."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "not root on Linux"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "no unshare or mount (util-linux)"
    try:  # asked once per install: a container may forbid it even to root
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unshare --mount is not permitted here"
    return None if probe.returncode == 0 else "unshare --mount is not permitted here"


def _argv(command: str, release_dir: str, shown: Optional[str]) -> List[str]:
    if shown is None:  # `current` is the new release already (a first install), or no view can be made
        return ["/bin/sh", "-c", command]
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _IN_VIEW,
            "flinger-validate", release_dir, shown, command]  # fmt: skip


def validate(install_dir: str, release: str, svcs: List[ServiceSpec]) -> None:
    """Each service's `validate` (see the module docstring); StepFailed on the first failure."""
    checks = [s for s in svcs if s.validate]
    if not checks:
        return
    release_dir = os.path.join(install_dir, "releases", release)
    current = os.path.join(install_dir, "current")
    first = not os.path.isdir(current)
    shown: Optional[str] = None
    if first:
        switch_current(install_dir, release)  # nothing runs from it yet
    else:
        why_not = _private_mounts()
        if why_not is None:
            shown = os.path.realpath(current)
        else:
            events.note("validate sees the running release at %s (%s); use $FLINGER_RELEASE_DIR" % (current, why_not))
    try:
        for service in checks:
            _run(service, release_dir, shown)
    finally:
        if first:  # the switch points it there for good, once the batch is ready
            files.remove_path(current)


def _run(service: ServiceSpec, release_dir: str, shown: Optional[str]) -> None:
    events.step("validate: %s" % service.name)
    env = dict(os.environ, FLINGER_RELEASE_DIR=release_dir)
    try:
        done = subprocess.run(
            _argv(service.validate or "", release_dir, shown),
            cwd=release_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=VALIDATE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        failed = StepFailed(
            "validate:" + service.name, "validate of %s did not finish in %d s" % (service.name, VALIDATE_TIMEOUT)
        )
        failed.output = last_lines(exc.output or b"")
        raise failed from None
    output = last_lines(done.stdout or b"")
    if done.returncode != 0:
        failed = StepFailed(
            "validate:" + service.name,
            "validate of %s failed (exit %d): %s" % (service.name, done.returncode, service.validate),
        )
        failed.output = output
        raise failed
    for text in output[-3:]:
        events.line("validate of %s: %s" % (service.name, text))
