"""TLS for the quorum service: the server and client contexts, and the check that a peer's
certificate belongs to the peer we meant to reach."""

from __future__ import annotations

import ipaddress
import ssl


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Serve with our certificate; ask for a client certificate but do not insist, so that any
    TLS client may read /status while /share can require one that chains to the deployment CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Present our certificate to peers and trust only the deployment CA. The peer's identity is
    checked after the handshake by `peer_matches` (its name or its address may be in the
    certificate, and peers are often reached by IP address)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b.strip())
    except ValueError:
        return False


def cert_identities(cert: dict) -> tuple[list[str], list[str], list[str]]:
    """(DNS names, IP addresses, common names) of a decoded certificate (getpeercert())."""
    dns, ips, cns = [], [], []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.append(value)
        elif kind == "IP Address":
            ips.append(value)
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                cns.append(value)
    return dns, ips, cns


def peer_matches(cert: dict | None, name: str, addr: str) -> bool:
    """Whether a verified certificate names the peer: its server name or its address, as a
    DNS name, an IP address or the common name. Exact matches only (no wildcards)."""
    if not cert:
        return False
    dns, ips, cns = cert_identities(cert)
    wanted = {name.lower(), addr.lower()}
    if any(d.lower() in wanted for d in dns) or any(c.lower() in wanted for c in cns):
        return True
    return any(_same_ip(addr, ip) for ip in ips)


def cert_label(cert: dict | None) -> str:
    """A short name for a client certificate, for log lines."""
    if not cert:
        return "-"
    dns, ips, cns = cert_identities(cert)
    return (cns or dns or ips or ["?"])[0]
