"""flinger's reading of known_hosts beside OpenSSH's own (`ssh-keygen -F`, `ssh-keygen -l`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flinger.ssh import known_hosts
from tests.known_hosts_sample import A, C, user_file


def test_matching_agrees_with_openssh(tmp_path: Path) -> None:
    """For each name, flinger finds a plain key exactly when `ssh-keygen -F` does."""
    path = user_file(tmp_path)
    known = known_hosts.read(path)
    names = ["10.0.0.1", "[10.0.0.3]:2222", "10.0.0.3", "web1.example", "web12.example", "a.web.example",
             "bad.web.example", "oldname", "nothing.example", "WEB2.example"]  # fmt: skip
    for name in names:
        proc = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True)
        openssh = any(
            not line.startswith(("#", "@")) and line.split()[2:3] == [A] for line in proc.stdout.splitlines() if line
        )
        assert bool(known.keys_for(name)) == openssh, name


def test_a_hashed_line_is_found_by_openssh(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    known_hosts.append(path, "[10.0.0.5]:2222", "ssh-ed25519", C, hashed=True)
    proc = subprocess.run(["ssh-keygen", "-F", "[10.0.0.5]:2222", "-f", str(path)], capture_output=True, text=True)
    assert C in proc.stdout and "10.0.0.5" not in path.read_text()


def test_fingerprint_is_openssh_s(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    blob = (tmp_path / "k.pub").read_text().split()[1]
    said = subprocess.run(["ssh-keygen", "-l", "-f", str(key) + ".pub"], capture_output=True, text=True).stdout
    assert known_hosts.fingerprint_of(blob) == said.split()[1]
