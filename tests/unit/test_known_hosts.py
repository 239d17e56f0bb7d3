"""known_hosts as operators really have it: markers, comments, hashed names, wildcards and
negations matched as OpenSSH matches them (tests/local/test_known_hosts_openssh.py checks
that against OpenSSH itself); trust only appends."""

from __future__ import annotations

from pathlib import Path

from flinger.ssh import known_hosts
from tests.known_hosts_sample import A, B, C, user_file


def test_read_tolerates_every_kind_of_line_and_says_what_it_skipped(tmp_path: Path) -> None:
    known = known_hosts.read(user_file(tmp_path))
    assert known.keys_for("10.0.0.1") == {"ssh-ed25519": A}
    assert known.keys_for("[10.0.0.3]:2222") == {"ssh-ed25519": A}  # hashed name
    assert known.keys_for("10.0.0.9") == {}  # its only key is @revoked
    assert known.is_revoked(B) and not known.is_revoked(A)
    notes = "\n".join(known.notes)
    assert ":8: not a known_hosts line" in notes and ":10: not a known_hosts line" in notes
    assert known_hosts.read(tmp_path / "missing").keys_for("10.0.0.1") == {}


def test_wildcards_negations_and_authorities(tmp_path: Path) -> None:
    known = known_hosts.read(user_file(tmp_path))
    assert known.keys_for("web1.example") == {"ssh-ed25519": A}
    assert known.keys_for("web12.example") == {}  # ? is one character
    assert known.keys_for("a.web.example") == {"ssh-ed25519": A}
    assert known.keys_for("bad.web.example") == {}  # a negation wins
    assert known.keys_for("WEB1.EXAMPLE") == {"ssh-ed25519": A}  # names are not case-sensitive
    assert [e.blob for e in known.authorities_for("db.corp.example")] == [C]
    assert known.authorities_for("old.corp.example") == []
    assert known.knows("db.corp.example") and not known.knows("db.elsewhere.example")


def test_append_keeps_every_byte_of_the_users_file(tmp_path: Path) -> None:
    path = user_file(tmp_path)
    before = path.read_bytes()
    assert known_hosts.append(path, "[10.0.0.5]:2222", "ssh-ed25519", C) is True
    after = path.read_bytes()
    assert after.startswith(before)
    assert after[len(before) :] == f"\n[10.0.0.5]:2222 ssh-ed25519 {C}\n".encode()
    assert known_hosts.append(path, "[10.0.0.5]:2222", "ssh-ed25519", C) is False  # already there
    assert path.read_bytes() == after


def test_a_hashed_line_is_found(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    known_hosts.append(path, "[10.0.0.5]:2222", "ssh-ed25519", C, hashed=True)
    line = path.read_text()
    assert line.startswith("|1|") and "10.0.0.5" not in line
    assert known_hosts.read(path).keys_for("[10.0.0.5]:2222") == {"ssh-ed25519": C}


def test_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "known_hosts"
    known_hosts.append(path, "10.0.0.5", "ssh-ed25519", C)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700


def test_replace_drops_only_that_hosts_lines_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = user_file(tmp_path)
    before = path.read_text()
    assert known_hosts.replace(path, "10.0.0.1", "ssh-ed25519", C) is True
    after = path.read_text()
    assert path.with_name("known_hosts.old").read_text() == before
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == [f"10.0.0.1 ssh-ed25519 {A}"]
    assert after.endswith(f"10.0.0.1 ssh-ed25519 {C}\n")
    assert known_hosts.read(path).keys_for("10.0.0.1") == {"ssh-ed25519": C}
    # every other line stays, in its order (the CA and @revoked lines included)
    assert after.splitlines()[:-1] == [ln for ln in before.splitlines() if ln not in removed]
