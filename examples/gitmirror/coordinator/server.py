"""Stand-in for GitMirror's coordinator/server.py: reads ./config.yaml the same way and serves
the status API on port 8089, so the example deploys and passes its health check without the
real gRPC coordinator. Replace it with the upstream coordinator directory."""

import http.server
import json
from pathlib import Path
from typing import ClassVar

STATUS_PORT = 8089


def read_config(path: Path) -> dict[str, str]:
    """The flat `key: value` lines of config.yaml (all GitMirror's config uses)."""
    config = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            config[key.strip()] = value.strip()
    return config


class StatusHandler(http.server.BaseHTTPRequestHandler):
    config: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        if self.path != "/api/status":
            self.send_error(404)
            return
        body = json.dumps({"coordinator": self.config.get("coor_ip_addr"), "workers": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    StatusHandler.config = read_config(Path("config.yaml"))
    host = StatusHandler.config["coor_ip_addr"].rpartition(":")[0]
    print(f"start rpc... (stand-in) coordinator {StatusHandler.config['coor_ip_addr']}")
    http.server.ThreadingHTTPServer((host, STATUS_PORT), StatusHandler).serve_forever()


if __name__ == "__main__":
    main()
