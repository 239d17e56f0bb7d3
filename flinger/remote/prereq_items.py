"""The plumbing of the `prereqs` command (prereqs.py): what it looks at and how it says what
it found. Each item is first looked at: already as asked, it is "ok"; in check mode a
difference is "would-change" and nothing is touched; otherwise it is changed and reported
"changed" (or "failed", with a one-line reason). Commands run through a `Runner` and files
are reached under a `root` prefix, so the decisions can be tested with a fake runner in a
temporary tree.
"""

import os
import platform
import re
import shutil
import subprocess
from typing import Callable, Dict, List, Optional, Tuple

from flinger.protocol.plans import PrereqsPlan
from flinger.protocol.results import PrereqItem
from flinger.remote import events

SYSCTL_FILE = "/etc/sysctl.d/90-flinger.conf"
OK, CHANGED, WOULD_CHANGE, FAILED = "ok", "changed", "would-change", "failed"
# apt package names (Debian policy), optionally with an architecture qualifier.
APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?$")
PKG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._/@,=:-]*$")
ACCOUNT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+([./][A-Za-z0-9_:-]+)*$")
APT_UNKNOWN = (
    re.compile(r"Unable to locate package (\S+)"),
    re.compile(r"Package '?([^' ]+)'? has no installation candidate"),
)
APT_LOCK_WAIT = "DPkg::Lock::Timeout=300"  # unattended-upgrades may hold the dpkg lock
ACCOUNT_LOCK_RETRIES = 5  # another useradd/groupadd holding /etc/passwd's lock

Completed = Tuple[int, str, str]  # exit status, stdout, stderr
Runner = Callable[[List[str], Optional[Dict[str, str]], Optional[str]], Completed]


def run_command(argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Completed:
    """Run a command (no shell) and collect its output; a missing program is status 127."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    except FileNotFoundError:
        return 127, "", "%s: command not found" % argv[0]
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def last_line(*texts: str) -> str:
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


class Changes:
    """One run of a plan on one host: what it looked at, decided and changed, and how it says so."""

    def __init__(
        self,
        plan: PrereqsPlan,
        runner: Runner = run_command,
        root: str = "/",
        which: Optional[Callable[[str], bool]] = None,
    ) -> None:
        self.plan = plan
        self.check = plan.check
        self.runner = runner
        self.root = root
        self.which = which or (lambda name: shutil.which(name) is not None)
        self.counts = {OK: 0, CHANGED: 0, WOULD_CHANGE: 0, FAILED: 0}
        self.failures: List[str] = []
        self.items: List[PrereqItem] = []
        self.os = self._detect_os(plan.os)
        # users the plan itself creates: in check mode a directory owned by one is not an error
        self.planned_users = {u.name for u in plan.users}
        self.planned_groups = set(plan.groups)
        self.planned_groups.update(u.group for u in plan.users if u.group)
        # OS packages this plan would install (check mode): their scripts may make accounts
        # (redis-server makes `redis`), so a directory owned by one not there yet is no error
        self.pending_packages: List[str] = []

    # -- plumbing -----------------------------------------------------------------------
    def _detect_os(self, wanted: str) -> str:
        if wanted in ("debian", "illumos"):
            return wanted
        if platform.system() == "SunOS":
            return "illumos"
        if self.which("dpkg-query") and self.which("apt-get"):
            return "debian"
        return "other"

    def path(self, path: str) -> str:
        """Where an absolute host path is under this run's root."""
        return os.path.join(self.root, path.lstrip("/"))

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Completed:
        return self.runner(argv, env, cwd)

    def item(self, kind: str, name: str, state: str, detail: str = "") -> None:
        self.counts[state] += 1
        if state == FAILED:
            labelled = detail.startswith((kind + ":", "%s %s" % (kind, name)))
            self.failures.append(detail if labelled else "%s %s: %s" % (kind, name, detail))
        self.items.append(PrereqItem(kind, name, state, detail))
        label = "%s %s" % (kind, name)
        if state == OK:
            events.note("%s: %s" % (label, state))
        else:
            events.line("%s: %s (%s)" % (label, state, detail))

    def differs(self, kind: str, name: str, what: str, change: Callable[[], Optional[str]]) -> None:
        """Report a difference: would-change in check mode, else run `change` (None = done,
        a string = why it failed)."""
        if self.check:
            self.item(kind, name, WOULD_CHANGE, what)
            return
        error = change()
        if error is None:
            self.item(kind, name, CHANGED, what)
        else:
            self.item(kind, name, FAILED, error)
