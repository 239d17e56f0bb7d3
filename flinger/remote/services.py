"""Service managers on a server: write a service's definition, start or restart it, report
its state, stop and remove it. One class per manager (systemd, SMF, runit).

Every path a manager creates outside the install dir is returned as a `PathRecord`:
"file" (a file or link), "tree" (a directory and all under it) or "dir" (a directory removed
only if empty, e.g. /etc/sv when flinger created it), so uninstall removes exactly those.
The roots (/etc/systemd/system, /var/svc/manifest/site, /etc/sv, /etc/service) come from the
plan so tests and sandboxes can point them elsewhere.

A new manager is one class here (activate, deactivate, state, view, log_tail), one entry in
MANAGERS, and its renderer in flinger/service_render.py. `view` is what the health wait
watches: whether the manager says the service runs, whether it says it has stopped or is
restarting (a crash), and the process that runs it (a new one is a restart).
"""

import collections
import errno
import functools
import os
import subprocess
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Union

from flinger.protocol.plans import PathRecord, ServiceRoots, ServiceSpec
from flinger.remote import files

Receipt = List[PathRecord]
_RUNSV_WAIT = 30.0  # runsvdir looks at its directory every 5 seconds
LOG_LINES = 20  # of a service's own log, in a failure report
# What each manager's state() says of a service that runs: systemd, runit, SMF.
RUNNING_STATES = ("active", "run", "online")


class ServiceError(Exception):
    """A service manager command failed."""


class UnitView(NamedTuple):
    """What a service manager says of a service at one moment."""

    running: bool  # it says the service runs
    broken: bool  # it says the service stopped, failed or waits to be restarted
    pid: Optional[int]  # the process (systemd, runit) or contract (SMF) running it
    what: str  # its words, for a report: "activating (auto-restart)", "finish", ...


def systemd_view(text: str) -> UnitView:
    """`systemctl show -p ActiveState,SubState,MainPID` output as a UnitView."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    active, sub = fields.get("ActiveState", "unknown"), fields.get("SubState", "")
    pid = int(fields["MainPID"]) if fields.get("MainPID", "").isdigit() and fields["MainPID"] != "0" else None
    broken = active in ("failed", "inactive", "deactivating") or sub in ("auto-restart", "failed", "dead")
    return UnitView(active == "active" and not broken, broken, pid, "%s (%s)" % (active, sub) if sub else active)


def runit_view(text: str) -> UnitView:
    """`sv status DIR` output ("run: /etc/sv/x: (pid 12) 3s; run: log: ...") as a UnitView."""
    own = text.split(";", 1)[0].strip()
    state = own.split(":", 1)[0] if ":" in own else "unknown"
    pid = None
    if "(pid " in own:
        digits = own.split("(pid ", 1)[1].split(")", 1)[0]
        pid = int(digits) if digits.isdigit() else None
    # "down ... want up": runsv was told to start it and has not yet; "finish": it exited
    broken = state == "finish" or (state == "down" and "want up" not in own)
    return UnitView(state == "run", broken, pid, own.split(": ", 2)[-1] if state != "unknown" else own)


def smf_view(text: str) -> UnitView:
    """`svcs -H -o state,ctid FMRI` output ("online 123") as a UnitView."""
    parts = text.split()
    state = parts[0] if parts else "unknown"
    ctid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    broken = state in ("maintenance", "disabled", "degraded", "uninitialized")
    return UnitView(state == "online", broken, ctid, state)


def run(argv: List[str], check: bool = True) -> str:
    """Run a manager command; raise ServiceError with its last output line on failure."""
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError("%s: %s" % (" ".join(argv), exc)) from None
    output = done.stdout.decode("utf-8", "replace").strip()
    if check and done.returncode != 0:
        last = output.splitlines()[-1:] or [""]
        raise ServiceError("%s exited %d: %s" % (" ".join(argv), done.returncode, last[0]))
    return output


def tail_of_command(argv: List[str], lines: int = LOG_LINES, timeout: float = 60.0) -> List[str]:
    """The last `lines` lines a command prints, read as they come (a whole journal window
    is never held at once); what it said up to `timeout` when it takes longer."""
    kept: "collections.deque[str]" = collections.deque(maxlen=lines)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise ServiceError("%s: %s" % (" ".join(argv), exc)) from None
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        for raw in proc.stdout:
            kept.append(raw.decode("utf-8", "replace").rstrip("\n"))
            if time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return list(kept)


def tail_file(path: str, lines: int = LOG_LINES) -> List[str]:
    """The last `lines` lines of a log file (nothing when it is missing)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return [line.decode("utf-8", "replace") for line in data.splitlines()[-lines:]]


