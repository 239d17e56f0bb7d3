"""The deployment CA and per-server certificates (flinger/secrets/ca.py)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from flinger.errors import FlingerError
from flinger.secrets import ca as calib


@pytest.fixture(scope="module")
def authority() -> calib.CertifiedKey:
    return calib.create_ca("demo")


def test_ca_is_a_self_signed_p256_ca_with_pathlen_0_for_10_years(authority: calib.CertifiedKey) -> None:
    cert = authority.cert
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert isinstance(authority.key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer
    assert calib.signed_by(cert, cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lifetime < datetime.timedelta(days=3651)
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_server_cert_chains_to_the_ca_and_carries_name_and_ip(authority: calib.CertifiedKey) -> None:
    pair = calib.issue_server_cert(authority, "node1", "10.0.0.11", deployment="demo")
    assert calib.chains_to(pair.cert, authority.cert)
    assert calib.key_matches_cert(pair.key, pair.cert)
    san = pair.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.11")]
    eku = pair.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not pair.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = pair.cert.not_valid_after_utc - pair.cert.not_valid_before_utc
    assert datetime.timedelta(days=729) < lifetime < datetime.timedelta(days=731)


def test_hostname_address_becomes_a_dns_name(authority: calib.CertifiedKey) -> None:
    pair = calib.issue_server_cert(authority, "web", "web1.example.net", deployment="demo")
    assert calib.cert_sans(pair.cert) == ["web", "web1.example.net"]
    same = calib.issue_server_cert(authority, "web1.example.net", "web1.example.net", deployment="demo")
    assert calib.cert_sans(same.cert) == ["web1.example.net"]
    v6 = calib.issue_server_cert(authority, "n6", "fd00::1", deployment="demo")
    assert calib.cert_sans(v6.cert) == ["n6", "fd00::1"]


def test_another_ca_or_key_does_not_match(authority: calib.CertifiedKey) -> None:
    other = calib.create_ca("other")
    pair = calib.issue_server_cert(authority, "node1", "10.0.0.11", deployment="demo")
    stranger = calib.issue_server_cert(other, "node1", "10.0.0.11", deployment="other")
    assert not calib.chains_to(pair.cert, other.cert)
    assert not calib.signed_by(stranger.cert, authority.cert)
    assert not calib.key_matches_cert(stranger.key, pair.cert)
    # a server certificate cannot act as a CA
    assert not calib.chains_to(stranger.cert, pair.cert)


def test_reissue_reasons(authority: calib.CertifiedKey) -> None:
    pair = calib.issue_server_cert(authority, "node1", "10.0.0.11", deployment="demo")
    assert calib.reissue_reason(pair, authority.cert, "node1", "10.0.0.11") is None
    assert "address" in (calib.reissue_reason(pair, authority.cert, "node1", "10.0.0.12") or "")
    other = calib.create_ca("demo")
    assert "CA" in (calib.reissue_reason(pair, other.cert, "node1", "10.0.0.11") or "")
    late = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=720)
    assert "expires" in (calib.reissue_reason(pair, authority.cert, "node1", "10.0.0.11", now=late) or "")
    swapped = calib.CertifiedKey(authority.key, pair.cert)
    assert "key" in (calib.reissue_reason(swapped, authority.cert, "node1", "10.0.0.11") or "")


def test_pem_round_trip_and_private_modes(tmp_path: Path, authority: calib.CertifiedKey) -> None:
    key_path, cert_path = tmp_path / "ca" / "ca.key", tmp_path / "ca" / "ca.pem"
    calib.save_certified_key(authority, key_path, cert_path)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.parent.stat().st_mode & 0o777 == 0o700
    loaded = calib.load_certified_key(key_path, cert_path)
    assert loaded.cert == authority.cert
    assert calib.key_matches_cert(loaded.key, authority.cert)
    assert calib.cert_fingerprint(loaded.cert).startswith("SHA256:")


def test_loading_bad_pem_names_the_file_not_the_content(tmp_path: Path, authority: calib.CertifiedKey) -> None:
    key_path, cert_path = tmp_path / "k.pem", tmp_path / "c.pem"
    key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IHN0dWZm\n-----END PRIVATE KEY-----\n")
    cert_path.write_bytes(authority.cert_pem)
    with pytest.raises(FlingerError) as info:
        calib.load_certified_key(key_path, cert_path)
    assert str(key_path) in str(info.value) and "c2VjcmV0" not in str(info.value)
    other = calib.create_ca("x")
    key_path.write_bytes(other.key_pem)
    with pytest.raises(FlingerError, match="does not match"):
        calib.load_certified_key(key_path, cert_path)


def test_two_server_certs_make_a_mutual_tls_connection(tmp_path: Path, authority: calib.CertifiedKey) -> None:
    """The certificates do their job: each side verifies the other against the deployment CA,
    and the client checks the server's IP address SAN."""
    server_pair = calib.issue_server_cert(authority, "node1", "127.0.0.1", deployment="demo")
    client_pair = calib.issue_server_cert(authority, "node2", "127.0.0.2", deployment="demo")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.cert_pem)
    files = {}
    for name, pair in (("server", server_pair), ("client", client_pair)):
        calib.save_certified_key(pair, tmp_path / f"{name}.key", tmp_path / f"{name}.pem")
        files[name] = (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"))

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*files["server"])
    server_ctx.load_verify_locations(str(ca_file))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(*files["client"])
    client_ctx.load_verify_locations(str(ca_file))

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
    finally:
        thread.join(timeout=10)
        listener.close()
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert ("DNS", "node2") in peer["subjectAltName"]
