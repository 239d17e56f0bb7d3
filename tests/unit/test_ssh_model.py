"""The SSH model's pure parts: the generated config (strict first, the user's, then defaults),
`ssh -G` read back, destinations, and OpenSSH's words turned into flinger's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.errors import HostKeyError, UnreachableError
from flinger.ssh.config import Hop, SshConfig, parse_g, render_config, user_config
from flinger.ssh.failures import connect_error, is_transient, lost_reason, session_refused
from flinger.topology.model import Server, SshSettings

G = """\
host web1
user deploy
hostname 10.1.2.3
port 2200
hostkeyalias web1.internal
hashknownhosts yes
userknownhostsfile ~/.ssh/known_hosts ~/.ssh/known_hosts2
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
proxyjump ops@bastion:2222,inner
proxycommand none
"""


def test_render_config_puts_the_strict_options_before_the_users_config() -> None:
    text = render_config(SshSettings(known_hosts=Path("/k h/known"), connect_timeout=7, use_ssh_config=True))
    lines = text.splitlines()
    first_include = lines.index(f"Include {user_config()}")
    for strict in ("StrictHostKeyChecking yes", "BatchMode yes", "UpdateHostKeys no", "ForwardAgent no"):
        assert lines.index(strict) < first_include
    assert lines.index('UserKnownHostsFile "/k h/known"') < first_include
    assert lines.index("ConnectTimeout 7") > lines.index("Include /etc/ssh/ssh_config")  # a default only
    assert "Include" not in render_config(SshSettings(use_ssh_config=False))
    assert "UserKnownHostsFile" not in render_config(SshSettings())  # OpenSSH's own, from ssh_config


def test_ssh_g_is_read_back() -> None:
    resolved = parse_g(G)
    assert (resolved.hostname, resolved.port, resolved.user) == ("10.1.2.3", 2200, "deploy")
    assert resolved.lookup_name == "web1.internal"  # HostKeyAlias: no port
    assert resolved.proxy_jump == ("ops@bastion:2222", "inner") and resolved.proxy_command is None
    assert resolved.hash_known_hosts and resolved.user_known_hosts[0] == Path("~/.ssh/known_hosts").expanduser()
    plain = parse_g(G.replace("hostkeyalias web1.internal\n", ""))
    assert plain.lookup_name == "[10.1.2.3]:2200"
    assert parse_g("hostname h\nport 22\n").lookup_name == "h"


def test_hops_are_parsed_as_ssh_takes_them() -> None:
    assert Hop.parse("ops@bastion:2222") == Hop("bastion", "ops", 2222)
    assert Hop.parse("bastion") == Hop("bastion")
    assert Hop.parse("[::1]:22") == Hop("::1", None, 22)
    assert Hop("bastion", "ops", 2222).argv() == ["-l", "ops", "-p", "2222", "--", "bastion"]
    assert str(Hop("b", "ops", 2222)) == "ops@b:2222"


@pytest.fixture
def config() -> SshConfig:
    made = SshConfig(SshSettings(use_ssh_config=False, connect_timeout=10))
    yield made  # type: ignore[misc]
    made.close()


def _seed(config: SshConfig, name: str = "127.0.0.9", port: int = 2222) -> Server:
    """A server whose `ssh -G` answer is known without running ssh."""
    server = Server(name="web1", addr=name, port=port)
    config._resolved[Hop.of(server)] = parse_g(f"hostname {name}\nport {port}\nuser deploy\n")
    return server


UNKNOWN = """\
No ED25519 host key is known for [127.0.0.9]:2222 and you have requested strict checking.
Host key verification failed.
"""
CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
The fingerprint for the ED25519 key sent by the remote host is
SHA256:abcDEF123.
Add correct host key in /home/u/.ssh/known_hosts to get rid of this message.
Offending ED25519 key in /home/u/.ssh/known_hosts:4
Host key for [127.0.0.9]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_host_key_failures_name_the_fix(config: SshConfig) -> None:
    server = _seed(config)
    unknown = connect_error(server, config, UNKNOWN)
    assert isinstance(unknown, HostKeyError) and "flinger trust --servers web1" in unknown.message
    hop = connect_error(server, config, UNKNOWN.replace("[127.0.0.9]:2222", "bastion.example"))
    assert "bastion.example, a jump host on the way" in hop.message and "trust --servers web1" in hop.message
    changed = connect_error(server, config, CHANGED)
    assert isinstance(changed, HostKeyError)
    assert "CHANGED" in changed.message and "SHA256:abcDEF123" in changed.message
    assert "known_hosts:4" in changed.message and "flinger trust --replace --servers web1" in changed.message
    revoked = connect_error(server, config, "The ED25519 host key for web1 is marked as revoked.\n")
    assert "@revoked" in revoked.message


@pytest.mark.parametrize(
    ("stderr", "words", "transient"),
    [
        ("Connection timed out during banner exchange\nConnection to 127.0.0.9 port 2222 timed out\n",
         "no SSH banner within 10s (timed out)", False),
        ("ssh: connect to host 127.0.0.9 port 2222: Connection timed out\n", "timed out after 10s", False),
        ("ssh: connect to host 127.0.0.9 port 2222: Connection refused\n", "connection refused", True),
        ("kex_exchange_identification: read: Connection reset by peer\n", "before the key exchange", True),
        ("Received disconnect from 127.0.0.9 port 2222:2: Too many authentication failures\n",
         "too many authentication failures", False),
        ("deploy@127.0.0.9: Permission denied (publickey).\n", "authentication failed (publickey)", False),
        ("ssh: Could not resolve hostname web3.invalid: Name or service not known\n", "cannot resolve", False),
    ],
)  # fmt: skip
def test_unreachable_failures_say_why(config: SshConfig, stderr: str, words: str, transient: bool) -> None:
    error = connect_error(_seed(config), config, stderr)
    assert isinstance(error, UnreachableError) and words in error.message
    assert error.message.startswith("web1: cannot connect to 127.0.0.9:2222: ")
    assert is_transient(stderr) is transient


def test_a_lost_connection_and_a_refused_session_are_told_apart(config: SshConfig) -> None:
    server = _seed(config)
    hop = Hop.of(server)
    assert "keepalives unanswered" in lost_reason(["Timeout, server 127.0.0.9 not responding."], config, hop)
    assert "closed the connection" in lost_reason(["Connection to 127.0.0.9 closed by remote host."], config, hop)
    assert "ended under the command" in lost_reason([], config, hop)
    refusal = "mux_client_request_session: session request failed: Session open refused by peer"
    assert session_refused([refusal]) and not session_refused(["Connection to x closed."])
