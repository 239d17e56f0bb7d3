"""`flinger secret verify | combine`: check share files against the public commitments, and
recover the deployment secret from at least `threshold` of them (on the client).

Messages name files, never share values; the recovered secret is shown only on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flinger.errors import FlingerError, UsageError
from flinger.overlay.state import SplitState, StatePaths, load_split
from flinger.remote import shamir
from flinger.remote.shamir import ParsedShare
from flinger.secrets.secret import Secret
from flinger.topology.model import Topology


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


def _static_check(server: str, path: Path, deployment: str, expected: SplitState | None) -> ShareCheck | ParsedShare:
    """The loaded share document, or a failed ShareCheck when it is unusable before any
    group arithmetic."""
    if not path.exists():
        return ShareCheck(server, path, None, False, "no share file: run `flinger overlay`")
    try:
        doc = shamir.load_share(str(path))
    except ValueError as e:
        return ShareCheck(server, path, None, False, str(e))
    index = doc["index"]
    if doc["deployment"] != deployment:
        return ShareCheck(server, path, index, False, f"a share of deployment {doc['deployment']}")
    if expected is not None:
        if tuple(doc["verifier"]["commitments"]) != expected.commitments:
            return ShareCheck(server, path, index, False, "its commitments are not the deployment's current ones")
        if server in expected.servers and expected.index_of(server) != index:
            return ShareCheck(server, path, index, False, "not the index this server was given")
    return doc


def verify_shares(topology: Topology, server: str | None = None) -> list[ShareCheck]:
    """Check each deployment server's `share.json` in the client's overlay (or one server's)
    against its commitments and the deployment's recorded split."""
    names = list(topology.deployment.servers)
    if server is not None:
        if server not in names:
            raise UsageError(f'no deployment server named "{server}"')
        names = [server]
    if len(topology.deployment.servers) < 2:
        raise FlingerError(f"deployment {topology.name} has a single server: it holds no secret shares")
    paths = StatePaths(topology.state_dir)
    expected = load_split(paths.split_file)
    checks: dict[str, ShareCheck] = {}
    groups: dict[tuple[int, ...], list[tuple[str, Path, ParsedShare]]] = {}
    for name in names:
        path = paths.overlay_dir / name / "share.json"
        found = _static_check(name, path, topology.name, expected)
        if isinstance(found, ShareCheck):
            checks[name] = found
        else:
            groups.setdefault(tuple(found["verifier"]["commitments"]), []).append((name, path, found))
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
        raise UsageError("name the share files to combine")
    docs: list[tuple[Path, ParsedShare]] = []
    for path in paths:
        try:
            doc = shamir.load_share(str(path))
        except ValueError as e:
            raise FlingerError(str(e)) from None
        if not shamir.verify_share(doc["index"], doc["share"], doc["verifier"]["commitments"]):
            raise FlingerError(f"{path}: the share does not match its commitments (damaged or tampered)")
        docs.append((path, doc))

    first_path, first = docs[0]
    seen: dict[int, Path] = {}
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
