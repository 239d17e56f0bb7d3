"""Per-server values: `vars` on a server (and on the deployment, for every server's defaults)
reach overlay templates and service fields as `server.vars.NAME`; `check` refuses bad names
and values with file, line and key, and a template asking for a variable a server lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.cli import run
from flinger.errors import ExitStatus
from flinger.overlay.make import make_overlay
from flinger.topology import load_topology
from tests.state_helpers import overlay_of


def project(root: Path, servers_vars: dict[str, str], deployment_vars: str = "") -> Path:
    src = root / "src"
    (src / "packaging").mkdir(parents=True)
    (src / "t").mkdir()
    (src / "t" / "hello.conf.j2").write_text(
        "greeting = {{ server.vars.greeting }}\nworkers = {{ server.vars.workers }}\n"
    )
    (src / "packaging" / "package-manifest.toml").write_text(
        '[packages.hello]\nservice_name = "hello"\nroles = ["web"]\n'
        '[packages.hello.source]\ntype = "local"\nbuild = ["true"]\n'
        '[packages.hello.service]\ncommand = "/usr/bin/hello --greeting {{ server.vars.greeting }}"\n'
        '[[packages.hello.overlay]]\ntemplate = "t/hello.conf.j2"\nto = "hello.conf"\n'
    )
    servers = "".join(
        f'[servers.web{i}]\naddr = "10.0.0.{i}"\nuser = "deploy"\nroles = ["web"]\n{servers_vars.get(f"web{i}", "")}'
        for i in (1, 2)
    )
    config = root / "deploy.toml"
    config.write_text(
        f'name = "hello"\nsource_dir = "{src}"\n'
        '[builder]\nserver = "web1"\nsource_dir = "$HOME/src"\n'
        '[deployment]\nservers = ["web1", "web2"]\ninstall_dir = "/opt/hello"\n'
        + deployment_vars
        + f'[ssh]\nknown_hosts = "{root / "known_hosts"}"\n'
        + servers
    )
    return config


def test_a_servers_vars_override_the_deployments_and_reach_templates_and_services(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(
        tmp_path,
        {"web2": 'vars = { greeting = "hej" }\n'},
        deployment_vars='vars = { greeting = "hello", workers = 4 }\n',
    )
    topology = load_topology(config)
    assert topology.servers["web1"].vars == {"greeting": "hello", "workers": 4}
    assert topology.servers["web2"].vars == {"greeting": "hej", "workers": 4}
    assert run(["-c", str(config), "check"]) == 0
    from flinger.engine.plan import plan_deploy
    from flinger.manifest import load_manifest

    plans = {
        p.server: p
        for p in plan_deploy(topology, load_manifest(topology.manifest_path), list(topology.servers.values()))
    }
    assert "--greeting hej" in plans["web2"].services[0].files["unit"]
    assert "--greeting hello" in plans["web1"].services[0].files["unit"]
    make_overlay(topology, load_manifest(topology.manifest_path))
    assert overlay_of(topology, "web2")["files/hello.conf"] == b"greeting = hej\nworkers = 4\n"
    assert overlay_of(topology, "web1")["files/hello.conf"] == b"greeting = hello\nworkers = 4\n"


def test_a_variable_a_server_lacks_is_found_by_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = project(
        tmp_path,
        {"web1": 'vars = { greeting = "hi", workers = 2 }\n', "web2": 'vars = { greeting = "hej" }\n'},
    )
    assert run(["-c", str(config), "check"]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "hello.conf.j2:2" in err and "server.vars.workers" in err and "web2" in err
    assert not (tmp_path / ".flinger").exists()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('vars = { "1st" = "x" }', "a variable name is letters"),
        ("vars = { greeting = { nested = 1 } }", "expected a string, number"),
        ('vars = "greeting"', "expected a table of variables"),
        ('vars = { greeting = "a\\u0007b" }', "control"),
    ],
)
def test_bad_vars_name_the_file_line_and_key(
    tmp_path: Path, line: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path, {"web1": line + "\n"})
    assert run(["-c", str(config), "check"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip()
    assert f"{config}:" in err and "servers.web1.vars" in err and why in err, err
    assert len(err.splitlines()) == 1


def test_a_roles_vars_sit_between_the_deployments_and_the_servers_own(tmp_path: Path) -> None:
    config = project(
        tmp_path,
        {"web2": 'vars = { greeting = "hej" }\n'},
        deployment_vars='vars = { greeting = "hello", workers = 4 }\n',
    )
    config.write_text(config.read_text() + '[roles.web]\nvars = { workers = 8, greeting = "hi" }\n')
    topology = load_topology(config)
    assert topology.servers["web1"].vars == {"greeting": "hi", "workers": 8}  # the role's over the deployment's
    assert topology.servers["web2"].vars == {"greeting": "hej", "workers": 8}  # the server's own over its role's


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        ("[roles.webb]\nvars = { workers = 8 }\n", "roles.webb", "no server has this role (roles: web)"),
        ("[roles.web]\nvars = { workers = 8 }\nport = 80\n", "roles.web.port", "unknown key"),
        ('[roles.web]\nvars = { "2x" = 8 }\n', "roles.web.vars.2x", "a variable name is letters"),
    ],
)
def test_bad_role_vars_name_the_file_line_and_key(
    tmp_path: Path, extra: str, key: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path, {})
    config.write_text(config.read_text() + extra)
    assert run(["-c", str(config), "check"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip()
    assert f"{config}:" in err and key in err and why in err, err
    assert len(err.splitlines()) == 1


def test_two_roles_of_one_server_giving_one_var_two_values_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path, {})
    web2 = '[servers.web2]\naddr = "10.0.0.2"\nuser = "deploy"\nroles = ["web"]\n'
    text = config.read_text().replace(web2, web2.replace('["web"]', '["web", "edge"]'))
    config.write_text(text + "[roles.web]\nvars = { workers = 8 }\n[roles.edge]\nvars = { workers = 2 }\n")
    assert run(["-c", str(config), "check"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip()
    assert "roles.edge.vars.workers" in err and "web2 has roles web and edge" in err, err
    # the server saying it itself settles it
    config.write_text(
        config.read_text().replace('roles = ["web", "edge"]\n', 'roles = ["web", "edge"]\nvars = { workers = 3 }\n')
    )
    assert load_topology(config).servers["web2"].vars == {"workers": 3}
    assert load_topology(config).servers["web1"].vars == {"workers": 8}
