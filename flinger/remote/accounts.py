"""Groups, users and directories of the `prereqs` command: made when missing, fixed when they
differ (a user's primary group, home or shell; a directory's owner, group or mode)."""

import functools
import os
import time
from typing import List, Optional, Set, Tuple

from flinger.protocol.plans import DirSpec, UserSpec
from flinger.remote.prereq_items import ACCOUNT_LOCK_RETRIES, ACCOUNT_NAME, FAILED, OK, Changes, last_line


class Accounts(Changes):
    """The accounts and directories part of a prerequisites run."""

    def _getent(self, database: str, name: str) -> Optional[List[str]]:
        code, out, _err = self.run(["getent", database, name])
        if code != 0 or not out.strip():
            return None
        return out.strip().splitlines()[0].split(":")

    def _account_change(self, argv: List[str], database: str, name: str) -> Optional[str]:
        """Run groupadd/useradd/usermod; tolerate another process making the same account at
        the same time (hosts sharing /etc/passwd), and retry while the files are locked."""
        for attempt in range(ACCOUNT_LOCK_RETRIES):
            code, out, err = self.run(argv)
            if code == 0:
                return None
            if argv[0] in ("useradd", "groupadd") and self._getent(database, name) is not None:
                return None
            if "lock" not in (err + out).lower() or attempt == ACCOUNT_LOCK_RETRIES - 1:
                return "%s failed (status %d): %s" % (argv[0], code, last_line(err, out))
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
            if not ACCOUNT_NAME.match(name):
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
            if not ACCOUNT_NAME.match(name):
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
    def _account_id(
        self, database: str, name: Optional[str], planned: Set[str]
    ) -> Tuple[Optional[int], Optional[str], str]:
        """(numeric id or None, error or None, a note) of a user/group given by name or number."""
        if name is None or name == "":
            return None, None, ""
        text = str(name)
        if text.isdigit():
            return int(text), None, ""
        entry = self._getent(database, text)
        if entry is not None and len(entry) > 2 and entry[2].isdigit():
            return int(entry[2]), None, ""
        what = "user" if database == "passwd" else "group"
        if self.check and text in planned:
            return -1, None, ""  # made by this plan: "would change" is the truthful answer
        if self.check and self.pending_packages:
            # the real run installs the packages first; if none of them makes the account,
            # that run fails here, naming it
            return -1, None, "; no %s %s yet: expected from the packages to install (%s)" % (
                what, text, ", ".join(self.pending_packages))  # fmt: skip
        return None, "no %s named %s" % (what, text), ""

    def dirs(self, specs: List[DirSpec]) -> None:
        for spec in specs:
            path = spec.path
            if not path.startswith("/") or ".." in path.split("/"):
                self.item("dir", path, FAILED, "dir: %r is not an absolute path" % path)
                continue
            uid, uerr, unote = self._account_id("passwd", spec.owner, self.planned_users)
            gid, gerr, gnote = self._account_id("group", spec.group, self.planned_groups)
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
                self.differs("dir", path, "created" + _describe(spec) + unote + gnote, make)
                continue
            if not os.path.isdir(real) or os.path.islink(real):
                self.item("dir", path, FAILED, "dir %s: exists and is not a directory" % path)
                continue
            changes = []
            if uid is not None and st.st_uid != uid:
                changes.append("owner %d -> %s%s" % (st.st_uid, spec.owner, unote))
            if gid is not None and st.st_gid != gid:
                changes.append("group %d -> %s%s" % (st.st_gid, spec.group, gnote))
            if mode is not None and (st.st_mode & 0o7777) != mode:
                changes.append("mode %04o -> %04o" % (st.st_mode & 0o7777, mode))
            if not changes:
                self.item("dir", path, OK, "as asked")
                continue
            self.differs("dir", path, ", ".join(changes), functools.partial(_fix_dir, real, uid, gid, mode))


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