def _log_files_tail(service: ServiceSpec, lines: int) -> List[str]:
    found: List[str] = []
    for path in service.log_files:
        found.extend(tail_file(path, lines))
    return found[-lines:]


def _dirs(path: str, receipt: Receipt) -> None:
    created: List[str] = []
    files.make_dirs(path, created)
    receipt.extend(PathRecord(p, "dir") for p in created)


def remove_receipt(receipt: Receipt) -> None:
    """Remove what a receipt lists, innermost last-created first."""
    for entry in reversed(receipt):
        path = entry.path
        if entry.kind == "dir":
            try:
                os.rmdir(path)
            except OSError:
                pass  # not empty: something that is not ours lives there now
        else:
            files.remove_path(path)


class Systemd:
    name = "systemd"

    def __init__(self, roots: ServiceRoots) -> None:
        self.root = roots.systemd_dir

    def unit_path(self, service: str) -> str:
        return os.path.join(self.root, service + ".service")

    def activate(self, service: ServiceSpec) -> Receipt:
        receipt: Receipt = []
        _dirs(self.root, receipt)
        path = self.unit_path(service.name)
        fresh = not os.path.exists(path)
        files.write_atomic(path, service.files["unit"].encode(), 0o644)
        receipt.append(PathRecord(path, "file"))
        run(["systemctl", "daemon-reload"])
        unit = service.name + ".service"
        if fresh:
            run(["systemctl", "enable", "--now", unit])
        else:
            run(["systemctl", "enable", unit])
            run(["systemctl", "restart", unit])
        return receipt

    def deactivate(self, service: ServiceSpec) -> None:
        path = self.unit_path(service.name)
        if os.path.exists(path):
            run(["systemctl", "disable", "--now", service.name + ".service"], check=False)
            os.unlink(path)
            run(["systemctl", "daemon-reload"], check=False)

    def state(self, service: ServiceSpec) -> str:
        return run(["systemctl", "is-active", service.name + ".service"], check=False) or "unknown"

    def view(self, service: ServiceSpec) -> UnitView:
        unit = service.name + ".service"
        return systemd_view(run(["systemctl", "show", "-p", "ActiveState,SubState,MainPID", unit], check=False))

    def log_tail(self, service: ServiceSpec, lines: int = LOG_LINES, since: Optional[float] = None) -> List[str]:
        """The unit's journal (its stdout and stderr, and systemd's own lines about it),
        from `since` (a time.time()) on when given."""
        own = _log_files_tail(service, lines)
        if own:
            return own
        # The whole window since `since`, its tail kept: journalctl's own --lines, given
        # with --since, keeps the window's FIRST lines on some versions (252), the ones
        # before whatever went wrong.
        argv = ["journalctl", "--unit", service.name + ".service", "--no-pager", "--quiet", "--output", "short-iso"]
        argv += ["--since", "@%d" % int(since)] if since is not None else ["--lines", str(lines)]
        return tail_of_command(argv, lines)


class Smf:
    name = "smf"

    def __init__(self, roots: ServiceRoots) -> None:
        self.root = roots.smf_dir

    @staticmethod
    def fmri(service: str) -> str:
        return "svc:/site/%s:default" % service

    def activate(self, service: ServiceSpec) -> Receipt:
        receipt: Receipt = []
        _dirs(self.root, receipt)
        path = os.path.join(self.root, service.name + ".xml")
        fresh = not os.path.exists(path)
        files.write_atomic(path, service.files["manifest"].encode(), 0o644)
        receipt.append(PathRecord(path, "file"))
        run(["svccfg", "import", path])
        run(["svcadm", "enable", self.fmri(service.name)])
        if not fresh:
            run(["svcadm", "restart", self.fmri(service.name)])
        return receipt

    def deactivate(self, service: ServiceSpec) -> None:
        path = os.path.join(self.root, service.name + ".xml")
        run(["svcadm", "disable", "-s", self.fmri(service.name)], check=False)
        run(["svccfg", "delete", "-f", "svc:/site/%s" % service.name], check=False)
        if os.path.exists(path):
            os.unlink(path)

    def state(self, service: ServiceSpec) -> str:
        return run(["svcs", "-H", "-o", "state", self.fmri(service.name)], check=False) or "unknown"

    def view(self, service: ServiceSpec) -> UnitView:
        return smf_view(run(["svcs", "-H", "-o", "state,ctid", self.fmri(service.name)], check=False))

    def log_tail(self, service: ServiceSpec, lines: int = LOG_LINES, since: Optional[float] = None) -> List[str]:
        """The service's log_file, else the log SMF keeps for it (svcs -L)."""
        own = _log_files_tail(service, lines)
        if own:
            return own
        path = run(["svcs", "-L", self.fmri(service.name)], check=False).strip()
        return tail_file(path, lines) if path.startswith("/") else []


