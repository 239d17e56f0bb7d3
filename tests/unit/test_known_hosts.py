"""known_hosts as operators really have it: markers, comments, hashed names; trust only appends."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from flinger.errors import HostKeyError
from flinger.ssh import known_hosts
from flinger.ssh.hostkeys import StrictHostKeyPolicy


def _ed25519() -> paramiko.PKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    kind, blob = raw.decode().split()[:2]
    return paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob))


A, B, C = _ed25519(), _ed25519(), _ed25519()


def user_file(tmp_path: Path) -> Path:
    hashed = paramiko.HostKeys.hash_host("[10.0.0.3]:2222")
    text = (
        "# my hosts, hand-kept\n"
        f"@cert-authority *.corp.example ssh-ed25519 {C.get_base64()}\n"
        f"10.0.0.1 ssh-ed25519 {A.get_base64()}\n"
        "\n"
        f"@revoked * ssh-ed25519 {B.get_base64()}\n"
        f"{hashed} ssh-ed25519 {A.get_base64()}\n"
        f"10.0.0.9,oldname ssh-ed25519 {B.get_base64()}\n"
        "garbage line that is not a key\n"
        "10.0.0.7 ssh-unknown-type AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n"
        f"@weird 10.0.0.1 ssh-ed25519 {C.get_base64()}"  # no final newline
    )
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path


def test_read_tolerates_every_kind_of_line_and_says_what_it_skipped(tmp_path: Path) -> None:
    known = known_hosts.read(user_file(tmp_path))
    assert known.lookup("10.0.0.1", 22) == {"ssh-ed25519": A}
    assert known.lookup("10.0.0.3", 2222) == {"ssh-ed25519": A}  # hashed name
    assert known.lookup("10.0.0.9", 22) == {}  # its only key is @revoked
    assert known.is_revoked(B) and not known.is_revoked(A)
    notes = "\n".join(known.notes)
    assert "@cert-authority lines (2) skipped" in notes
    assert ":9: not a host key" in notes and ":10: unknown marker @weird" in notes
    assert ":8:" not in notes  # an unknown key type is passed over quietly, as OpenSSH does
    assert known_hosts.read(tmp_path / "missing").lookup("10.0.0.1", 22) == {}


def test_paramiko_alone_fails_on_the_same_file(tmp_path: Path) -> None:
    """Why the tolerant reader exists: paramiko raises on the @cert-authority line."""
    with pytest.raises(paramiko.hostkeys.InvalidHostKey):
        paramiko.HostKeys().load(str(user_file(tmp_path)))


def test_a_revoked_key_is_refused_even_when_pinned(tmp_path: Path) -> None:
    path = user_file(tmp_path)
    from flinger.ssh.hostkeys import fingerprint

    policy = StrictHostKeyPolicy("node9", fingerprint(B), path, known_hosts.read(path).revoked)
    with pytest.raises(HostKeyError, match="@revoked"):
        policy.missing_host_key(paramiko.SSHClient(), "10.0.0.9", B)


def test_append_keeps_every_byte_of_the_users_file(tmp_path: Path) -> None:
    path = user_file(tmp_path)
    before = path.read_bytes()
    assert known_hosts.append(path, "10.0.0.5", 2222, C) is True
    after = path.read_bytes()
    assert after.startswith(before)
    assert after[len(before) :] == f"\n[10.0.0.5]:2222 ssh-ed25519 {C.get_base64()}\n".encode()
    assert known_hosts.append(path, "10.0.0.5", 2222, C) is False  # already there: untouched
    assert path.read_bytes() == after


def test_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "known_hosts"
    known_hosts.append(path, "10.0.0.5", 22, C)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700


def test_replace_drops_only_that_hosts_lines_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = user_file(tmp_path)
    before = path.read_text()
    assert known_hosts.replace(path, "10.0.0.1", 22, C) is True
    after = path.read_text()
    assert path.with_name("known_hosts.old").read_text() == before
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == [f"10.0.0.1 ssh-ed25519 {A.get_base64()}"]
    assert after.endswith(f"10.0.0.1 ssh-ed25519 {C.get_base64()}\n")
    assert known_hosts.read(path).lookup("10.0.0.1", 22) == {"ssh-ed25519": C}
    # every other line stays, in its order
    assert [ln for ln in after.splitlines()[:-1]] == [ln for ln in before.splitlines() if ln not in removed]
