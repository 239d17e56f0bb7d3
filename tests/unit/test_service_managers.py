"""The service managers' drivers (flinger/remote/services.py) without running a manager: the
commands each would run, the files it writes and the paths it records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flinger.protocol.plans import PathRecord, ServiceRoots, ServiceSpec
from flinger.remote import services


class FakeCommands:
    """Records the service-manager commands instead of running them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], check: bool = True) -> str:
        self.calls.append(argv)
        return "active"


def test_systemd_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCommands()
    monkeypatch.setattr(services, "run", fake)
    service = ServiceSpec("quorum", "systemd", {"unit": "[Service]\nExecStart=/bin/true\n"})
    manager = services.manager_for(service, ServiceRoots(systemd_dir=str(tmp_path / "systemd")))
    receipt = manager.activate(service)
    unit = tmp_path / "systemd" / "quorum.service"
    assert unit.read_text() == service.files["unit"]
    assert PathRecord(str(unit), "file") in receipt
    assert fake.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "quorum.service"]]
    fake.calls.clear()
    manager.activate(service)  # already there: restart
    assert fake.calls[-1] == ["systemctl", "restart", "quorum.service"]
    assert manager.state(service) == "active"
    fake.calls.clear()
    manager.deactivate(service)
    assert fake.calls == [["systemctl", "disable", "--now", "quorum.service"], ["systemctl", "daemon-reload"]]
    assert not unit.exists()


def test_smf_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCommands()
    monkeypatch.setattr(services, "run", fake)
    service = ServiceSpec("quorum", "smf", {"manifest": "<service_bundle/>"})
    manager = services.manager_for(service, ServiceRoots(smf_dir=str(tmp_path)))
    manager.activate(service)
    path = str(tmp_path / "quorum.xml")
    assert fake.calls == [["svccfg", "import", path], ["svcadm", "enable", "svc:/site/quorum:default"]]
    fake.calls.clear()
    manager.activate(service)
    assert fake.calls[-1] == ["svcadm", "restart", "svc:/site/quorum:default"]
    fake.calls.clear()
    manager.deactivate(service)
    assert fake.calls == [
        ["svcadm", "disable", "-s", "svc:/site/quorum:default"],
        ["svccfg", "delete", "-f", "svc:/site/quorum"],
    ]
    assert not os.path.exists(path)


def test_an_unknown_manager_is_a_service_error() -> None:
    with pytest.raises(services.ServiceError, match="unknown service manager 'upstart'"):
        services.manager_for(ServiceSpec("x", "upstart", {}), ServiceRoots())
