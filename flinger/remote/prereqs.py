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

import hashlib
import os
import re
import tempfile
from typing import Callable, Dict, List, Optional

from flinger.protocol.plans import PrereqsPlan, ScriptSpec
from flinger.protocol.results import PrereqsResult
from flinger.remote import events
from flinger.remote.accounts import Accounts
from flinger.remote.prereq_items import (
    APT_LOCK_WAIT,
    APT_NAME,
    APT_UNKNOWN,
    CHANGED,
    FAILED,
    OK,
    PKG_NAME,
    SYSCTL_FILE,
    SYSCTL_KEY,
    WOULD_CHANGE,
    last_line,
    run_command,
)

__all__ = ["SYSCTL_FILE", "Prereqs", "run", "run_command"]


class Prereqs(Accounts):
    """One run of a plan on one host: looks, decides, changes (unless check), reports."""

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

    def _not_installed(
        self, kind: str, names: List[str], valid: "re.Pattern[str]", installed: Callable[[str], bool]
    ) -> List[str]:
        """The packages not installed yet (a name that is no package name fails its item)."""
        missing = []
        for name in names:
            if not valid.match(name):
                self.item(kind, name, FAILED, "%s: %r is not a valid package name" % (kind, name))
            elif installed(name):
                self.item(kind, name, OK, "installed")
            else:
                missing.append(name)
        return missing

    def packages_apt(self, names: List[str]) -> None:
        if not names:
            return
        if self.os != "debian":
            if self.os == "other":
                for name in names:
                    self.item("apt", name, FAILED, "apt: this host has no apt-get/dpkg-query")
            return  # an illumos host takes its packages from `pkg`
        missing = self._not_installed("apt", names, APT_NAME, self._apt_installed)
        if not missing:
            return
        if self.check:
            self.pending_packages.extend(missing)
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
            argv = ["apt-get", "install", "-y", "--no-install-recommends", "-o", APT_LOCK_WAIT, *todo]
            code, out, err = self.run(argv, env, None)
            if code == 0:
                for name in todo:
                    outcome[name] = None
                break
            unknown = [n for n in todo if n in _apt_unknown(out + "\n" + err)]
            if unknown and not updated:
                updated = True
                ucode, uout, uerr = self.run(["apt-get", "update", "-o", APT_LOCK_WAIT], env, None)
                if ucode != 0:
                    update_note = " (apt-get update failed: %s)" % last_line(uerr, uout)
                continue
            if not unknown:
                reason = "apt: apt-get install failed (status %d): %s" % (code, last_line(err, out))
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
        missing = self._not_installed("pkg", names, PKG_NAME, self._pkg_installed)
        if not missing:
            return
        if self.check:
            self.pending_packages.extend(missing)
            for name in missing:
                self.item("pkg", name, WOULD_CHANGE, "not installed")
            return
        errors = self._pkg_install(missing)
        for name in missing:
            if name in errors:
                self.item("pkg", name, FAILED, errors[name])
            elif self._pkg_installed(name):
                self.item("pkg", name, CHANGED, "installed")
            else:
                self.item("pkg", name, FAILED, "pkg: %s is still not installed" % name)

    def _pkg_install(self, missing: List[str]) -> Dict[str, str]:
        """Install `missing`, dropping the names pkg does not know once; name -> why it failed."""
        todo = list(missing)
        errors: Dict[str, str] = {}
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
                    errors[name] = "pkg: pkg install failed (status %d): %s" % (code, last_line(err, out))
                break
        return errors

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
        valid: Dict[str, str] = {}
        for key in sorted(wanted):
            if not SYSCTL_KEY.match(key) or ".." in key:
                self.item("sysctl", key, FAILED, "sysctl: %r is not a valid key" % key)
            else:
                valid[key] = " ".join(wanted[key].split())
        conf_path = self._sysctl_persist(valid)
        stale = self._sysctl_stale(valid)
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
                because = ": " + why if why else ""
                self.item("sysctl", key, FAILED, "sysctl: %s is still %s, not %s%s" % (key, now, valid[key], because))

    def _sysctl_persist(self, valid: Dict[str, str]) -> str:
        """Every wanted value in flinger's sysctl.d file, even those already live, so they
        survive a reboot; the file's path."""
        conf_path = self.plan.sysctl_file or SYSCTL_FILE
        content = "# Written by flinger install-prereqs; rewritten when the manifest's sysctls change.\n"
        content += "".join("%s = %s\n" % (k, v) for k, v in sorted(valid.items()))
        if _read_text(self.path(conf_path)) == content:
            self.item("file", conf_path, OK, "up to date")
        else:
            self.differs(
                "file", conf_path, "sysctl settings", lambda: _write_text_atomic(self.path(conf_path), content, 0o644)
            )
        return conf_path

    def _sysctl_stale(self, valid: Dict[str, str]) -> Dict[str, str]:
        """The keys whose live value is not the wanted one: key -> the live value."""
        stale: Dict[str, str] = {}
        for key, value in valid.items():
            current = self._sysctl_read(key)
            if current is None:
                self.item("sysctl", key, FAILED, "sysctl: no key named %s on this host" % key)
            elif current == value:
                self.item("sysctl", key, OK, "= %s" % value)
            else:
                stale[key] = current
        return stale

    def _sysctl_apply(self, conf_path: str, stale: Dict[str, str], valid: Dict[str, str]) -> str:
        """Apply the settings; returns the last error line, if any."""
        if self.which("sysctl"):
            code, out, err = self.run(["sysctl", "-p", self.path(conf_path)])
            return "" if code == 0 else last_line(err, out)
        why = ""
        for key in stale:
            try:
                with open(self.path("/proc/sys/" + key.replace(".", "/")), "w", encoding="utf-8") as handle:
                    handle.write(valid[key] + "\n")
            except OSError as exc:
                why = exc.strerror or str(exc)
        return why

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
            self.item("script", name, FAILED, "script %s exited with status %d: %s" % (name, code, last_line(err, out)))


def _apt_unknown(text: str) -> List[str]:
    found = []  # type: List[str]
    for pattern in APT_UNKNOWN:
        found.extend(pattern.findall(text))
    return found


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
