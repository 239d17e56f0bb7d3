"""The overlay's planners: from what the state keeps and what the topology and manifest ask,
what each piece of secret material is to be. Pure: they read loaded state and return
decisions (and what to say about them); nothing here writes.

- `plan_ca`: keep the deployment CA, or make one (first run, `--rotate`);
- `plan_certs`: keep each server's certificate, or issue one (new server, new address, new CA);
- `plan_secrets`: each secret's value per server (kept, made, shared by a deployment scope);
- `plan_split`: keep the threshold split, re-split the same secret (servers or threshold
  changed), or split a new one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from flinger.errors import UsageError
from flinger.manifest.model import Manifest, SecretSpec
from flinger.overlay.state import (
    SECRET,
    SplitState,
    StateReader,
    load_ca,
    load_kept_secret,
    load_secrets,
    load_server_cert,
    load_split,
)
from flinger.remote import shamir
from flinger.secrets.ca import CertifiedKey, create_ca, issue_server_cert, reissue_reason
from flinger.topology.model import Server, Topology

SHARED = "*"  # the key of a deployment-scoped secret's one value in secrets.json
_LIST_AT_MOST = 10  # names listed in one message before "and N more"


def _new_deployment_secret() -> int:
    """The random source of deployment secrets (tests replace it with a known value)."""
    return shamir.random_secret()


def _new_token(nbytes: int) -> str:
    """The random source of per-server secrets, as hex (tests replace it)."""
    return secrets.token_hex(nbytes)


def names_of(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_AT_MOST])
    more = len(names) - _LIST_AT_MOST
    return f"{shown} and {more} more" if more > 0 else shown


def plan_ca(topology: Topology, state: StateReader, *, rotate: bool, messages: list[str]) -> CertifiedKey:
    ca = None if rotate else load_ca(state)
    if ca is None:
        ca = create_ca(topology.name)
        messages.append(
            "rotated: a new deployment CA; every server gets a new certificate"
            if rotate
            else "made a new deployment CA"
        )
    return ca


def plan_certs(
    topology: Topology,
    state: StateReader,
    ca: CertifiedKey,
    servers: list[Server],
    *,
    rotate: bool,
    messages: list[str],
) -> dict[str, CertifiedKey]:
    certs: dict[str, CertifiedKey] = {}
    reissued: list[str] = []
    for s in servers:
        pair = None if rotate else load_server_cert(state, s.name)
        reason = None if pair is None else reissue_reason(pair, ca.cert, s.name, s.addr)
        if pair is None or reason is not None:
            if reason is not None:
                reissued.append(f"{s.name} ({reason})")
            pair = issue_server_cert(ca, s.name, s.addr, deployment=topology.name)
        certs[s.name] = pair
    if reissued:
        messages.append(f"re-issued the certificate of {names_of(reissued)}")
    return certs


@dataclass
class SecretValues:
    """Each secret's value per server, and what the state keeps of them (a deployment-wide
    value once, under "*")."""

    values: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    stored: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def sensitive(self) -> list[str]:
        return [v for per in self.stored.values() for v in per.values()]


def plan_secrets(manifest: Manifest, state: StateReader, servers: list[Server], *, rotate: bool) -> SecretValues:
    stored = load_secrets(state)
    old_values = {} if rotate else stored
    planned = SecretValues()
    for spec in manifest.secrets.values():
        if spec.given:
            values, kept = _given(spec, stored.get(spec.name, {}), servers)
        else:
            values, kept = _made(spec, old_values.get(spec.name, {}), servers)
        planned.values[spec.name] = values
        planned.stored[spec.name] = kept
    return planned


def _made(spec: SecretSpec, old: dict[str, str], servers: list[Server]) -> tuple[dict[str, str], dict[str, str]]:
    """A secret flinger makes: each server's value (kept, or new), and what the state keeps."""
    values: dict[str, str] = {}
    one_value = old.get(SHARED) if spec.scope == "deployment" else None
    if spec.scope == "deployment" and (one_value is None or len(one_value) != 2 * spec.nbytes):
        one_value = _new_token(spec.nbytes)
    for s in servers:
        if s.has_any_role(spec.roles):
            value = one_value or old.get(s.name)
            if value is None or len(value) != 2 * spec.nbytes:
                value = _new_token(spec.nbytes)
            values[s.name] = value
    return values, ({SHARED: one_value} if one_value is not None else values)


def _given(spec: SecretSpec, old: dict[str, str], servers: list[Server]) -> tuple[dict[str, str], dict[str, str]]:
    """A secret issued elsewhere (`flinger secret set`): its value for each server that needs it."""
    values: dict[str, str] = {}
    for s in servers:
        if s.has_any_role(spec.roles):
            value = old.get(s.name, old.get(SHARED))
            if value is None:
                raise UsageError(
                    f"secret {spec.name} is given from outside and has no value"
                    + (f" for {s.name}" if old else "")
                    + f": run `flinger secret set {spec.name}`"
                    + (f" --server {s.name}" if spec.scope == "server" and old else "")
                )
            values[s.name] = value
    return values, dict(old)


@dataclass
class Split:
    state: SplitState | None
    secret: int | None = field(default=None, repr=False)
    messages: list[str] = field(default_factory=list)


def plan_split(topology: Topology, state: StateReader, names: tuple[str, ...], *, rotate: bool) -> Split:
    """Keep the current split, re-split the same secret, or make a new one."""
    n, t = len(names), topology.deployment.threshold
    old = None if rotate else load_split(state)
    kept = None if rotate else load_kept_secret(state)
    if n == 1:
        message = (
            f"only one deployment server ({names[0]}): no secret shares were made, since a "
            "threshold secret needs at least two servers to hold shares"
        )
        if old is not None:
            message += "; the previous split stays in the state for when servers are added back"
            return Split(old, old.recover(), [message])
        return Split(None, kept, [message])
    if old is not None and old.servers == names and old.threshold == t and set(old.shares) == set(names):
        if len(old.commitments) == t:
            return Split(old, None)
    plan = Split(None)
    secret = old.recover() if old is not None else None
    if old is not None and secret is not None:
        plan.messages.append(_resplit_message(old, names, t))
    elif old is not None:
        plan.messages.append("the stored shares do not recover the committed secret: made a new deployment secret")
    if secret is None and kept is not None:
        secret = kept
        plan.messages.append(f"split the deployment secret kept in {state.where(SECRET)}")
    if secret is None:
        secret = _new_deployment_secret()
        what = "rotated: a new" if rotate else "made a new"
        plan.messages.append(f"{what} deployment secret, split into {n} shares; any {t} recover it")
    commitments, shares = shamir.split(secret, n, t)
    plan.state = SplitState(
        deployment=topology.name,
        threshold=t,
        servers=names,
        commitments=tuple(commitments),
        shares={names[i - 1]: v for i, v in shares},
        fingerprint=shamir.fingerprint(secret),
    )
    plan.secret = secret
    return plan


def _resplit_message(old: SplitState, names: tuple[str, ...], t: int) -> str:
    changes = []
    added = [s for s in names if s not in old.servers]
    removed = [s for s in old.servers if s not in names]
    if added:
        changes.append(f"added {names_of(added)}")
    if removed:
        changes.append(f"removed {names_of(removed)}")
    if old.threshold != t:
        changes.append(f"threshold {old.threshold} -> {t}")
    if not changes:
        changes.append("the server order changed")
    return (
        f"re-split the deployment secret into {len(names)} shares, threshold {t} "
        f"({'; '.join(changes)}); the secret itself is unchanged: every server needs its new share"
    )
