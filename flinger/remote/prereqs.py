"""The `prereqs` command: bring a host's OS prerequisites to what a plan asks, idempotently.

The plan (`PrereqsPlan`) lists OS packages (`apt` on Debian, `pkg` on illumos), sysctls,
groups, users, directories and setup scripts. Each item is first looked at: if it is already
as asked it is reported "ok"; in check mode a difference is reported "would-change" and
nothing is touched; otherwise it is changed and reported "changed" (or "failed", with a
one-line reason). The result counts them, so a second run that reports no changes proves
the first one converged.

Commands run through a `Runner` and files are reached under a `root` prefix, so the
decisions can be tested with a fake runner in a temporary tree.
"""

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from flinger.protocol.plans import DirSpec, PrereqsPlan, ScriptSpec, UserSpec
from flinger.protocol.results import PrereqItem, PrereqsResult
from flinger.remote import events

SYSCTL_FILE = "/etc/sysctl.d/90-flinger.conf"
OK, CHANGED, WOULD_CHANGE, FAILED = "ok", "changed", "would-change", "failed"
# apt package names (Debian policy), optionally with an architecture qualifier.
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?$")
_PKG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._/@,=:-]*$")
_ACCOUNT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+([./][A-Za-z0-9_:-]+)*$")
_APT_UNKNOWN = (
    re.compile(r"Unable to locate package (\S+)"),
    re.compile(r"Package '?([^' ]+)'? has no installation candidate"),
)
_APT_LOCK_WAIT = "DPkg::Lock::Timeout=300"  # unattended-upgrades may hold the dpkg lock
_ACCOUNT_LOCK_RETRIES = 5  # another useradd/groupadd holding /etc/passwd's lock

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


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


