"""Which files of a server's overlay hold no secret: those a `deploy install --dry-run` may
show as a unified diff, and a server may send back the text of (flinger/remote/inventory.py).

A rendered template holds no secret when neither it nor any template it includes, imports
or extends, however deep, names `secrets` or `peer_secrets`: the overlay's jinja2 is
sandboxed, so those two names are the only way to a secret's value (the deployment's CA
certificate, the servers and `server.vars` are not secret). An include whose name is
computed at render time cannot be followed: that template counts as holding a secret. Of
the files flinger makes itself, the certificate, the CA certificate and the verifier hold no
secret; the TLS key, the share and `secrets/*` do.

This answer is about the templates as they are now, so it is only true of an overlay made
from them: with a stale overlay nothing is called free of secrets (`stored_free_of_secrets`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import jinja2
from jinja2 import meta

from flinger.manifest.model import Manifest
from flinger.overlay.inputs import overlay_inputs
from flinger.overlay.templates import make_environment
from flinger.remote.shamir import VERIFIER_FILE
from flinger.topology.model import Server, Topology

SECRET_NAMES = frozenset({"secrets", "peer_secrets"})
MADE_WITHOUT_SECRETS = ("tls/cert.pem", "tls/ca.pem", VERIFIER_FILE)


class SecretFreeTemplates:
    """Each template's answer, worked out once for all servers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = make_environment(root)  # parsed only, as overlay parses them
        self._free: dict[str, bool] = {}

    def free(self, name: str) -> bool:
        """`name` and all it references, however deep, name no secret (False when unsure)."""
        if name not in self._free:
            self._free[name] = False  # a cycle (an error at render time) counts as a secret
            self._free[name] = self._work_out(name)
        return self._free[name]

    def _work_out(self, name: str) -> bool:
        try:
            ast = self.env.parse((self.root / name).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, jinja2.TemplateSyntaxError):
            return False
        if meta.find_undeclared_variables(ast) & SECRET_NAMES:
            return False
        referenced = list(meta.find_referenced_templates(ast))
        return None not in referenced and all(self.free(str(r)) for r in referenced)


def free_of_secrets(topology: Topology, manifest: Manifest, servers: list[Server]) -> dict[str, list[str]]:
    """Each server's overlay files (as the overlay names them) that hold no secret."""
    templates = SecretFreeTemplates(topology.source_dir)
    found: dict[str, list[str]] = {}
    for server in servers:
        names = list(MADE_WITHOUT_SECRETS)
        for pkg in manifest.packages_for(server.roles):
            names += [
                f"files/{PurePosixPath(of.dest)}"
                for of in pkg.overlay
                if server.has_any_role(of.roles) and templates.free(of.template)
            ]
        found[server.name] = sorted(set(names))
    return found


def stored_free_of_secrets(
    topology: Topology, manifest: Manifest, servers: list[Server], made_from: str | None
) -> dict[str, list[str]]:
    """free_of_secrets of the stored overlay, which the state's index says was `made_from`:
    nothing when that is not the templates as they are (stale, or from a version that did not
    say what it was made from)."""
    if made_from is None or made_from != overlay_inputs(topology, manifest):
        return {}
    return free_of_secrets(topology, manifest, servers)
