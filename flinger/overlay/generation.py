"""The overlay's generation: a number that grows each time `flinger overlay` changes what any
server would get, and what each generation rotated out.

`state/generation.json` (in clear: it names no value): `{"version": 1, "generation": N, "rotated": {"N": [...]}}`,
where a rotated entry names a secret whose value that generation replaced ("secret
redis_password", "the deployment secret", "the deployment CA key", "the TLS keys of node1,
node2"): names only, never a value. A fleet release records the generation its overlays come
from (engine/ledger.py); a rollback to a release of an older generation would bring back
what the generations since rotated out, and is refused unless the operator asks for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from flinger.errors import FlingerError
from flinger.overlay.state import GENERATION, load_ca, load_secrets, load_server_cert, load_split
from flinger.secrets.sealing import DamagedState

if TYPE_CHECKING:  # the planners and the CA's x509: only for making an overlay, not reading one
    from flinger.overlay.planners import SecretValues, Split
    from flinger.overlay.store import StateStore
    from flinger.secrets.ca import CertifiedKey

VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True)
class Generations:
    generation: int = 0  # 0: no overlay made yet
    rotated: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def rotated_since(self, old: int, new: int | None = None) -> list[str]:
        """What the generations after `old` (up to `new`, default the latest) rotated out."""
        last = self.generation if new is None else new
        seen: list[str] = []
        for number in sorted(self.rotated):
            if old < number <= last:
                seen += [what for what in self.rotated[number] if what not in seen]
        return seen

    def next(self, rotated: list[str]) -> Generations:
        number = self.generation + 1
        return Generations(number, {**self.rotated, **({number: tuple(rotated)} if rotated else {})})

    def to_bytes(self) -> bytes:
        doc = {
            "version": VERSION,
            "generation": self.generation,
            "rotated": {str(k): list(v) for k, v in sorted(self.rotated.items())},
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def load_generations(state: StateStore) -> Generations:
    """The stored generations (none yet: generation 0)."""
    data = state.read(GENERATION)
    if data is None:
        return Generations()
    try:
        doc = json.loads(data.decode("utf-8"))
        if doc["version"] != VERSION:
            raise ValueError(doc["version"])
        rotated = {int(k): tuple(str(w) for w in v) for k, v in doc["rotated"].items()}
        return Generations(int(doc["generation"]), rotated)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FlingerError(
            f"{state.where(GENERATION)}: malformed; restore it (git checkout) (it names no secret value)"
        ) from None


def overlays_differ(state: StateStore, plan: dict[str, dict[str, bytes]]) -> bool:
    """Whether writing `plan` would change any server's overlay (a file new, changed or gone)."""
    if set(state.overlay_names()) != set(plan):
        return True
    try:
        return any(state.overlay(server) != files for server, files in plan.items())
    except DamagedState:
        return True  # a damaged overlay is made again: a change


def advance(
    state: StateStore,
    plan: dict[str, dict[str, bytes]],
    ca: CertifiedKey,
    certs: dict[str, CertifiedKey],
    secrets: SecretValues,
    split: Split,
) -> tuple[Generations, list[str]]:
    """The generations once `plan` is written: one more when it changes any server's overlay
    (with what it rotates out), else as they are."""
    generations = load_generations(state)
    if not overlays_differ(state, plan):
        return generations, []
    rotated = rotated_out(state, ca, certs, secrets, split)
    return generations.next(rotated), rotated


def rotated_out(
    state: StateStore, ca: CertifiedKey, certs: dict[str, CertifiedKey], secrets: SecretValues, split: Split
) -> list[str]:
    """The secrets whose stored value the planned overlay replaces (names only)."""
    from flinger.overlay.planners import names_of

    found: list[str] = []
    old_ca = _quietly(lambda: load_ca(state))
    if old_ca is not None and old_ca.key_pem != ca.key_pem:
        found.append("the deployment CA key")
    new_keys = [name for name, pair in certs.items() if _key_changed(state, name, pair)]
    if new_keys:
        found.append(f"the TLS keys of {names_of(sorted(new_keys))}")
    old_split = _quietly(lambda: load_split(state))
    if old_split is not None and split.state is not None and old_split.fingerprint != split.state.fingerprint:
        found.append("the deployment secret")
    old_values = _quietly(lambda: load_secrets(state)) or {}
    for name, stored in sorted(secrets.stored.items()):
        before = old_values.get(name, {})
        if any(key in stored and stored[key] != value for key, value in before.items()):
            found.append(f"secret {name}")
    return found


def _key_changed(state: StateStore, server: str, pair: CertifiedKey) -> bool:
    old = load_server_cert(state, server)
    return old is not None and old.key_pem != pair.key_pem


def _quietly(load: Callable[[], T]) -> T | None:
    """What `load` reads; None when the stored state is unreadable (overlay says so itself)."""
    try:
        return load()
    except FlingerError:
        return None
