"""`flinger secret verify | combine | set`: check the servers' shares (in the sealed state)
against the public commitments, recover the deployment secret from at least `threshold`
shares (share files, or the servers' shares in the state), and set a secret the manifest
says is given from outside.

Messages name files and servers, never share or secret values; the recovered secret is
shown only on request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flinger.errors import FlingerError, UsageError
from flinger.manifest.model import Manifest
from flinger.overlay.planners import SHARED
from flinger.overlay.state import SECRETS, SplitState, load_secrets, load_split, secrets_to_bytes
from flinger.overlay.store import overlay_name
from flinger.remote import shamir
from flinger.remote.shamir import ParsedShare
from flinger.secrets.secret import Secret
from flinger.topology.model import Topology

if TYPE_CHECKING:
    from flinger.overlay.store import StateStore

SHARE_FILE = "share.json"


@dataclass(frozen=True)
class ShareCheck:
    """The verdict on one server's share file."""

    server: str
    path: Path
    index: int | None
    valid: bool
    reason: str | None = None  # why it is not valid

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "file": str(self.path),
            "index": self.index,
            "valid": self.valid,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CombineResult:
    """The recovered deployment secret: its fingerprint always, its value only on request."""

    deployment: str
    threshold: int
    used: tuple[tuple[str, int], ...]  # (file, share index) of the shares combined
    fingerprint: str
    secret: Secret[str] | None = None  # hex, only when `reveal` was asked for

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "deployment": self.deployment,
            "threshold": self.threshold,
            "shares": [{"file": f, "index": i} for f, i in self.used],
            "fingerprint": self.fingerprint,
        }
        if self.secret is not None:
            doc["secret"] = self.secret.reveal()
        return doc


_BATCH_FROM = 4  # below this many shares, one check per share is as quick as a batch


def _parse_share(where: str, files: dict[str, bytes] | None) -> ParsedShare:
    """A server's share from its (opened) overlay; ValueError naming where, never the value."""
    if files is None or SHARE_FILE not in files:
        raise ValueError("no share: run `flinger overlay`")
    try:
        doc = json.loads(files[SHARE_FILE].decode("utf-8"))
    except ValueError:
        raise ValueError(f"{where}: not valid JSON") from None

    def read_verifier(name: str) -> bytes:
        if name not in files:
            raise ValueError(f"{where}: no {name} beside it")
        return files[name]

    return shamir.parse_share(doc, where, read_verifier)


def _static_check(
    server: str, where: Path, files: dict[str, bytes] | None, deployment: str, expected: SplitState | None
) -> ShareCheck | ParsedShare:
    """The loaded share document, or a failed ShareCheck when it is unusable before any
    group arithmetic."""
    try:
        doc = _parse_share(str(where), files)
    except ValueError as e:
        return ShareCheck(server, where, None, False, str(e))
    index = doc["index"]
    if doc["deployment"] != deployment:
        return ShareCheck(server, where, index, False, f"a share of deployment {doc['deployment']}")
    if expected is not None:
        if tuple(doc["verifier"]["commitments"]) != expected.commitments:
            return ShareCheck(server, where, index, False, "its commitments are not the deployment's current ones")
        if server in expected.servers and expected.index_of(server) != index:
            return ShareCheck(server, where, index, False, "not the index this server was given")
    return doc


def verify_shares(topology: Topology, state: StateStore, server: str | None = None) -> list[ShareCheck]:
    """Check each deployment server's share in its sealed overlay (or one server's) against
    its commitments and the deployment's recorded split."""
    names = list(topology.deployment.servers)
    if server is not None:
        if server not in names:
            raise UsageError(f'no deployment server named "{server}"')
        names = [server]
    if len(topology.deployment.servers) < 2:
        raise FlingerError(f"deployment {topology.name} has a single server: it holds no secret shares")
    expected = load_split(state)
    checks: dict[str, ShareCheck] = {}
    groups: dict[tuple[int, ...], list[tuple[str, Path, ParsedShare]]] = {}
    for name in names:
        where = state.root / overlay_name(name)
        found = _static_check(name, where, state.overlay(name), topology.name, expected)
        if isinstance(found, ShareCheck):
            checks[name] = found
        else:
            groups.setdefault(tuple(found["verifier"]["commitments"]), []).append((name, where, found))
    for commitments, members in groups.items():
        points = [(doc["index"], doc["share"]) for _, _, doc in members]
        # One randomised check for many shares; only when it fails is each share checked
        # alone, to say which one is bad.
        all_good = len(members) >= _BATCH_FROM and shamir.verify_shares_batch(points, commitments)
        for (name, path, _doc), (index, value) in zip(members, points, strict=True):
            if all_good or shamir.verify_share(index, value, commitments):
                checks[name] = ShareCheck(name, path, index, True)
            else:
                checks[name] = ShareCheck(name, path, index, False, "the share does not match its commitments")
    return [checks[name] for name in names]


