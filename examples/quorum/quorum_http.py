"""The quorum service's HTTPS endpoints: GET /status for anyone, GET /share for clients with a
certificate from the deployment CA."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from quorum_seal import Seal
from quorum_tls import cert_label

log = logging.getLogger("quorum")

# a client that connects and says nothing must not hold a thread for long
CLIENT_TIMEOUT = 10.0


class QuorumHandler(BaseHTTPRequestHandler):
    server_version = "quorum"
    sys_version = ""
    server: QuorumServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/status":
            self._send(200, self.server.seal.status())
        elif path == "/share":
            cert = self.connection.getpeercert()  # type: ignore[attr-defined]
            if not cert:
                # CERT_OPTIONAL: a certificate that is offered is verified during the
                # handshake, so any certificate here chains to the deployment CA
                refusal = {"error": "a client certificate from the deployment CA is required"}
                self._send(403, refusal)
                return
            log.info("share requested by %s", cert_label(cert))
            self._send(200, self.server.seal.own_share_payload())
        else:
            self._send(404, {"error": "not found"})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        # request lines only: paths carry no secrets
        log.debug("%s %s", self.address_string(), format % args)


class QuorumServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: str, port: int, context: ssl.SSLContext, seal: Seal) -> None:
        if ":" in addr:
            self.address_family = socket.AF_INET6
        self.context = context
        self.seal = seal
        super().__init__((addr, port), QuorumHandler)

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, client = self.socket.accept()
        # the handshake runs in the request's own thread (finish_request), so a slow or
        # hostile client cannot stall the accept loop
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, client

    def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
        request.settimeout(CLIENT_TIMEOUT)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            log.info("TLS handshake with %s failed: %s", client_address[0],
                     getattr(e, "reason", None) or type(e).__name__)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        # one line, no traceback: a dropped connection is not the service's failure
        log.info("request from %s ended with an error", client_address[0])
