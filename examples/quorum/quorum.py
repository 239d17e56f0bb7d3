"""The quorum service, entry point: `python3 quorum.py --config CONFIG.json`.

Serves HTTPS on its own address (GET /status for anyone, GET /share over mutual TLS), collects
its peers' threshold shares in the background, and reports itself unsealed once it holds
`threshold` shares that verify against the deployment's commitments. Standard library only,
Python 3.9+; the share math is the `shamir` module shipped next to this file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading

# the sibling modules (and shamir.py) live next to this script, wherever it is run from
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quorum_config import ConfigError, load_config
from quorum_http import QuorumServer
from quorum_peers import ShareCollector
from quorum_seal import Seal, ShareError, load_own_share
from quorum_tls import client_context, server_context

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

log = logging.getLogger("quorum")


def _setup_logging(name: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s quorum[" + name + "] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def run(config_path: str, verbose: bool = False) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        sys.stderr.write(f"quorum: {e}\n")
        return EXIT_CONFIG
    _setup_logging(config.name, verbose)
    try:
        own = load_own_share(config.share)
    except ShareError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    if own.threshold != config.threshold:
        log.error("config threshold %d differs from the share file's threshold %d",
                  config.threshold, own.threshold)
        return EXIT_CONFIG
    if config.deployment and own.deployment and config.deployment != own.deployment:
        log.error("the share file belongs to deployment %r, not %r", own.deployment,
                  config.deployment)
        return EXIT_CONFIG
    try:
        srv_ctx = server_context(config.cert, config.key, config.ca)
        cli_ctx = client_context(config.cert, config.key, config.ca)
    except (OSError, ssl.SSLError) as e:
        log.error("cannot load the TLS certificate, key or CA: %s",
                  getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
        return EXIT_CONFIG

    seal = Seal(config.name, own)
    try:
        server = QuorumServer(config.addr, config.port, srv_ctx, seal)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", config.addr, config.port, e.strerror or e)
        return EXIT_FAILED

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                               name="https", daemon=True)
    serving.start()
    log.info("serving https on %s:%d; share %d, threshold %d, %d peer(s)", config.addr,
             config.port, own.index, own.threshold, len(config.peers))
    if seal.try_unseal():
        log.info("a threshold of %d needs no peer: unsealed", own.threshold)
    collector = ShareCollector(seal, config.peers, cli_ctx, stop, config.retry_initial,
                               config.retry_max)
    collector.start()

    # the main thread only waits, so signal handlers run promptly
    while not stop.wait(1.0):
        if not serving.is_alive():
            log.error("the https server stopped unexpectedly")
            stop.set()
            server.server_close()
            return EXIT_FAILED
    server.shutdown()
    server.server_close()
    collector.join(timeout=REQUEST_TIMEOUT_GRACE)
    log.info("stopped")
    return EXIT_OK


# how long a stop waits for a peer request in flight
REQUEST_TIMEOUT_GRACE = 6.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quorum", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of the JSON config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    return run(args.config, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
