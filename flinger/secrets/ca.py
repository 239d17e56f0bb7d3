"""The deployment CA and per-server TLS certificates (ECDSA P-256), their PEM forms and checks.

The CA signs one certificate per server, usable for both ends of mutual TLS between servers.
Its key stays on the client: only `ca.pem` travels.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flinger.errors import FlingerError
from flinger.secrets.private_files import write_private

CA_DAYS = 3650
SERVER_DAYS = 730
RENEW_BEFORE = datetime.timedelta(days=30)  # re-issue a server cert this close to expiry
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certs start a little in the past


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(deployment: str, *, now: datetime.datetime | None = None) -> CertifiedKey:
    """A self-signed CA for `deployment` (CA:true, pathlen 0, 10 years)."""
    start = (now or _now()) - CLOCK_SKEW
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flinger"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{deployment} deployment CA"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def san_for(server_name: str, addr: str) -> list[x509.GeneralName]:
    """SANs of a server cert: the server's name as a DNS name, its address as an IP address
    (or as a DNS name when it is a host name)."""
    names: list[x509.GeneralName] = [x509.DNSName(server_name)]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(addr)))
    except ValueError:
        if addr != server_name:
            names.append(x509.DNSName(addr))
    return names


def issue_server_cert(
    ca: CertifiedKey,
    server_name: str,
    addr: str,
    *,
    deployment: str,
    now: datetime.datetime | None = None,
) -> CertifiedKey:
    """A fresh key and a 2-year certificate for one server, signed by `ca`, good for TLS
    server and client authentication."""
    start = (now or _now()) - CLOCK_SKEW
    key = _new_key()
    public = key.public_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, deployment),
            x509.NameAttribute(NameOID.COMMON_NAME, server_name),
        ]
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san_for(server_name, addr)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key_pem(data: bytes, *, what: str = "key") -> ec.EllipticCurvePrivateKey:
    """An EC private key from PEM; FlingerError naming `what` (never the content) if bad."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise FlingerError(f"{what}: not a readable unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FlingerError(f"{what}: expected an ECDSA key")
    return key


def load_cert_pem(data: bytes, *, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise FlingerError(f"{what}: not a readable PEM certificate") from None


def save_certified_key(pair: CertifiedKey, key_path: Path, cert_path: Path) -> None:
    """Write the key and the certificate (0600 each, atomically)."""
    write_private(key_path, pair.key_pem)
    write_private(cert_path, pair.cert_pem)


def load_certified_key(key_path: Path, cert_path: Path) -> CertifiedKey:
    """Read a key + certificate pair; FlingerError if unreadable or if they do not match."""
    try:
        key_data = key_path.read_bytes()
        cert_data = cert_path.read_bytes()
    except OSError as e:
        raise FlingerError(f"cannot read {e.filename}: {e.strerror}") from None
    return certified_key_from(key_data, cert_data, key_what=str(key_path), cert_what=str(cert_path))


def certified_key_from(key_data: bytes, cert_data: bytes, *, key_what: str, cert_what: str) -> CertifiedKey:
    """A key + certificate pair from their PEM bytes; FlingerError if they do not match."""
    pair = CertifiedKey(load_key_pem(key_data, what=key_what), load_cert_pem(cert_data, what=cert_what))
    if not key_matches_cert(pair.key, pair.cert):
        raise FlingerError(f"{key_what} does not match the certificate {cert_what}")
    return pair


def key_matches_cert(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    """True when `cert` certifies the public half of `key`."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when `cert` names `ca_cert` as issuer and carries a valid signature by its key."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chains_to(cert: x509.Certificate, ca_cert: x509.Certificate, *, now: datetime.datetime | None = None) -> bool:
    """True when `cert` is signed by `ca_cert`, both are valid at `now`, and `ca_cert` is a CA."""
    at = now or _now()
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return (
        constraints.ca
        and signed_by(cert, ca_cert)
        and signed_by(ca_cert, ca_cert)
        and all(c.not_valid_before_utc <= at <= c.not_valid_after_utc for c in (cert, ca_cert))
    )


def cert_sans(cert: x509.Certificate) -> list[str]:
    """The SANs of `cert` as strings (DNS names and IP addresses)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]


def cert_fingerprint(cert: x509.Certificate) -> str:
    """`SHA256:` and the hex SHA-256 of the DER certificate."""
    return "SHA256:" + cert.fingerprint(hashes.SHA256()).hex()


def reissue_reason(
    pair: CertifiedKey,
    ca_cert: x509.Certificate,
    server_name: str,
    addr: str,
    *,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why a server's existing certificate must be replaced, or None when it is still good."""
    at = now or _now()
    if not key_matches_cert(pair.key, pair.cert):
        return "its key does not match it"
    if not signed_by(pair.cert, ca_cert):
        return "it is not signed by the current CA"
    expected = sorted(str(n.value) for n in san_for(server_name, addr))
    if sorted(cert_sans(pair.cert)) != expected:
        return "the server's name or address changed"
    if pair.cert.not_valid_after_utc - at < RENEW_BEFORE:
        return "it expires within 30 days"
    return None
