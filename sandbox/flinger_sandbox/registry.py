"""The sandbox's OCI registry: CNCF Distribution (Debian's `docker-registry`) on a loopback
address of its own, serving TLS with a certificate from a sandbox CA and asking for a
password (htpasswd, bcrypt), as a registry of a real fleet would.

Its files live in <sandbox>/registry/ (0700): the CA (`ca.pem`, what deploy.toml's
`[artifacts] ca` names), its key and certificate, `htpasswd`, the password (`password`,
0600, what `password_file` names), `config.yml`, the blobs (`data/`) and `registry.log`. The
CA, the password and the blobs survive a restart; the registry process is recorded in
sandbox.json and stopped by `down`.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from flinger.errors import FlingerError
from flinger.secrets import ca
from flinger_sandbox.keys import write_private_file
from flinger_sandbox.net import can_bind, wait_listening
from flinger_sandbox.procs import ProcessRef, discard, spawn, terminate

PROGRAM = "/usr/bin/docker-registry"
PACKAGE = "docker-registry"
PORT = 5000
PORTS_TO_TRY = 20
USERNAME = "flinger"
REPOSITORY = "flinger/sandbox"
# `htpasswd -B`'s own default cost. Distribution checks the password on every request, so
# each request costs one bcrypt: a fleet pulling at once pays it per blob.
BCRYPT_COST = 5
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class RegistryRecord:
    """The running registry as started: where it listens and its process."""

    addr: str
    port: int
    process: ProcessRef | None = None

    @property
    def url(self) -> str:
        return f"https://{self.addr}:{self.port}"


@dataclass(frozen=True)
class RegistryFiles:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def password(self) -> Path:
        return self.directory / "password"

    @property
    def htpasswd(self) -> Path:
        return self.directory / "htpasswd"

    @property
    def config(self) -> Path:
        return self.directory / "config.yml"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def blob(self, digest: str) -> Path:
        """Where Distribution's filesystem driver keeps a blob ("sha256:<hex>")."""
        hexdigest = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def address_after(last_host: str) -> str:
    """The registry's address: the loopback address after the sandbox's last host."""
    return str(ipaddress.IPv4Address(last_host) + 1)


def _ca(files: RegistryFiles) -> ca.CertifiedKey:
    if files.ca_cert.exists() and files.ca_key.exists():
        return ca.load_certified_key(files.ca_key, files.ca_cert)
    made = ca.create_ca("sandbox registry")
    ca.save_certified_key(made, files.ca_key, files.ca_cert)
    return made


def prepare(files: RegistryFiles, addr: str, port: int) -> None:
    """The CA (kept), a certificate for `addr`, the password (kept) and its htpasswd line,
    and config.yml."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.directory.chmod(0o700)
    authority = _ca(files)
    served = ca.issue_server_cert(authority, "registry", addr, deployment="sandbox")
    write_private_file(files.key, served.key_pem.decode(), 0o600)
    write_private_file(files.cert, served.cert_pem.decode(), 0o644)
    if not files.password.exists():
        write_private_file(files.password, secrets.token_urlsafe(24) + "\n", 0o600)
    password = files.password.read_text().split("\n", 1)[0].encode()
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=BCRYPT_COST)).decode()
    write_private_file(files.htpasswd, f"{USERNAME}:{hashed}\n", 0o600)
    files.data.mkdir(mode=0o700, exist_ok=True)
    write_private_file(
        files.config,
        f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {files.data}
  delete:
    enabled: true
http:
  addr: {addr}:{port}
  secret: {secrets.token_hex(16)}
  tls:
    certificate: {files.cert}
    key: {files.key}
auth:
  htpasswd:
    realm: flinger-sandbox
    path: {files.htpasswd}
""",
        0o600,
    )


def start(files: RegistryFiles, addr: str) -> RegistryRecord:
    """Start the registry on addr (port 5000, else the next free one) and wait until it listens."""
    if not Path(PROGRAM).is_file():
        raise FlingerError(f"the sandbox registry needs CNCF Distribution: apt-get install {PACKAGE}")
    port = next((p for p in range(PORT, PORT + PORTS_TO_TRY) if can_bind(addr, p)), None)
    if port is None:
        raise FlingerError(
            f"ports {PORT}..{PORT + PORTS_TO_TRY - 1} are all taken on {addr}: the sandbox registry cannot listen there"
        )
    prepare(files, addr, port)
    proc = spawn([PROGRAM, "serve", str(files.config)], files.log, {"PATH": "/usr/bin:/bin"})
    process = ProcessRef.of(proc.pid)
    if process is None or not wait_listening(addr, port, START_TIMEOUT, lambda: proc.poll() is None):
        discard(proc)
        raise FlingerError(f"the sandbox registry did not start on {addr}:{port} (log: {files.log})")
    return RegistryRecord(addr, port, process)


def stop(record: RegistryRecord) -> list[ProcessRef]:
    """Stop the registry; the processes that survived even SIGKILL."""
    return terminate([record.process]) if record.process is not None else []


def artifacts_table(files: RegistryFiles, record: RegistryRecord) -> dict[str, Any]:
    """deploy.toml's [artifacts] for this registry."""
    return {
        "store": "registry",
        "url": record.url,
        "repository": REPOSITORY,
        "ca": str(files.ca_cert),
        "username": USERNAME,
        "password_file": str(files.password),
    }
