"""Health checks run after a service (re)starts: an http(s) GET answering 2xx, or a command
exiting 0, retried every `interval` seconds until it passes or `timeout` runs out."""

import http.client
import socket
import ssl
import subprocess
import time
import urllib.parse
from typing import Any, Dict, Optional, Tuple

_REQUEST_TIMEOUT = 5.0


class _VerifiedHTTPS(http.client.HTTPSConnection):
    """HTTPS that checks the certificate against `server_name` (a peer's certificate names
    the server, while the URL may use its address)."""

    def __init__(
        self, host: str, port: Optional[int], context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._context = context
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def _http_once(health: Dict[str, Any], timeout: float) -> Tuple[bool, str]:
    url = urllib.parse.urlsplit(health["url"])
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    host = url.hostname or "localhost"
    connection: http.client.HTTPConnection
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=health.get("ca") or None)
        if health.get("client_cert"):
            context.load_cert_chain(health["client_cert"], health.get("client_key"))
        connection = _VerifiedHTTPS(host, url.port, context, health.get("server_name") or host, timeout)
    elif url.scheme == "http":
        connection = http.client.HTTPConnection(host, url.port, timeout=timeout)
    else:
        return False, "unsupported health url scheme %r" % url.scheme
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, "GET %s: %s" % (health["url"], exc)
    finally:
        connection.close()
    return 200 <= status < 300, "GET %s: HTTP %d" % (health["url"], status)


def _command_once(health: Dict[str, Any], timeout: float) -> Tuple[bool, str]:
    try:
        done = subprocess.run(
            ["sh", "-c", health["command"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=max(timeout, 0.1),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "%s: timed out" % health["command"]
    last = done.stdout.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return done.returncode == 0, "%s: exit %d %s" % (health["command"], done.returncode, last[0])


def check_once(health: Dict[str, Any], timeout: float = _REQUEST_TIMEOUT) -> Tuple[bool, str]:
    """Run the check once: (passed, what was seen)."""
    if health.get("url"):
        return _http_once(health, timeout)
    if health.get("command"):
        return _command_once(health, timeout)
    return True, "no check"


def wait_healthy(health: Optional[Dict[str, Any]]) -> Tuple[bool, str]:
    """Retry the check until it passes or its timeout runs out."""
    if not health:
        return True, "no health check"
    deadline = time.monotonic() + float(health.get("timeout", 30.0))
    interval = max(float(health.get("interval", 0.5)), 0.05)
    while True:
        remaining = deadline - time.monotonic()
        passed, seen = check_once(health, min(_REQUEST_TIMEOUT, max(remaining, 0.1)))
        if passed:
            return True, seen
        if time.monotonic() + interval > deadline:
            return False, seen
        time.sleep(interval)
