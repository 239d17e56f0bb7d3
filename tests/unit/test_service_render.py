"""Service definitions rendered for systemd, SMF and runit from a manifest Service."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from flinger.errors import ConfigError
from flinger.manifest.model import HealthCheck, Service
from flinger.remote import services
from flinger.service_render import RENDERERS, render_health, render_service
from flinger.topology.model import SERVICE_MANAGERS

CONTEXT = {
    "install_dir": "/opt/quorum",
    "server": {"name": "node1", "addr": "10.0.0.11"},
    "deployment": {"name": "demo"},
    "package": {"name": "quorum"},
}


def quorum_service(tmp_path: Path, **changes: object) -> Service:
    fields: dict[str, object] = {
        "command": "/bin/sleep 1000 --addr {{ server.addr }}",
        "working_dir": str(tmp_path),
        "environment": {"QUORUM_NODE": "{{ server.name }}", "TRICKY": 'a "b" 100% $x'},
        "user": "nobody",
        "group": "nogroup",
        "restart": "always",
        "restart_sec": 2.5,
        "after": ("store",),
        "limits": {"nofile": 65536, "nproc": 512},
        "log_file": str(tmp_path / "quorum.log"),
        "health": HealthCheck(
            url="https://{{ server.addr }}:8443/status", ca="{{ install_dir }}/current/overlay/tls/ca.pem"
        ),
    }
    fields.update(changes)
    return Service(**fields)  # type: ignore[arg-type]


def test_systemd_unit_has_every_setting(tmp_path: Path) -> None:
    unit = render_service(quorum_service(tmp_path), "quorum", "systemd", CONTEXT)["unit"]
    lines = unit.splitlines()
    for expected in (
        "After=network.target store.service",
        "Type=simple",
        "User=nobody",
        "Group=nogroup",
        f"WorkingDirectory={tmp_path}",
        'Environment="QUORUM_NODE=node1"',
        'Environment="TRICKY=a \\"b\\" 100%% $x"',
        "ExecStart=/bin/sleep 1000 --addr 10.0.0.11",
        "Restart=always",
        "RestartSec=2.5",
        "LimitNOFILE=65536",
        "LimitNPROC=512",
        f"StandardOutput=append:{tmp_path}/quorum.log",
        f"StandardError=append:{tmp_path}/quorum.log",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines, expected


def test_smf_manifest_is_well_formed_with_methods(tmp_path: Path) -> None:
    xml = render_service(quorum_service(tmp_path, command="/bin/prog --rate 5%"), "quorum", "smf", CONTEXT)["manifest"]
    root = ET.fromstring(xml.split("\n", 2)[2])  # past the XML declaration and DOCTYPE
    assert root.tag == "service_bundle" and root.get("type") == "manifest"
    service = root.find("service")
    assert service is not None and service.get("name") == "site/quorum"
    methods = {m.get("name"): m.get("exec") for m in service.findall("exec_method")}
    assert methods["stop"] == ":kill"
    assert methods["start"] == f"/bin/prog --rate 5%% >>{tmp_path}/quorum.log 2>&1"
    fmris = [d.find("service_fmri").get("value") for d in service.findall("dependency")]  # type: ignore[union-attr]
    assert "svc:/milestone/network:default" in fmris and "svc:/site/store" in fmris
    context = service.find("method_context")
    assert context is not None and context.get("working_directory") == str(tmp_path)
    credential = context.find("method_credential")
    assert credential is not None and credential.get("user") == "nobody"
    env = {e.get("name"): e.get("value") for e in context.iter("envvar")}
    assert env == {"QUORUM_NODE": "node1", "TRICKY": 'a "b" 100% $x'}
    props = {p.get("name"): p.get("value") for p in service.iter("propval")}
    assert props["restart"] == "always" and props["duration"] == "child"


def test_undefined_placeholder_names_the_field(tmp_path: Path) -> None:
    service = quorum_service(tmp_path, command="/bin/q --peer {{ server.nope }}")
    with pytest.raises(ConfigError) as caught:
        render_service(service, "quorum", "systemd", CONTEXT)
    assert "services.quorum.command" in str(caught.value) and "nope" in str(caught.value)


def test_newline_in_a_field_is_refused(tmp_path: Path) -> None:
    service = quorum_service(tmp_path, command="/bin/q\nExecStartPre=/bin/evil")
    with pytest.raises(ConfigError, match="single line"):
        render_service(service, "quorum", "systemd", CONTEXT)


def test_unknown_manager_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="launchd"):
        render_service(quorum_service(tmp_path), "quorum", "launchd", CONTEXT)


def test_shipped_definition_wins_and_is_rendered(tmp_path: Path) -> None:
    shipped = tmp_path / "smf" / "quorum"
    shipped.mkdir(parents=True)
    (shipped / "manifest.xml").write_text('<service name="site/{{ service.name }}" addr="{{ server.addr }}"/>\n')
    (shipped / "run").write_text("#!/bin/sh\nexec {{ install_dir }}/bin/q\n")
    (shipped / "finish").write_text("#!/bin/sh\nsleep 1\n")
    service = quorum_service(tmp_path)
    smf = render_service(service, "quorum", "smf", CONTEXT, override_dir=shipped)
    assert smf == {"manifest": '<service name="site/quorum" addr="10.0.0.11"/>\n'}
    runit = render_service(service, "quorum", "runit", CONTEXT, override_dir=shipped)
    assert runit == {"run": "#!/bin/sh\nexec /opt/quorum/bin/q\n", "finish": "#!/bin/sh\nsleep 1\n"}
    # nothing shipped for systemd: the generated unit
    unit = render_service(service, "quorum", "systemd", CONTEXT, override_dir=shipped)["unit"]
    assert "ExecStart=/bin/sleep 1000 --addr 10.0.0.11" in unit


def test_an_undefined_variable_in_a_shipped_definition_names_that_file_and_line(tmp_path: Path) -> None:
    shipped = tmp_path / "smf" / "quorum"
    shipped.mkdir(parents=True)
    (shipped / "run").write_text("#!/bin/sh\nexec {{ install_dir }}/bin/q\n")
    (shipped / "finish").write_text("#!/bin/sh\n\necho {{ server.nosuch }}\n")
    with pytest.raises(ConfigError) as caught:
        render_service(quorum_service(tmp_path), "quorum", "runit", CONTEXT, override_dir=shipped)
    assert caught.value.file == str(shipped / "finish") and caught.value.line == 3, caught.value.message
    assert (
        caught.value.message.startswith(f"{shipped / 'finish'}:3: placeholder: ") and "nosuch" in caught.value.message
    )


def test_health_placeholders_rendered(tmp_path: Path) -> None:
    check = render_health(quorum_service(tmp_path), CONTEXT, "quorum")
    assert check is not None
    assert check.url == "https://10.0.0.11:8443/status"
    assert check.ca == "/opt/quorum/current/overlay/tls/ca.pem"
    assert check.timeout == 30.0


def test_every_registered_manager_is_known_to_topology_rendering_and_its_remote_driver(tmp_path: Path) -> None:
    # one registry (flinger/remote/services.py): adding a manager there without a template here fails
    assert SERVICE_MANAGERS == tuple(services.MANAGERS)
    for manager in services.MANAGERS:
        files = render_service(quorum_service(tmp_path), "quorum", manager, CONTEXT)
        assert set(services.DEFINITION_KEYS[manager]) <= set(files), manager
        assert RENDERERS[manager].override[1] in services.DEFINITION_KEYS[manager], manager
