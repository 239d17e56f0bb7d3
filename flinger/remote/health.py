"""Health checks run after a service (re)starts: an http(s) GET answering 2xx, or a command
exiting 0, retried every `interval` seconds until it passes or `timeout` runs out."""

import http.client
import ssl
import subprocess
import time
import urllib.parse
from typing import Optional, Tuple

from flinger.protocol.plans import HealthSpec

_REQUEST_TIMEOUT = 5.0


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


def wait_healthy(health: Optional[HealthSpec]) -> Tuple[bool, str]:
    """Retry the check until it passes or its timeout runs out."""
    if health is None:
        return True, "no health check"
    deadline = time.monotonic() + float(health.timeout)
    interval = max(float(health.interval), 0.05)
    while True:
        remaining = deadline - time.monotonic()
        passed, seen = check_once(health, min(_REQUEST_TIMEOUT, max(remaining, 0.1)))
        if passed:
            return True, seen
        if time.monotonic() + interval > deadline:
            return False, seen
        time.sleep(interval)
