"""The registry's credentials and CA on the client, read from the files deploy.toml names.

A password file must be the user's alone (no group or other permission bits, like ssh's
private keys); its first line is the password. Nothing here prints a password: an error
names the file and the key that names it.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from flinger.errors import ConfigError
from flinger.protocol.codec import encode
from flinger.protocol.plans import Credential
from flinger.topology.loader import config_error
from flinger.topology.model import Topology

PULL_CREDENTIAL_FILE = "flinger/registry-pull.json"  # in each server's overlay, 0600


def _password(topology: Topology, key: str, path: Path) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise config_error(topology, key, f"{path} is not a file")
        if info.st_mode & 0o077:
            raise config_error(
                topology, key, f"{path} can be read by others (mode {info.st_mode & 0o777:o}): chmod 600 {path}"
            )
        text = path.read_bytes().decode()
    except ConfigError:
        raise
    except UnicodeDecodeError:
        raise config_error(topology, key, f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise config_error(topology, key, f"cannot read {path}: {exc.strerror}") from None
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise config_error(topology, key, f"{path}: the first line (the password) is empty")
    return password


def push_credential(topology: Topology) -> Credential | None:
    """The credential the builder pushes with, or None (a registry without auth)."""
    art = topology.artifacts
    if art.username is None or art.password_file is None:
        return None
    return Credential(art.username, _password(topology, "artifacts.password_file", art.password_file))


def pull_credential(topology: Topology) -> Credential | None:
    """The credential the servers pull with, or None."""
    art = topology.artifacts
    chosen = art.pull_credential()
    if chosen is None:
        return None
    key = "artifacts.pull_password_file" if art.pull_username is not None else "artifacts.password_file"
    return Credential(chosen[0], _password(topology, key, chosen[1]))


def pull_credential_file(topology: Topology) -> bytes | None:
    """The overlay file that carries the pull credential to a server."""
    credential = pull_credential(topology)
    return None if credential is None else (json.dumps(encode(credential), indent=1) + "\n").encode()


def ca_pem(topology: Topology) -> str | None:
    """The CA bundle that verifies the registry, checked to hold certificates."""
    path = topology.artifacts.ca
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise config_error(topology, "artifacts.ca", f"cannot read {path}: {exc.strerror}") from None
    from cryptography import x509  # its loading is no cost for the runs with no registry

    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise config_error(topology, "artifacts.ca", f"{path} holds no PEM certificate") from None
    return data.decode("ascii", "replace")
