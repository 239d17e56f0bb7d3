"""Collecting shares: a background thread that asks each peer for its share over mutual TLS,
retrying with backoff while peers are down, until the seal opens or the service stops."""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading

from quorum_config import Peer
from quorum_seal import Seal
from quorum_tls import peer_matches

log = logging.getLogger("quorum")

REQUEST_TIMEOUT = 5.0
MAX_ANSWER_BYTES = 64 * 1024


class PeerError(Exception):
    """A peer could not be asked (down, wrong certificate, bad answer); one line."""


def fetch_share(peer: Peer, context: ssl.SSLContext, timeout: float = REQUEST_TIMEOUT) -> object:
    """GET /share from a peer whose certificate must chain to our CA and name the peer."""
    conn = http.client.HTTPSConnection(peer.addr, peer.port, context=context, timeout=timeout)
    try:
        conn.connect()
        if not peer_matches(conn.sock.getpeercert(), peer.name, peer.addr):  # type: ignore[union-attr]
            raise PeerError(f"certificate does not name {peer.name} ({peer.addr})")
        conn.request("GET", "/share", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(MAX_ANSWER_BYTES + 1)
        if resp.status != 200:
            raise PeerError(f"answered HTTP {resp.status}")
        if len(body) > MAX_ANSWER_BYTES:
            raise PeerError("answer too large")
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            raise PeerError("answer is not JSON") from None
    except ssl.SSLError as e:
        raise PeerError("TLS: %s" % (e.reason or type(e).__name__)) from None
    except (OSError, http.client.HTTPException) as e:
        raise PeerError(str(e) or type(e).__name__) from None
    finally:
        conn.close()


class ShareCollector(threading.Thread):
    """Asks every peer not yet counted, round after round, until the seal opens."""

    def __init__(self, seal: Seal, peers: tuple[Peer, ...], context: ssl.SSLContext,
                 stop: threading.Event, retry_initial: float, retry_max: float) -> None:
        super().__init__(name="share-collector", daemon=True)
        self.seal = seal
        self.peers = peers
        self.context = context
        self.stop = stop
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._last_problem = {}  # type: dict[str, str]  # log each peer's problem once, not per round

    def run(self) -> None:
        delay = self.retry_initial
        while not self.stop.is_set() and not self.seal.unsealed:
            progressed = False
            for peer in self.peers:
                if self.stop.is_set() or self.seal.unsealed:
                    break
                if self.seal.has_share_of(peer.name):
                    continue
                progressed = self._ask(peer) or progressed
            if self.seal.unsealed:
                break
            if not any(not self.seal.has_share_of(p.name) for p in self.peers):
                # every peer counted and still sealed: nothing more to ask
                status = self.seal.status()
                log.warning("no peer left to ask and %d of %d shares held; staying sealed",
                            status["shares"], status["threshold"])
                break
            delay = self.retry_initial if progressed else min(delay * 2, self.retry_max)
            # jitter keeps a fleet that restarted together from asking in lockstep
            self.stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311

    def _ask(self, peer: Peer) -> bool:
        """Ask one peer; True if its share was counted."""
        try:
            answer = fetch_share(peer, self.context)
        except PeerError as e:
            self._note(peer, f"cannot get a share: {e}")
            return False
        outcome = self.seal.offer(peer.name, answer)
        if outcome.startswith("rejected"):
            self._note(peer, "share not counted ({})".format(outcome[len("rejected: "):]))
            return False
        self._last_problem.pop(peer.name, None)
        status = self.seal.status()
        log.info("counted the share of %s (%d of %d)", peer.name, status["shares"],
                 status["threshold"])
        if outcome == "unsealed":
            log.info("threshold reached: secret recovered and checked; unsealed")
        return True

    def _note(self, peer: Peer, problem: str) -> None:
        if self._last_problem.get(peer.name) != problem:
            self._last_problem[peer.name] = problem
            log.warning("peer %s: %s; will retry", peer.name, problem)
