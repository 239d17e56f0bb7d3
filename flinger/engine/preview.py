"""`deploy install --dry-run`: a plan that is a diff. Each server is asked what it runs (its
`status`, with the digest of every running overlay file and service definition: one
read-only round trip, no lock), and the answer is compared with what an install would put
there: packages whose digest changes (old -> new, from the builder's build), overlay files
added, changed or removed, services that would restart or start.

An overlay file added or changed is shown as a unified diff when it holds no secret on both
sides: the client's templates say so of the new one (flinger/overlay/public.py), and the
server's receipt of the running one (an old file may hold a secret the client no longer
knows, such as a rotated password). Any other file is named only.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import TYPE_CHECKING, Any

from flinger.engine.operations import OnEveryServer
from flinger.engine.remote import into_report, run_tool
from flinger.engine.session import open_session
from flinger.errors import FlingerError
from flinger.protocol.plans import InventoryPlan
from flinger.protocol.results import OVERLAY_TEXT_LIMIT, StatusResult, definition_digest, overlay_text
from flinger.remote.services import RUNNING_STATES

if TYPE_CHECKING:
    from flinger.engine.fanout import Reporter
    from flinger.engine.plan import ServerPlan
    from flinger.engine.results import ServerResult
    from flinger.engine.run import Run
    from flinger.topology.model import Server


def server_diff(
    plan: ServerPlan, overlay: dict[str, bytes] | None, built: dict[str, str | None], status: StatusResult
) -> dict[str, Any]:
    """What an install would change on one server (pure: the plan, the overlay it would
    send (None: not opened, no identity), the builder's digests, what the server runs)."""
    old = {name: p.digest for name, p in status.packages.items()} if status.installed else {}
    packages = [
        {"name": n, "from": old.get(n), "to": built.get(n)} for n in plan.packages if old.get(n) != built.get(n)
    ]
    packages += [{"name": n, "from": old[n], "to": None} for n in sorted(old) if n not in plan.packages]
    new = {rel: hashlib.sha256(data).hexdigest() for rel, data in (overlay or {}).items()}
    was = (status.overlay or {}) if overlay is not None else {}
    files: dict[str, Any] = {
        "added": sorted(set(new) - set(was)),
        "changed": sorted(rel for rel in new if rel in was and was[rel] != new[rel]),
        "removed": sorted(set(was) - set(new)),
    }
    files["diffs"], files["not_shown"] = file_diffs(plan, overlay or {}, files, status.overlay_text)
    definitions = {s.name: definition_digest(s.files) for s in plan.services}
    redefined = sorted(n for n, d in definitions.items() if status.definitions.get(n) != d)
    changes = bool(packages or any(files.values()) or redefined or not status.installed)
    running = {s.name for s in status.services if s.state in RUNNING_STATES}
    planned = [s.name for s in plan.services]
    return {
        "installed": status.installed,
        "release": status.release,
        "packages": packages,
        "overlay": files,
        "services_redefined": redefined,
        "restart": [n for n in planned if n in running] if changes else [],
        "start": [n for n in planned if n not in running],
        "stop": sorted(s.name for s in status.services if s.name not in planned),
        "change": changes or any(n not in running for n in planned),
        "overlay_compared": overlay is not None,
    }


NO_NEWLINE = "\\ No newline at end of file"  # as diff(1) says it


def file_diffs(
    plan: ServerPlan, overlay: dict[str, bytes], files: dict[str, Any], running: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """A unified diff of each overlay file added or changed that holds no secret on both
    sides; why each other one is not shown."""
    public = set(plan.overlay_public)
    diffs: dict[str, str] = {}
    not_shown: dict[str, str] = {}
    for rel in sorted([*files["added"], *files["changed"]]):
        added = rel in files["added"]
        new = overlay_text(overlay[rel]) if rel in public else None
        old = "" if added else running.get(rel)
        if rel not in public:
            not_shown[rel] = "it may hold a secret"
        elif new is None:
            not_shown[rel] = f"not UTF-8 text of at most {OVERLAY_TEXT_LIMIT // 1024} KiB"
        elif old is None:
            not_shown[rel] = "the running file may hold a secret (or is not text, or is long)"
        else:
            before = "/dev/null" if added else f"{plan.server}:{rel} (running)"
            lines = difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), before, f"{plan.server}:{rel} (install)"
            )
            diffs[rel] = "".join(line if line.endswith("\n") else f"{line}\n{NO_NEWLINE}\n" for line in lines)
    return diffs, not_shown


def diff_line(diff: dict[str, Any]) -> str:
    """One server's diff as one line."""
    if not diff["change"]:
        return "no change" if diff["overlay_compared"] else "no change (overlay not compared)"
    parts = [] if diff["installed"] else ["first install"]
    for p in diff["packages"]:
        parts.append(f"package {p['name']} {_short(p['from'])} -> {_short(p['to'])}")
    for what in ("added", "changed", "removed"):
        if diff["overlay"][what]:
            parts.append(f"overlay {what}: {', '.join(diff['overlay'][what])}")
    for what, key in (("definition changed", "services_redefined"), ("restart", "restart"), ("start", "start")):
        if diff[key]:
            parts.append(f"{what}: {', '.join(diff[key])}")
    if diff["stop"]:
        parts.append(f"stop and remove: {', '.join(diff['stop'])}")
    if not diff["overlay_compared"]:
        parts.append("overlay not compared")
    return "; ".join(parts)


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


class Preview(OnEveryServer):
    """The dry run of `deploy install`, asked of every server (nothing is changed there)."""

    name = "preview"
    changes_servers = False

    def __init__(self, plans: list[ServerPlan], overlays: dict[str, dict[str, bytes]] | None) -> None:
        self.plans = {p.server: p for p in plans}
        self.overlays = overlays  # None: the state could not be opened (no identity)

    def on_server(self, run: Run, server: Server, report: Reporter) -> dict[str, Any]:
        session = open_session(run, server, report, step="status")
        mine = self.plans[server.name]
        overlay = None if self.overlays is None else self.overlays.get(server.name, {})
        sent = overlay or {}
        texts = {rel: hashlib.sha256(sent[rel]).hexdigest() for rel in mine.overlay_public if rel in sent}
        plan = InventoryPlan(session.install_dir, compare=True, texts=texts)
        status = run_tool(session.conn, session.tool, "status", plan, StatusResult, on_event=into_report(report))
        report.step("compare")
        try:
            built: dict[str, str | None] = {n: p.sha256 for n, p in run.store.built().items()}
        except FlingerError as exc:  # nothing built yet, or the builder unreachable: said, not fatal
            report.info(f"packages not compared: {exc.message}")
            built = {}
        diff = server_diff(mine, overlay, built, status)
        return {"diff": diff, "summary": diff_line(diff)}

    def finish(self, run: Run, results: list[ServerResult]) -> dict[str, Any]:
        """The servers an install would not change, said once."""
        unchanged = [r.server for r in results if r.details.get("diff", {}).get("change") is False]
        return {"dry_run": True, "unchanged": unchanged}
