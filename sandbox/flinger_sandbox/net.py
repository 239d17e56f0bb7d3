"""Loopback addresses for the sandbox hosts: picking a free range and waiting for listeners."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

from flinger.errors import FlingerError

DEFAULT_FIRST_RANGE = "127.77.0.0"
RANGES_TO_TRY = 200
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def host_addresses(base_addr: str, count: int) -> list[str]:
    """Host k gets base + k + 1 (127.77.0.0 -> 127.77.0.1, 127.77.0.2, ...)."""
    try:
        base = ipaddress.IPv4Address(base_addr)
    except ValueError:
        raise FlingerError(f'"{base_addr}" is not an IPv4 address') from None
    addrs = [base + k + 1 for k in range(count)]
    if any(a not in LOOPBACK for a in addrs):
        raise FlingerError(f"sandbox addresses must stay in 127.0.0.0/8, {base_addr} + {count} does not")
    return [str(a) for a in addrs]


def is_listening(addr: str, port: int) -> bool:
    """True when something accepts TCP connections on addr:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect((addr, port))
        except OSError:
            return False
        return True


def can_bind(addr: str, port: int) -> bool:
    """True when a listener could bind addr:port now (nothing else holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
        return True


def range_is_free(addrs: list[str], port: int) -> bool:
    return all(not is_listening(a, port) and can_bind(a, port) for a in addrs)


def pick_addresses(base_addr: str | None, count: int, port: int) -> list[str]:
    """Addresses for `count` hosts: from `base_addr` if given, else the first free 127.77.X.0."""
    if base_addr is not None:
        addrs = host_addresses(base_addr, count)
        if not range_is_free(addrs, port):
            raise FlingerError(f"port {port} is already taken on one of {addrs[0]}..{addrs[-1]}")
        return addrs
    first = ipaddress.IPv4Address(DEFAULT_FIRST_RANGE)
    for k in range(RANGES_TO_TRY):
        addrs = host_addresses(str(first + 256 * k), count)
        if range_is_free(addrs, port):
            return addrs
    raise FlingerError(f"no free 127.77.X.0 range for port {port}: pass another port or base address")


def wait_listening(addr: str, port: int, timeout: float, still_starting: Callable[[], bool]) -> bool:
    """Wait until addr:port accepts connections; False on timeout or when the starter died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_listening(addr, port):
            return True
        if not still_starting():
            # One last look: the listener may have come up just as the check ran.
            return is_listening(addr, port)
        time.sleep(0.05)
    return False


def wait_not_listening(addr: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_listening(addr, port):
            return True
        time.sleep(0.05)
    return not is_listening(addr, port)