def runsv_ready(service_dir: str) -> bool:
    """Whether a runsv supervises service_dir: its supervise/ok fifo has a reader."""
    try:
        fd = os.open(os.path.join(service_dir, "supervise", "ok"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    os.close(fd)
    return True


def _not_ready(service_dir: str) -> bool:
    return not runsv_ready(service_dir)


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Runit:
    name = "runit"
    # files a run-script definition may hold; others in the dir (supervise/, down) are runsv's
    KNOWN_FILES = ("run", "finish", "log/run")

    def __init__(self, roots: ServiceRoots) -> None:
        self.sv_dir = roots.sv_dir
        self.service_dir = roots.service_dir

    def activate(self, service: ServiceSpec) -> Receipt:
        receipt: Receipt = []
        _dirs(self.sv_dir, receipt)
        _dirs(self.service_dir, receipt)
        directory = os.path.join(self.sv_dir, service.name)
        link = os.path.join(self.service_dir, service.name)
        fresh = not os.path.islink(link)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o755)
        receipt.append(PathRecord(directory, "tree"))
        for key in self.KNOWN_FILES:
            path = os.path.join(directory, key)
            if key in service.files:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                files.write_atomic(path, service.files[key].encode(), 0o755)
            elif os.path.exists(path):
                os.unlink(path)
        log = os.path.join(directory, "log")
        started_anew = fresh
        if not fresh and "log/run" in service.files and runsv_ready(directory) and not runsv_ready(log):
            # A log service new to a supervised service (an upgrade): runsv looks for log/
            # only when it starts. Have it exit (the service stops with it); runsvdir starts
            # a new runsv, with the log, on its next scan, and that one starts the service
            # with the new files: a restart on top would stop it again just after.
            run(["sv", "exit", directory], check=False)
            _wait_for(lambda: not runsv_ready(directory), _RUNSV_WAIT)
            started_anew = True
        if fresh:
            os.symlink(directory, link)
        receipt.append(PathRecord(link, "file"))
        watched = [directory] + ([log] if "log/run" in service.files else [])
        for path in watched:
            if not _wait_for(functools.partial(runsv_ready, path), _RUNSV_WAIT):
                raise ServiceError(
                    "no runsv picked up %s within %ds (is runsvdir running on %s?)"
                    % (path, _RUNSV_WAIT, self.service_dir)
                )
        run(["sv", "up" if started_anew else "restart", directory])
        return receipt

    def deactivate(self, service: ServiceSpec) -> None:
        directory = os.path.join(self.sv_dir, service.name)
        link = os.path.join(self.service_dir, service.name)
        supervised = [p for p in (directory, os.path.join(directory, "log")) if runsv_ready(p)]
        for path in supervised:
            run(["sv", "down", path], check=False)
        if os.path.islink(link):
            os.unlink(link)
        # tell runsv to exit itself rather than wait for runsvdir's next scan
        for path in supervised:
            run(["sv", "exit", path], check=False)
        for path in supervised:
            _wait_for(functools.partial(_not_ready, path), _RUNSV_WAIT)
        files.remove_path(directory)

    def log_tail(self, service: ServiceSpec, lines: int = LOG_LINES, since: Optional[float] = None) -> List[str]:
        """The service's log_file, else svlogd's `current` when it has a log/ service."""
        own = _log_files_tail(service, lines)
        if own:
            return own
        return tail_file(os.path.join(self.sv_dir, service.name, "log", "main", "current"), lines)

    def state(self, service: ServiceSpec) -> str:
        directory = os.path.join(self.sv_dir, service.name)
        if not runsv_ready(directory):
            return "unsupervised"
        output = run(["sv", "status", directory], check=False)
        return output.split(":", 1)[0] if output else "unknown"

    def view(self, service: ServiceSpec) -> UnitView:
        directory = os.path.join(self.sv_dir, service.name)
        if not runsv_ready(directory):
            return UnitView(False, True, None, "no runsv supervises it")
        return runit_view(run(["sv", "status", directory], check=False))


Manager = Union[Systemd, Smf, Runit]
MANAGERS: Dict[str, Callable[[ServiceRoots], Manager]] = {"systemd": Systemd, "smf": Smf, "runit": Runit}
DEFINITION_KEYS = {"systemd": ("unit",), "smf": ("manifest",), "runit": ("run",)}


def manager_for(service: ServiceSpec, roots: ServiceRoots) -> Manager:
    """The manager that runs `service` ("systemd", "smf" or "runit")."""
    if service.manager not in MANAGERS:
        raise ServiceError("unknown service manager %r" % service.manager)
    return MANAGERS[service.manager](roots)
