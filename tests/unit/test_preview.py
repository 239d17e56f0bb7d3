"""`deploy install --dry-run` as a diff: what an install would change on one server, from its
plan, the overlay it would get, the builder's digests and what the server said it runs."""

from __future__ import annotations

import hashlib

from flinger.engine.plan import ServerPlan
from flinger.engine.preview import diff_line, server_diff
from flinger.protocol.plans import ServiceSpec
from flinger.protocol.results import InstalledPackage, ServiceState, StatusResult, definition_digest

UNIT = {"unit": "[Service]\nExecStart=/opt/app/run\n"}


def plan(packages: list[str]) -> ServerPlan:
    return ServerPlan(
        server="node1", addr="10.0.0.1", wave=0, packages=packages, overlay_files=["a.conf", "share.json"],
        services=[ServiceSpec("app", "systemd", UNIT)], staging_dir="/s", install_dir="/opt/app",
    )  # fmt: skip


def running(overlay: dict[str, bytes], digest: str = "d1", state: str = "active") -> StatusResult:
    return StatusResult(
        installed=True,
        release="r1",
        packages={"app": InstalledPackage(digest, "/opt/app/releases/r1/app")},
        services=[ServiceState("app", "systemd", state)],
        overlay={rel: hashlib.sha256(data).hexdigest() for rel, data in overlay.items()},
        definitions={"app": definition_digest(UNIT)},
    )


FILES = {"a.conf": b"x = 1\n", "share.json": b"{}"}


def test_nothing_to_change_is_no_change() -> None:
    diff = server_diff(plan(["app"]), FILES, {"app": "d1"}, running(FILES))
    assert diff["change"] is False and diff_line(diff) == "no change" and diff["restart"] == []


def test_a_changed_file_and_package_restart_the_service_and_name_exactly_them() -> None:
    changed = {**FILES, "a.conf": b"x = 2\n", "b.conf": b"new\n"}
    diff = server_diff(plan(["app"]), changed, {"app": "d2"}, running({**FILES, "old.conf": b""}))
    files = {k: diff["overlay"][k] for k in ("added", "changed", "removed")}
    assert files == {"added": ["b.conf"], "changed": ["a.conf"], "removed": ["old.conf"]}
    assert diff["packages"] == [{"name": "app", "from": "d1", "to": "d2"}]
    assert diff["restart"] == ["app"] and diff["start"] == []
    line = diff_line(diff)
    assert "package app d1 -> d2" in line and "overlay changed: a.conf" in line and "restart: app" in line
    assert "x = 2" not in line  # names, never contents


def test_a_stopped_service_would_start_and_a_first_install_says_so() -> None:
    diff = server_diff(plan(["app"]), FILES, {"app": "d1"}, running(FILES, state="inactive"))
    assert diff["change"] is True and diff["start"] == ["app"] and diff["restart"] == []
    first = server_diff(plan(["app"]), FILES, {"app": "d1"}, StatusResult(installed=False))
    assert diff_line(first).startswith("first install") and first["start"] == ["app"]


def test_without_an_identity_the_overlay_is_not_compared() -> None:
    diff = server_diff(plan(["app"]), None, {"app": "d1"}, running(FILES))
    empty = {"added": [], "changed": [], "removed": [], "diffs": {}, "not_shown": {}}
    assert diff["overlay"] == empty and "overlay not compared" in diff_line(diff)


def test_a_file_without_secrets_on_both_sides_is_a_unified_diff_any_other_only_named() -> None:
    mine = plan(["app"])
    mine.overlay_files += ["b.conf", "c.conf", "d.conf"]
    mine.overlay_public = ["a.conf", "b.conf", "c.conf"]  # share.json and d.conf may hold secrets
    was = {**FILES, "c.conf": b"old c\n", "d.conf": b"pw = old\n"}
    new = {**FILES, "a.conf": b"x = 2\n", "b.conf": b"added\n", "c.conf": b"new c", "d.conf": b"pw = new\n",
           "share.json": b'{"v": 2}'}  # fmt: skip
    status = running(was)
    status.overlay_text = {"a.conf": "x = 1\n"}  # c.conf's receipt did not say it holds no secret
    overlay = server_diff(mine, new, {"app": "d1"}, status)["overlay"]
    assert overlay["changed"] == ["a.conf", "c.conf", "d.conf", "share.json"] and overlay["added"] == ["b.conf"]
    assert overlay["diffs"] == {
        "a.conf": "--- node1:a.conf (running)\n+++ node1:a.conf (install)\n@@ -1 +1 @@\n-x = 1\n+x = 2\n",
        "b.conf": "--- /dev/null\n+++ node1:b.conf (install)\n@@ -0,0 +1 @@\n+added\n",
    }
    assert overlay["not_shown"] == {
        "c.conf": "the running file may hold a secret (or is not text, or is long)",
        "d.conf": "it may hold a secret",
        "share.json": "it may hold a secret",
    }
    assert "pw = " not in str(overlay) and '"v": 2' not in str(overlay)


def test_a_diff_says_when_a_file_ends_without_a_newline() -> None:
    mine = plan(["app"])
    mine.overlay_public = ["a.conf"]
    status = running(FILES)
    status.overlay_text = {"a.conf": "x = 1\n"}
    diff = server_diff(mine, {**FILES, "a.conf": b"x = 1\ny = 2"}, {"app": "d1"}, status)["overlay"]["diffs"]["a.conf"]
    assert diff.endswith("+y = 2\n\\ No newline at end of file\n"), diff
