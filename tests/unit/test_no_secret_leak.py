"""No secret value leaks: overlay, verify and combine run with secrets of known value, and the
values (hex and raw) must appear in no output, report, log record, exception text or stray
file. Also the `Secret` type's redaction."""

from __future__ import annotations

import itertools
import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from flinger.actions.secret_cmds import combine_share_files, verify_shares
from flinger.errors import FlingerError
from flinger.manifest.model import OverlayFile, SecretSpec
from flinger.overlay import planners as overlay_mod
from flinger.overlay.make import make_overlay
from flinger.remote import shamir
from flinger.secrets.secret import Secret
from flinger.topology.model import Topology
from tests.state_helpers import edit_overlay, export_shares, overlay_of, share_of, state_of
from tests.unit.overlay_helpers import make_manifest, make_topology, nodes, write_template

KNOWN_SECRET = int("c0ffee" * 10 + "beef", 16)  # 256 bits


def _secret_forms(secret: int) -> list[str]:
    raw = secret.to_bytes(32, "big")
    return [format(secret, "x"), format(secret, "064x"), format(secret, "X"), str(secret), raw.hex()]


@pytest.fixture
def known(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fix the random sources; yields every per-server token handed out so far."""
    tokens: list[str] = []
    counter = itertools.count(1)

    def token(nbytes: int) -> str:
        value = (f"{next(counter):02x}ab5ec7e7" * nbytes)[: 2 * nbytes]
        tokens.append(value)
        return value

    monkeypatch.setattr(overlay_mod, "_new_deployment_secret", lambda: KNOWN_SECRET)
    monkeypatch.setattr(overlay_mod, "_new_token", token)
    yield tokens


def _setup(tmp_path: Path) -> tuple[Topology, object]:
    write_template(
        tmp_path, "t/app.conf.j2", "name = {{ server.name }}\nkey_file = {{ overlay.dir }}/secrets/api_key\n"
    )
    topology = make_topology(tmp_path, nodes(4), threshold=3)
    manifest = make_manifest(
        tmp_path,
        overlay=[OverlayFile(template="t/app.conf.j2", dest="app.conf")],
        secrets=[SecretSpec(name="api_key", roles=("node",), visible_to=("node",), nbytes=24)],
    )
    return topology, manifest


def _assert_clean(text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text, "a secret value leaked"


def test_overlay_verify_combine_leak_nothing(
    tmp_path: Path, known: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    topology, manifest = _setup(tmp_path)
    report = make_overlay(topology, manifest)  # type: ignore[arg-type]
    assert len(known) == 4 and report.secret_fingerprint == shamir.fingerprint(KNOWN_SECRET)
    names = list(topology.deployment.servers)
    shares = [str(share_of(topology, s)["share"]) for s in names]
    assert len(shares) == 4
    secret_forms = _secret_forms(KNOWN_SECRET)
    sensitive = secret_forms + known + shares

    texts = [json.dumps(report.to_json()), repr(report)]
    checks = verify_shares(topology, state_of(topology))
    assert all(c.valid for c in checks)
    texts += [repr(checks), json.dumps([c.to_json() for c in checks])]
    files = export_shares(topology, names[:3], tmp_path / "exported")
    hidden = combine_share_files(files, reveal=False)
    revealed = combine_share_files(files, reveal=True)
    assert revealed.secret is not None and revealed.secret.reveal() == format(KNOWN_SECRET, "064x")
    texts += [repr(hidden), json.dumps(hidden.to_json()), repr(revealed), str(revealed), f"{revealed}"]

    # error paths: a tampered share, too few shares, a template that pokes at a secret
    doc = json.loads(files[0].read_text())
    doc["share"] = format(int(doc["share"], 16) ^ 0xFF00, "x")
    files[0].write_text(json.dumps(doc))
    sensitive.append(doc["share"])
    for attempt in (
        lambda: combine_share_files(files, reveal=True),
        lambda: combine_share_files(files[1:2], reveal=True),
    ):
        with pytest.raises(FlingerError) as info:
            attempt()
        texts.append(str(info.value))
    texts.append(repr(verify_shares(topology, state_of(topology))))
    for template in (
        "{{ {}[secrets.api_key] }}",
        "{{ server[peer_secrets.api_key.node2] }}",
        "{{ secrets.api_key + 1 }}",
    ):
        write_template(tmp_path, "t/app.conf.j2", template)
        with pytest.raises(FlingerError) as info:
            make_overlay(topology, manifest)  # type: ignore[arg-type]
        texts.append(str(info.value))
        texts.append(repr(info.value))
    assert any("<redacted>" in t for t in texts)  # the jinja message quoted a value, and it was scrubbed

    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        _assert_clean(text, sensitive)

    # the deployment secret itself is in no file at all (it is only in the servers' shares)
    raw = KNOWN_SECRET.to_bytes(32, "big")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert raw not in data, path
            _assert_clean(data.decode("latin-1"), secret_forms)


def test_keep_secret_puts_it_in_state_secret_only_sealed(tmp_path: Path, known: list[str]) -> None:
    topology, manifest = _setup(tmp_path)
    make_overlay(topology, manifest, keep_secret=True)  # type: ignore[arg-type]
    holders = [
        p.relative_to(topology.state_dir).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and format(KNOWN_SECRET, "064x").encode() in p.read_bytes()
    ]
    assert holders == []  # in no file in clear
    assert (topology.state_dir / "state" / "secret.age").is_file()
    assert state_of(topology).read("state/secret") == (format(KNOWN_SECRET, "064x") + "\n").encode()


def test_a_servers_token_reaches_only_servers_allowed_to_see_it(tmp_path: Path, known: list[str]) -> None:
    servers = {"coord": ("10.0.0.1", ("coordinator",)), "a1": ("10.0.0.2", ("agent",)), "a2": ("10.0.0.3", ("agent",))}
    topology = make_topology(tmp_path, servers)
    write_template(tmp_path, "t/c.j2", "{{ peer_secrets.push_key | dictsort }}\n")
    manifest = make_manifest(
        tmp_path,
        overlay=[OverlayFile(template="t/c.j2", dest="c.conf", roles=("coordinator",))],
        secrets=[SecretSpec(name="push_key", roles=("agent",), visible_to=("coordinator",))],
    )
    make_overlay(topology, manifest)
    a1_token, a2_token = known
    seen = {server: b"".join(overlay_of(topology, server).values()) for server in ("coord", "a1", "a2")}
    assert a1_token.encode() in seen["a1"] and a1_token.encode() not in seen["a2"]
    assert a2_token.encode() in seen["a2"] and a2_token.encode() not in seen["a1"]
    assert a1_token.encode() in seen["coord"] and a2_token.encode() in seen["coord"]


def test_secret_type_redacts_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    value = "hunter2-very-secret-value"
    s = Secret(value)
    b = Secret(value.encode())
    caplog.set_level(logging.DEBUG)
    logging.getLogger("flinger.test").info("token %s %r", s, b)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", "%s" % s, "{}".format(b), repr([s, b]), caplog.text]  # noqa: UP031, UP032
    for text in shown:
        assert value not in text and "redacted" in text
    assert s.reveal() == value and b.reveal() == value.encode()
    assert s.fingerprint == b.fingerprint and s.fingerprint.startswith("SHA256:")
    assert s == Secret(value) and s != Secret("other")
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(TypeError):
        Secret(42)  # type: ignore[type-var]


def _cli_app() -> object | None:
    try:
        import typer.main

        from flinger.cli.app import app
    except ImportError:
        return None
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    return app if "overlay" in commands and "secret" in commands else None


def test_cli_overlay_and_secret_commands_leak_nothing(
    tmp_path: Path, known: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    app = _cli_app()
    if app is None:
        pytest.skip("the CLI has no `overlay` and `secret` commands yet")
    from typer.testing import CliRunner

    src = tmp_path / "src"
    write_template(tmp_path, "t/app.conf.j2", "name = {{ server.name }}\n")
    (src / "packaging").mkdir(parents=True, exist_ok=True)
    (src / "packaging" / "package-manifest.toml").write_text(
        '[packages.app]\nservice_name = "app"\nroles = ["node"]\n'
        '[packages.app.source]\ntype = "local"\nbuild = ["true"]\n'
        '[[packages.app.overlay]]\ntemplate = "t/app.conf.j2"\nto = "app.conf"\n'
        '[secrets.api_key]\nroles = ["node"]\nvisible_to = ["node"]\n'
    )
    servers = "".join(
        f'[servers.node{i}]\naddr = "10.0.0.{i}"\nuser = "deploy"\nroles = ["node"]\n' for i in range(1, 4)
    )
    config = tmp_path / "deploy.toml"
    config.write_text(
        f'name = "demo"\nsource_dir = "{src}"\n'
        '[builder]\nserver = "node1"\nsource_dir = "$HOME/src"\n'
        '[deployment]\nservers = ["node1", "node2", "node3"]\ninstall_dir = "/opt/demo"\nthreshold = 2\n'
        f'[ssh]\nknown_hosts = "{tmp_path / "known_hosts"}"\n' + servers
    )
    runner = CliRunner()
    outputs = []
    for args in (["overlay"], ["--json", "overlay"], ["secret", "verify"], ["--json", "secret", "verify"]):
        result = runner.invoke(app, ["-c", str(config), *args])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    shares = export_shares(tmp_path / ".flinger" / "demo", ["node1", "node2", "node3"], tmp_path / "exported")
    assert len(shares) == 3
    share_values = [json.loads(p.read_text())["share"] for p in shares]
    result = runner.invoke(app, ["-c", str(config), "secret", "combine", *map(str, shares[:2])])
    assert result.exit_code == 0, result.output
    assert shamir.fingerprint(KNOWN_SECRET) in result.output
    outputs.append(result.output)
    result = runner.invoke(app, ["-c", str(config), "secret", "combine", str(shares[0])])
    assert result.exit_code != 0
    outputs.append(result.output)
    doc = json.loads(shares[1].read_text())
    doc["share"] = format(int(doc["share"], 16) ^ 0xFF, "x")
    shares[1].write_text(json.dumps(doc))
    edit_overlay(tmp_path / ".flinger" / "demo", "node2", "share.json", json.dumps(doc).encode())
    share_values.append(doc["share"])
    # failures go through the real error boundary (flinger.cli.run): exit status + message
    from flinger.cli import run

    capsys.readouterr()
    assert run(["-c", str(config), "secret", "verify"]) == 1
    assert run(["-c", str(config), "secret", "combine", "--reveal", *map(str, shares)]) == 1
    captured = capsys.readouterr()
    assert str(shares[1]) in captured.err
    outputs += [captured.out, captured.err]
    # the harness can see a leak: asked for explicitly, the secret is printed
    result = runner.invoke(app, ["-c", str(config), "secret", "combine", "--reveal", str(shares[0]), str(shares[2])])
    assert result.exit_code == 0 and format(KNOWN_SECRET, "064x") in result.output
    for text in outputs:
        _assert_clean(text, _secret_forms(KNOWN_SECRET) + known + share_values)
