"""What OpenSSH's own words on stderr mean: a host key problem, an authentication failure,
a host that cannot be reached, a connection lost, a session refused.

One place turns them into flinger's errors (HostKeyError: exit 2 hint to `flinger trust`;
UnreachableError: exit 4), each naming the cause and what to do; nothing else parses ssh's
stderr.
"""

from __future__ import annotations

import re

from flinger.errors import FlingerError, HostKeyError, UnreachableError
from flinger.ssh.config import SERVER_ALIVE_COUNT, SERVER_ALIVE_INTERVAL, Hop, SshConfig
from flinger.topology.model import Server

# ssh's lines about its multiplexing: never the command's, kept out of its output.
MUX_PREFIXES = ("mux_client_", "muxclient:", "Control socket connect", "ControlSocket ")
# Lines ssh itself writes to stderr, by how they start (read only when ssh failed).
SSH_PREFIXES = (
    *MUX_PREFIXES, "ssh: connect to host",
    "ssh: Could not resolve", "Connection to ", "Shared connection to ", "Timeout, server ",
    "client_loop:", "Connection closed by ", "Connection reset by ", "kex_exchange_identification:",
    "Host key verification failed.", "Received disconnect from ", "Disconnected from ",
    "banner exchange:", "channel ", "Bad owner or permissions on ", "Load key ",
)  # fmt: skip
REFUSED = ("Session open refused by peer", "open failed: administratively prohibited", "open failed: connect failed")
TRANSIENT = (
    "Connection refused",
    "Connection reset by peer",
    "Connection closed by remote host",
    "Connection closed by ",
)
UNKNOWN_KEY = re.compile(r"No (\S+) host key is known for (\S+) and you have requested strict checking")
CHANGED_FOR = re.compile(r"Host key for (\S+) has changed and you have requested strict checking")
SENT_FINGERPRINT = re.compile(r"^(SHA256:[A-Za-z0-9+/=]+)\.?$")
OFFENDING = re.compile(r"Offending (\S+) key in (\S+):(\d+)")
REVOKED = re.compile(r"The (\S+) host key for (\S+) is marked as revoked")


def is_mux_line(line: str) -> bool:
    return line.startswith(MUX_PREFIXES)


def is_ssh_line(line: str) -> bool:
    return line.startswith(SSH_PREFIXES)


def session_refused(ssh_lines: list[str]) -> bool:
    return any(marker in line for line in ssh_lines for marker in REFUSED)


def is_transient(stderr: str) -> bool:
    """A failure worth another try: the host refused or reset the connection (restarting,
    sshd's MaxStartups), never a timeout, a host key or an authentication failure."""
    if "Host key verification failed" in stderr or "Permission denied" in stderr:
        return False
    return any(marker in stderr for marker in TRANSIENT) or "kex_exchange_identification" in stderr


def connect_error(server: Server, config: SshConfig, stderr: str) -> FlingerError:
    """The error for a connection that could not be made, from ssh's stderr."""
    text = stderr.strip()
    hostkey = host_key_error(server, config, text)
    if hostkey is not None:
        return hostkey
    where = _where(config, Hop.of(server))
    return UnreachableError(f"{server.name}: cannot connect to {where}: {unreachable_reason(text, config)}")


