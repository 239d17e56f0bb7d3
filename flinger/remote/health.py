"""Health checks run after a service (re)starts: the service manager says it runs (and keeps
the same process) AND its probe (an http(s) GET answering 2xx, or a command exiting 0)
passes, both for the whole settle window, retried until `timeout` runs out. A unit the
manager says stopped, failed or is waiting to be restarted, or whose process changed (it
was restarted), fails at once: the probe alone could be answered by another process."""

import http.client
import ssl
import subprocess
import time
import urllib.parse
from typing import Callable, Optional, Tuple

from flinger.protocol.plans import HealthSpec
from flinger.remote.services import UnitView

_REQUEST_TIMEOUT = 5.0
SETTLE = 1.0  # seconds the unit must keep running (same process) with its probe passing
_LOOK_EVERY = 0.25  # seconds between two looks at the unit
UNIT_TIMEOUT = 20.0  # a service without a health check: seconds it may take to run


def _http_once(health: HealthSpec, timeout: float) -> Tuple[bool, str]:
    url = urllib.parse.urlsplit(health.url or "")
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    host = url.hostname or "localhost"
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=health.ca or None)
        connection = http.client.HTTPSConnection(host, url.port, timeout=timeout, context=context)
    elif url.scheme == "http":
        connection = http.client.HTTPConnection(host, url.port, timeout=timeout)
    else:
        return False, "unsupported health url scheme %r" % url.scheme
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, "GET %s: %s" % (health.url, exc)
    finally:
        connection.close()
    return 200 <= status < 300, "GET %s: HTTP %d" % (health.url, status)


def _command_once(command: str, timeout: float) -> Tuple[bool, str]:
    try:
        done = subprocess.run(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=max(timeout, 0.1),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "%s: timed out" % command
    last = done.stdout.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return done.returncode == 0, "%s: exit %d %s" % (command, done.returncode, last[0])


def check_once(health: HealthSpec, timeout: float = _REQUEST_TIMEOUT) -> Tuple[bool, str]:
    """Run the check once: (passed, what was seen)."""
    if health.url:
        return _http_once(health, timeout)
    if health.command:
        return _command_once(health.command, timeout)
    return True, "no check"


class _Wait:
    """One wait for a service to be healthy: what was seen so far."""

    def __init__(self, health: Optional[HealthSpec], unit: Optional[Callable[[], UnitView]]) -> None:
        self.health = health
        self.unit = unit
        self.start = time.monotonic()
        self.timeout = float(health.timeout) if health is not None else UNIT_TIMEOUT
        self.interval = max(float(health.interval), 0.05) if health is not None else _LOOK_EVERY
        self.pid: Optional[int] = None
        self.ok_since: Optional[float] = None
        self.next_probe = self.start
        self.seen = "not checked yet"

    def unit_problem(self) -> Optional[str]:
        """Why the unit cannot be healthy any more (stopped, failed, restarted); None while
        it runs or is still starting."""
        if self.unit is None:
            self._probe()
            return None
        view = self.unit()
        if view.broken:
            return "the service manager says it is not running: %s" % view.what
        if view.pid is not None and self.pid is not None and view.pid != self.pid:
            return "it was restarted (process %d, then %d): it keeps exiting" % (self.pid, view.pid)
        self.pid = view.pid if view.pid is not None else self.pid
        if not view.running:
            self.ok_since = None
            self.seen = "the service manager says %s" % view.what
            return None
        self._probe()
        return None

    def _probe(self) -> None:
        now = time.monotonic()
        if self.health is None:
            self.seen = "running"
            self.ok_since = self.ok_since if self.ok_since is not None else now
            return
        if now >= self.next_probe:
            remaining = self.start + self.timeout - now
            passed, self.seen = check_once(self.health, min(_REQUEST_TIMEOUT, max(remaining, 0.1)))
            self.next_probe = time.monotonic() + self.interval
            if not passed:
                self.ok_since = None
            elif self.ok_since is None:
                self.ok_since = now

    def settled(self) -> bool:
        settle = SETTLE if self.unit is not None else 0.0
        return self.ok_since is not None and time.monotonic() - self.ok_since >= settle


def wait_healthy(
    health: Optional[HealthSpec],
    unit: Optional[Callable[[], UnitView]] = None,
    say: Optional[Callable[[str], None]] = None,
) -> Tuple[bool, str]:
    """Wait until the service is healthy (see the module docstring): (healthy, what was seen).
    `unit` tells what the service manager says of it; `say` hears "waiting, 4 s of 20 s"."""
    if health is None and unit is None:
        return True, "no health check"
    wait = _Wait(health, unit)
    said = 0
    while True:
        problem = wait.unit_problem()
        if problem is not None:
            return False, problem
        if wait.settled():
            return True, wait.seen
        waited = time.monotonic() - wait.start
        if waited >= wait.timeout:
            return False, wait.seen
        if say is not None and int(waited) > said:
            said = int(waited)
            say("waiting, %d s of %d s" % (said, int(wait.timeout)))
        step = _LOOK_EVERY if unit is not None else wait.interval
        time.sleep(max(0.01, min(step, wait.start + wait.timeout - time.monotonic())))