class Prereqs:
    """One run of a plan on one host: looks, decides, changes (unless check), reports."""

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

    # -- the whole plan -----------------------------------------------------------------
    def apply(self) -> PrereqsResult:
        self.packages_apt(self.plan.apt)
        self.packages_pkg(self.plan.pkg)
        self.sysctls(self.plan.sysctl)
        self.groups(self.plan.groups)
        self.users(self.plan.users)
        self.dirs(self.plan.dirs)
        self.scripts(self.plan.scripts)
        result = PrereqsResult(
            ok=not self.failures,
            items=[i for i in self.items if i.state != OK],
            changed=self.counts[CHANGED],
            would_change=self.counts[WOULD_CHANGE],
            unchanged=self.counts[OK],
            failed=self.counts[FAILED],
            failures=self.failures,
        )
        if self.failures:
            more = len(self.failures) - 3
            result.error = "; ".join(self.failures[:3]) + (" (and %d more)" % more if more > 0 else "")
        return result

    # -- OS packages ----------------------------------------------------------------------
    def _apt_installed(self, name: str) -> bool:
        code, out, _err = self.run(["dpkg-query", "-W", "-f", "${Status}", name])
        return code == 0 and out.strip().endswith("install ok installed")

    def packages_apt(self, names: List[str]) -> None:
        if not names:
            return
        if self.os != "debian":
            if self.os == "other":
                for name in names:
                    self.item("apt", name, FAILED, "apt: this host has no apt-get/dpkg-query")
            return  # an illumos host takes its packages from `pkg`
        missing = []
        for name in names:
            if not _APT_NAME.match(name):
                self.item("apt", name, FAILED, "apt: %r is not a valid package name" % name)
            elif self._apt_installed(name):
                self.item("apt", name, OK, "installed")
            else:
                missing.append(name)
        if not missing:
            return
        if self.check:
            for name in missing:
                known, _out, _err = self.run(["apt-cache", "show", "--no-all-versions", name])
                note = "" if known == 0 else " (not in apt's package lists; installing refreshes them first)"
                self.item("apt", name, WOULD_CHANGE, "not installed" + note)
            return
        outcome = self._apt_install(missing)
        for name in missing:
            error = outcome.get(name)
            if error is None:
                self.item("apt", name, CHANGED, "installed")
            else:
                self.item("apt", name, FAILED, error)

    def _apt_install(self, names: List[str]) -> Dict[str, Optional[str]]:
        """Install `names`; refresh the package lists once if apt does not know a name, and
        install the others even if some name stays unknown. name -> None or why it failed."""
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        outcome = {}  # type: Dict[str, Optional[str]]
        todo = list(names)
        updated = False
        update_note = ""
        while todo:
            argv = ["apt-get", "install", "-y", "--no-install-recommends", "-o", _APT_LOCK_WAIT, *todo]
            code, out, err = self.run(argv, env, None)
            if code == 0:
                for name in todo:
                    outcome[name] = None
                break
            unknown = [n for n in todo if n in _apt_unknown(out + "\n" + err)]
            if unknown and not updated:
                updated = True
                ucode, uout, uerr = self.run(["apt-get", "update", "-o", _APT_LOCK_WAIT], env, None)
                if ucode != 0:
                    update_note = " (apt-get update failed: %s)" % _last_line(uerr, uout)
                continue
            if not unknown:
                reason = "apt: apt-get install failed (status %d): %s" % (code, _last_line(err, out))
                for name in todo:
                    outcome[name] = reason
                break
            for name in unknown:
                outcome[name] = "apt: no package named %s%s" % (name, update_note)
                todo.remove(name)
        return outcome

    def _pkg_installed(self, name: str) -> bool:
        code, _out, _err = self.run(["pkg", "info", "-q", name])
        return code == 0

    def packages_pkg(self, names: List[str]) -> None:
        if not names:
            return
        if self.os != "illumos":
            return  # pkg(1) names only mean something on illumos; Debian takes `apt`
        missing = []
        for name in names:
            if not _PKG_NAME.match(name):
                self.item("pkg", name, FAILED, "pkg: %r is not a valid package name" % name)
            elif self._pkg_installed(name):
                self.item("pkg", name, OK, "installed")
            else:
                missing.append(name)
        if not missing:
            return
        if self.check:
            for name in missing:
                self.item("pkg", name, WOULD_CHANGE, "not installed")
            return
        todo = list(missing)
        errors = {}  # type: Dict[str, str]
        for _attempt in range(2):
            # status 4: nothing to do (everything already installed)
            code, out, err = self.run(["pkg", "install", "--accept", "-q", *todo])
            if code in (0, 4):
                break
            text = out + "\n" + err
            unmatched = [
                n for n in todo if "did not match" in text and re.search(r"^\s+%s\s*$" % re.escape(n), text, re.M)
            ]
            for name in unmatched:
                errors[name] = "pkg: no package named %s" % name
                todo.remove(name)
            if not unmatched or not todo:
                for name in todo:
                    errors[name] = "pkg: pkg install failed (status %d): %s" % (code, _last_line(err, out))
                break
        for name in missing:
            if name in errors:
                self.item("pkg", name, FAILED, errors[name])
            elif self._pkg_installed(name):
                self.item("pkg", name, CHANGED, "installed")
            else:
                self.item("pkg", name, FAILED, "pkg: %s is still not installed" % name)

    # -- sysctls --------------------------------------------------------------------------
    def _sysctl_read(self, key: str) -> Optional[str]:
        proc_path = self.path("/proc/sys/" + key.replace(".", "/"))
        if os.path.isdir(self.path("/proc/sys")):
            try:
                with open(proc_path, encoding="utf-8") as handle:
                    return " ".join(handle.read().split())
            except OSError:
                return None
        code, out, _err = self.run(["sysctl", "-n", key])
        return " ".join(out.split()) if code == 0 else None

    def sysctls(self, wanted: Dict[str, str]) -> None:
        if not wanted:
            return
        if self.os == "illumos":
            for key in sorted(wanted):
                self.item("sysctl", key, FAILED, "sysctl: not supported on illumos (use a script)")
            return
        valid = {}  # type: Dict[str, str]
        for key in sorted(wanted):
            if not _SYSCTL_KEY.match(key) or ".." in key:
                self.item("sysctl", key, FAILED, "sysctl: %r is not a valid key" % key)
            else:
                valid[key] = " ".join(wanted[key].split())
        # Persist every wanted value, even those already live, so they survive a reboot.
        conf_path = self.plan.sysctl_file or SYSCTL_FILE
        content = "# Written by flinger install-prereqs; rewritten when the manifest's sysctls change.\n"
        content += "".join("%s = %s\n" % (k, v) for k, v in sorted(valid.items()))
        if _read_text(self.path(conf_path)) == content:
            self.item("file", conf_path, OK, "up to date")
        else:
            self.differs(
                "file", conf_path, "sysctl settings", lambda: _write_text_atomic(self.path(conf_path), content, 0o644)
            )
        stale = {}  # type: Dict[str, str]
        for key, value in valid.items():
            current = self._sysctl_read(key)
            if current is None:
                self.item("sysctl", key, FAILED, "sysctl: no key named %s on this host" % key)
            elif current == value:
                self.item("sysctl", key, OK, "= %s" % value)
            else:
                stale[key] = current
        if not stale:
            return
        if self.check:
            for key, current in stale.items():
                self.item("sysctl", key, WOULD_CHANGE, "%s -> %s" % (current, valid[key]))
            return
        why = self._sysctl_apply(conf_path, stale, valid)
        for key, before in stale.items():
            now = self._sysctl_read(key)
            if now == valid[key]:
                self.item("sysctl", key, CHANGED, "%s -> %s" % (before, valid[key]))
            else:
                self.item(
                    "sysctl",
                    key,
                    FAILED,
                    "sysctl: %s is still %s, not %s%s" % (key, now, valid[key], ": " + why if why else ""),
                )

    def _sysctl_apply(self, conf_path: str, stale: Dict[str, str], valid: Dict[str, str]) -> str:
        """Apply the settings; returns the last error line, if any."""
        if self.which("sysctl"):
            code, out, err = self.run(["sysctl", "-p", self.path(conf_path)])
            return "" if code == 0 else _last_line(err, out)
        why = ""
        for key in stale:
            try:
                with open(self.path("/proc/sys/" + key.replace(".", "/")), "w", encoding="utf-8") as handle:
                    handle.write(valid[key] + "\n")
            except OSError as exc:
                why = exc.strerror or str(exc)
        return why

    # -- groups and users -------------------------------------------------------------------
    def _getent(self, database: str, name: str) -> Optional[List[str]]:
        code, out, _err = self.run(["getent", database, name])
        if code != 0 or not out.strip():
            return None
        return out.strip().splitlines()[0].split(":")

    def _account_change(self, argv: List[str], database: str, name: str) -> Optional[str]:
        """Run groupadd/useradd/usermod; tolerate another process making the same account at
        the same time (hosts sharing /etc/passwd), and retry while the files are locked."""
        for attempt in range(_ACCOUNT_LOCK_RETRIES):
            code, out, err = self.run(argv)
            if code == 0:
                return None
            if argv[0] in ("useradd", "groupadd") and self._getent(database, name) is not None:
                return None
            if "lock" not in (err + out).lower() or attempt == _ACCOUNT_LOCK_RETRIES - 1:
                return "%s failed (status %d): %s" % (argv[0], code, _last_line(err, out))
            time.sleep(0.2 * (attempt + 1))
        return None

    def groups(self, names: List[str]) -> None:
        wanted = list(names)
        system_groups = set()
        for user in self.plan.users:
            if user.group and user.group not in wanted:
                wanted.append(user.group)
                if user.system:
                    system_groups.add(user.group)
        for name in wanted:
            if not _ACCOUNT_NAME.match(name):
                self.item("group", name, FAILED, "group: %r is not a valid group name" % name)
                continue
            if self._getent("group", name) is not None:
                self.item("group", name, OK, "exists")
                continue
            argv = ["groupadd"]
            if name in system_groups and self.os != "illumos":
                argv.append("--system")
            argv.append(name)
            self.differs("group", name, "created", functools.partial(self._account_change, argv, "group", name))

    def users(self, specs: List[UserSpec]) -> None:
        for spec in specs:
            name = spec.name
            if not _ACCOUNT_NAME.match(name):
                self.item("user", name, FAILED, "user: %r is not a valid user name" % name)
                continue
            entry = self._getent("passwd", name)
            if entry is None:
                self.differs(
                    "user",
                    name,
                    "created",
                    functools.partial(self._account_change, self._useradd_argv(spec), "passwd", name),
                )
                continue
            changes, argv = self._usermod(spec, entry)
            if not changes:
                self.item("user", name, OK, "exists")
                continue
            self.differs(
                "user", name, ", ".join(changes), functools.partial(self._account_change, argv, "passwd", name)
            )

    def _useradd_argv(self, spec: UserSpec) -> List[str]:
        argv = ["useradd"]
        if spec.system and self.os != "illumos":
            argv.append("--system")
        if spec.group:
            argv += ["-g", spec.group]
        if spec.home:
            argv += ["-d", spec.home, "-m"]
        shell = spec.shell
        if not shell and spec.system and os.path.exists(self.path("/usr/sbin/nologin")):
            shell = "/usr/sbin/nologin"  # a service account never logs in
        if shell:
            argv += ["-s", shell]
        return [*argv, spec.name]

    def _usermod(self, spec: UserSpec, entry: List[str]) -> Tuple[List[str], List[str]]:
        """What differs between an existing account and its spec, and the usermod to fix it."""
        changes: List[str] = []
        argv = ["usermod"]
        if spec.group:
            group_entry = self._getent("group", spec.group)
            if group_entry is None or (len(entry) > 3 and group_entry[2] != entry[3]):
                changes.append("primary group -> %s" % spec.group)
                argv += ["-g", spec.group]
        if spec.home and len(entry) > 5 and entry[5] != spec.home:
            changes.append("home %s -> %s" % (entry[5], spec.home))
            argv += ["-d", spec.home]
        if spec.shell and len(entry) > 6 and entry[6] != spec.shell:
            changes.append("shell %s -> %s" % (entry[6], spec.shell))
            argv += ["-s", spec.shell]
        return changes, [*argv, spec.name]

    # -- directories ------------------------------------------------------------------------
    def _account_id(self, database: str, name: Optional[str], planned: Set[str]) -> Tuple[Optional[int], Optional[str]]:
        """(numeric id or None, error or None) of a user/group given by name or number."""
        if name is None or name == "":
            return None, None
        text = str(name)
        if text.isdigit():
            return int(text), None
        entry = self._getent(database, text)
        if entry is not None and len(entry) > 2 and entry[2].isdigit():
            return int(entry[2]), None
        if self.check and text in planned:
            return -1, None  # made by this plan: "would change" is the truthful answer
        return None, "no %s named %s" % ("user" if database == "passwd" else "group", text)

    def dirs(self, specs: List[DirSpec]) -> None:
        for spec in specs:
            path = spec.path
            if not path.startswith("/") or ".." in path.split("/"):
                self.item("dir", path, FAILED, "dir: %r is not an absolute path" % path)
                continue
            uid, uerr = self._account_id("passwd", spec.owner, self.planned_users)
            gid, gerr = self._account_id("group", spec.group, self.planned_groups)
            if uerr or gerr:
                self.item("dir", path, FAILED, "dir %s: %s" % (path, uerr or gerr))
                continue
            mode = spec.mode
            real = self.path(path)
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                st = None
            if st is None:
                make = functools.partial(_make_dir, real, uid, gid, mode)
                self.differs("dir", path, "created" + _describe(spec), make)
                continue
            if not os.path.isdir(real) or os.path.islink(real):
                self.item("dir", path, FAILED, "dir %s: exists and is not a directory" % path)
                continue
            changes = []
            if uid is not None and st.st_uid != uid:
                changes.append("owner %d -> %s" % (st.st_uid, spec.owner))
            if gid is not None and st.st_gid != gid:
                changes.append("group %d -> %s" % (st.st_gid, spec.group))
            if mode is not None and (st.st_mode & 0o7777) != mode:
                changes.append("mode %04o -> %04o" % (st.st_mode & 0o7777, mode))
            if not changes:
                self.item("dir", path, OK, "as asked")
                continue
            self.differs("dir", path, ", ".join(changes), functools.partial(_fix_dir, real, uid, gid, mode))

    # -- scripts -----------------------------------------------------------------------------
    def scripts(self, specs: List[ScriptSpec]) -> None:
        for spec in specs:
            path = spec.path
            name = spec.name or path
            real = self.path(path)
            try:
                with open(real, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
            except OSError:
                self.item("script", name, FAILED, "script %s: %s not found (run flinger sync first?)" % (name, path))
                continue
            if spec.sha256 and digest != spec.sha256:
                self.item(
                    "script",
                    name,
                    FAILED,
                    "script %s: %s differs from the client's copy (run flinger sync first)" % (name, path),
                )
                continue
            if self.check:
                self.item("script", name, WOULD_CHANGE, "would run (a script cannot be checked)")
                continue
            cwd = self.path(spec.cwd) if spec.cwd else os.path.dirname(real)
            code, out, err = self.run(["sh", real], None, cwd)
            if code == 0:
                self.item("script", name, CHANGED, "ran")
                continue
            for line in (out + err).splitlines()[-20:]:
                events.say(line)
            self.item(
                "script", name, FAILED, "script %s exited with status %d: %s" % (name, code, _last_line(err, out))
            )


def _apt_unknown(text: str) -> List[str]:
    found = []  # type: List[str]
    for pattern in _APT_UNKNOWN:
        found.extend(pattern.findall(text))
    return found


def _describe(spec: DirSpec) -> str:
    parts = []
    if spec.owner is not None:
        parts.append("owner %s" % spec.owner)
    if spec.group is not None:
        parts.append("group %s" % spec.group)
    if spec.mode is not None:
        parts.append("mode %04o" % spec.mode)
    return " (%s)" % ", ".join(parts) if parts else ""


def _fix_dir(path: str, uid: Optional[int], gid: Optional[int], mode: Optional[int]) -> Optional[str]:
    try:
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None:
            os.chmod(path, mode)
    except OSError as exc:
        return "dir %s: %s" % (path, exc.strerror or exc)
    return None


def _make_dir(path: str, uid: Optional[int], gid: Optional[int], mode: Optional[int]) -> Optional[str]:
    try:
        os.makedirs(path, mode=0o755 if mode is None else mode)
    except OSError as exc:
        return "dir %s: %s" % (path, exc.strerror or exc)
    return _fix_dir(path, uid, gid, mode)  # chmod again: makedirs' mode is filtered by the umask


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _write_text_atomic(path: str, content: str, mode: int) -> Optional[str]:
    """Write via a temporary file in the same directory and rename; None or the error."""
    try:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".flinger-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        return "file %s: %s" % (path, exc.strerror or exc)
    return None


def run(plan: PrereqsPlan) -> PrereqsResult:
    """The `prereqs` command."""
    return Prereqs(plan).apply()