def host_key_error(server: Server, config: SshConfig, text: str) -> HostKeyError | None:
    """A host key refused, with the command that fixes it (when one can), else None."""
    target = _lookup_name(config, server)
    name = server.name
    revoked = REVOKED.search(text)
    if revoked:
        return HostKeyError(
            f"{name}: the {revoked[1]} host key of {revoked[2]} is marked @revoked in known_hosts; refusing to connect"
        )
    unknown = UNKNOWN_KEY.search(text)
    if unknown:
        if target is not None and unknown[2] != target:
            return HostKeyError(
                f"{name}: unknown host key of {unknown[2]}, a jump host on the way (not in known_hosts); "
                f"if it is right, run: flinger trust --servers {name} (it trusts the hosts on the way too)"
            )
        return HostKeyError(
            f"{name}: unknown host key ({unknown[1]}) for {unknown[2]}, not in known_hosts; "
            f"if it is right, run: flinger trust --servers {name}"
        )
    changed = CHANGED_FOR.search(text)
    if changed:
        seen = next((m[1] for ln in text.splitlines() if (m := SENT_FINGERPRINT.match(ln.strip()))), "a new key")
        offending = OFFENDING.search(text)
        where = f" (known_hosts has another {offending[1]} key at {offending[2]}:{offending[3]})" if offending else ""
        return HostKeyError(
            f"{name}: host key CHANGED for {changed[1]}: the host sent {seen}{where}; refusing to connect. "
            f"If the server was really re-keyed, run: flinger trust --replace --servers {name}"
        )
    if "Certificate invalid" in text or ("certificate" in text.lower() and "Host key verification failed" in text):
        line = next((ln for ln in text.splitlines() if "ertificate" in ln), "certificate refused")
        return HostKeyError(f"{name}: host certificate refused: {line.strip()}")
    if "Host key verification failed" in text:
        return HostKeyError(f"{name}: host key verification failed: {_last(text)}")
    return None


def unreachable_reason(text: str, config: SshConfig) -> str:
    """Why a host could not be reached or logged into, in a few words with a hint."""
    timeout = max(1, int(config.settings.connect_timeout))
    rules: list[tuple[tuple[str, ...], str]] = [
        (("Too many authentication failures",),
         "too many authentication failures: the server closed the login after the keys offered "
         "(sshd's MaxAuthTries); name the key with IdentityFile and IdentitiesOnly yes in ~/.ssh/config"),
        (("Permission denied",), "authentication failed (" + _denied(text) + "): no key offered was accepted; "
         "is the key in the agent (ssh-add -l), or its IdentityFile/CertificateFile right?"),
        (("banner exchange: Connection", "Connection timed out during banner exchange"),
         f"no SSH banner within {timeout}s (timed out): the port answers but no sshd speaks"),
        (("Connection timed out", "Operation timed out"), f"timed out after {timeout}s (ConnectTimeout)"),
        (("Connection refused",), "connection refused (no sshd listening?)"),
        (("Could not resolve hostname",), "cannot resolve the host name (DNS or ~/.ssh/config HostName)"),
        (("kex_exchange_identification",), "the server closed the connection before the key exchange "
         "(sshd's MaxStartups, or a firewall)"),
        (("No route to host",), "no route to host"),
    ]  # fmt: skip
    for markers, reason in rules:
        if any(marker in text for marker in markers):
            return reason
    return _last(text) or "ssh failed without a word"


def lost_reason(ssh_lines: list[str], config: SshConfig, hop: Hop) -> str:
    """Why a connection that was up ended under a command."""
    text = "\n".join(ssh_lines)
    if "Timeout, server" in text:
        try:
            interval, count = config.resolve(hop).server_alive
        except FlingerError:
            interval, count = SERVER_ALIVE_INTERVAL, SERVER_ALIVE_COUNT
        return f"no answer for {interval * count}s (keepalives unanswered: ServerAliveInterval {interval} x {count})"
    if "closed by remote host" in text:
        return f"{_where(config, hop)} closed the connection"
    if "Broken pipe" in text or "Connection reset" in text or "read header failed" in text:
        return f"the connection to {_where(config, hop)} ended under the command"
    return _last(text) or f"the connection to {_where(config, hop)} ended under the command"


def _denied(text: str) -> str:
    match = re.search(r"Permission denied \(([^)]*)\)", text)
    return match[1] if match else "publickey"


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("@@@")]
    return lines[-1] if lines else ""


def _where(config: SshConfig, hop: Hop) -> str:
    try:
        resolved = config.resolve(hop)
    except FlingerError:
        return str(hop)
    return f"{resolved.hostname}:{resolved.port}"


def _lookup_name(config: SshConfig, server: Server) -> str | None:
    try:
        return config.resolve(Hop.of(server)).lookup_name
    except FlingerError:
        return None
