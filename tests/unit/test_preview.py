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
    assert diff["overlay"] == {"added": ["b.conf"], "changed": ["a.conf"], "removed": ["old.conf"]}
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
    assert diff["overlay"] == {"added": [], "changed": [], "removed": []} and "overlay not compared" in diff_line(diff)