def combine_share_files(paths: list[Path], reveal: bool = False) -> CombineResult:
    """Recover the deployment secret from share files. FlingerError naming the offending file
    for an unreadable or tampered share, shares of different deployments, a repeated index,
    or fewer than `threshold` shares."""
    if not paths:
        raise UsageError("name the share files to combine, or --servers to use their shares in the state")
    docs: list[tuple[str, ParsedShare]] = []
    for path in paths:
        try:
            docs.append((str(path), shamir.load_share(str(path))))
        except ValueError as e:
            raise FlingerError(str(e)) from None
    return _combine(docs, reveal)


def combine_state_shares(state: StateStore, servers: list[str], reveal: bool = False) -> CombineResult:
    """Recover the deployment secret from the shares of `servers` in the sealed state."""
    docs: list[tuple[str, ParsedShare]] = []
    for name in servers:
        try:
            docs.append((name, _parse_share(name, state.overlay(name))))
        except ValueError as e:
            raise FlingerError(f"{name}: {e}") from None
    return _combine(docs, reveal)


def _combine(docs: list[tuple[str, ParsedShare]], reveal: bool) -> CombineResult:
    for path, doc in docs:
        if not shamir.verify_share(doc["index"], doc["share"], doc["verifier"]["commitments"]):
            raise FlingerError(f"{path}: the share does not match its commitments (damaged or tampered)")
    first_path, first = docs[0]
    seen: dict[int, str] = {}
    for path, doc in docs:
        if doc["deployment"] != first["deployment"]:
            raise FlingerError(
                f"{path}: a share of deployment {doc['deployment']}, "
                f"but {first_path} is of deployment {first['deployment']}"
            )
        if (
            doc["verifier"]["commitments"] != first["verifier"]["commitments"]
            or doc["threshold"] != first["threshold"]
            or doc["total"] != first["total"]
        ):
            raise FlingerError(
                f"{path}: its commitments differ from those of {first_path} "
                "(a share of another split of the secret, or a tampered file)"
            )
        if doc["index"] in seen:
            raise FlingerError(f"{path}: holds share {doc['index']}, as {seen[doc['index']]} does")
        seen[doc["index"]] = path

    threshold = first["threshold"]
    if len(docs) < threshold:
        raise FlingerError(f"need {threshold} valid shares of deployment {first['deployment']}, got {len(docs)}")
    chosen = docs[:threshold]  # any threshold of verified shares give the same secret
    secret = shamir.combine([(d["index"], d["share"]) for _, d in chosen])
    commitments = first["verifier"]["commitments"]
    if not shamir.check_secret(secret, commitments):
        # Every share verified, so only inconsistent commitments can get here.
        raise FlingerError(f"{first_path}: the shares do not recover the committed secret")
    return CombineResult(
        deployment=first["deployment"],
        threshold=threshold,
        used=tuple((str(p), d["index"]) for p, d in chosen),
        fingerprint=shamir.fingerprint(secret),
        secret=Secret(format(secret, "064x")) if reveal else None,
    )


def set_secret(
    manifest: Manifest, topology: Topology, state: StateStore | None, name: str, value: str, server: str | None
) -> str:
    """Store a given secret's value (for every server that needs it, or for one); what was
    done. Without a state, only check that `name` can be set."""
    spec = manifest.secrets.get(name)
    if spec is None:
        known = ", ".join(n for n, s in manifest.secrets.items() if s.given) or "none"
        raise UsageError(f'the manifest declares no secret "{name}" (secrets given from outside: {known})')
    if not spec.given:
        raise UsageError(
            f"secret {name} is made by flinger; to set it yourself, declare it with `given = true` in the manifest"
        )
    if server is not None:
        if spec.scope == "deployment":
            raise UsageError(f"secret {name} has one value for the whole deployment: leave out --server")
        if server not in topology.deployment.servers:
            raise UsageError(f'--server: no deployment server named "{server}"')
    if state is None:
        return ""
    if not value or "\0" in value or len(value) > 65536:
        raise UsageError("the value must be 1 to 65536 characters, without NUL")
    values = load_secrets(state)
    per = dict(values.get(name, {}))
    per[server or SHARED] = value
    if server is None:  # one value for all: drop any per-server ones
        per = {SHARED: value}
    values[name] = per
    state.replace(SECRETS, secrets_to_bytes(values))
    who = f"server {server}" if server else "every server that needs it"
    return f"set secret {name} for {who}; run `flinger overlay` to render it into the overlays"
