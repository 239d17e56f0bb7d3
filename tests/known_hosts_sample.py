"""A known_hosts file as an operator keeps one (comments, a CA, a revoked key, hashed names,
wildcards, negations, lines that are not keys), for the tests of flinger/ssh/known_hosts.py."""

from __future__ import annotations

from pathlib import Path

from flinger.ssh import known_hosts


def _blob() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return raw.decode().split()[1]


A, B, C = _blob(), _blob(), _blob()


def user_file(tmp_path: Path) -> Path:
    hashed = known_hosts.hashed_name("[10.0.0.3]:2222")
    text = (
        "# my hosts, hand-kept\n"
        f"@cert-authority *.corp.example,!old.corp.example ssh-ed25519 {C}\n"
        f"10.0.0.1 ssh-ed25519 {A}\n"
        "\n"
        f"@revoked * ssh-ed25519 {B}\n"
        f"{hashed} ssh-ed25519 {A}\n"
        f"10.0.0.9,oldname ssh-ed25519 {B}\n"
        "garbage line that is not a key\n"
        f"web?.example,*.web.example,!bad.web.example ssh-ed25519 {A}\n"
        f"@weird 10.0.0.1 ssh-ed25519 {C}"  # no final newline
    )
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path
