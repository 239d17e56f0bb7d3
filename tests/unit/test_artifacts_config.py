"""deploy.toml's [artifacts] table: validated like every other (file, line, key), and the
registry's password and CA read on the client without ever showing the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinger.errors import ConfigError
from flinger.protocol.plans import Credential
from flinger.secrets import ca, registry_credentials
from flinger.topology import load_topology
from tests.unit.test_topology import GOOD

REGISTRY = """\
[artifacts]
store = "registry"
url = "https://registry.example.net:5000"
repository = "flinger/quorum"
username = "deploy"
password_file = "registry.pw"
"""


def write(tmp_path: Path, artifacts: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(GOOD + artifacts)
    return path


def test_the_builder_store_is_the_default(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, ""))
    assert topo.artifacts.store == "builder" and not topo.artifacts.registry


def test_a_registry_table_loads_with_paths_next_to_deploy_toml(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, REGISTRY))
    art = topo.artifacts
    assert art.registry and art.url == "https://registry.example.net:5000" and art.repository == "flinger/quorum"
    assert art.password_file == tmp_path / "registry.pw"
    assert art.pull_credential() == ("deploy", tmp_path / "registry.pw")  # the servers pull with the same one


def test_a_separate_pull_credential_is_what_servers_get(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, REGISTRY + 'pull_username = "reader"\npull_password_file = "/r.pw"\n'))
    assert topo.artifacts.pull_credential() == ("reader", Path("/r.pw"))


CASES = [
    # (replace this, with this, key, words in the message)
    ('store = "registry"', 'store = "registy"', "artifacts.store", "one of"),
    (
        'url = "https://registry.example.net:5000"',
        'url = "http://registry.example.net:5000"',
        "artifacts.url",
        "plain http",
    ),
    (
        'url = "https://registry.example.net:5000"',
        'url = "http://10.1.2.3:5000"\nplain_http = true',
        "artifacts.url",
        "only allowed to a loopback",
    ),
    (
        'url = "https://registry.example.net:5000"',
        'url = "https://u:p@registry.example.net"',
        "artifacts.url",
        "no credentials in the URL",
    ),
    (
        'url = "https://registry.example.net:5000"',
        'url = "https://registry.example.net/v2/x"',
        "artifacts.url",
        "no path",
    ),
    (
        'url = "https://registry.example.net:5000"',
        'url = "https://registry.example.net:99999"',
        "artifacts.url",
        "port between 1 and 65535",
    ),
    ('url = "https://registry.example.net:5000"', 'url = "registry.example.net"', "artifacts.url", "https://"),
    ('repository = "flinger/quorum"', 'repository = "Flinger/Quorum"', "artifacts.repository", "lowercase"),
    ('repository = "flinger/quorum"', 'repository = "a//b"', "artifacts.repository", "OCI repository"),
    ('password_file = "registry.pw"\n', "", "artifacts.password_file", "go together"),
    ('username = "deploy"', 'username = "de:ploy"', "artifacts.username", "without ':'"),
    ('username = "deploy"', 'usrname = "deploy"', "artifacts.usrname", "unknown key"),
    ('username = "deploy"', "username = 5", "artifacts.username", "expected a string"),
]


@pytest.mark.parametrize(("old", "new", "key", "words"), CASES)
def test_bad_artifacts_name_file_line_and_key(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    text = REGISTRY.replace(old, new)
    assert text != REGISTRY
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    err = caught.value
    assert err.key == key and words in err.message, (err.key, err.message)
    assert str(err.file) == str(path) and err.line is not None and err.line > GOOD.count("\n")


def test_a_password_file_others_can_read_is_refused_without_showing_it(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, REGISTRY))
    secret = "s3cret-Password"
    pw = tmp_path / "registry.pw"
    pw.write_text(secret + "\n")
    pw.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        registry_credentials.push_credential(topo)
    assert caught.value.key == "artifacts.password_file" and "chmod 600" in caught.value.message
    assert secret not in str(caught.value)
    pw.chmod(0o600)
    assert registry_credentials.push_credential(topo) == Credential("deploy", secret)
    assert b'"password": "s3cret-Password"' in (registry_credentials.pull_credential_file(topo) or b"")
    pw.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        registry_credentials.pull_credential(topo)


def test_the_ca_must_hold_certificates(tmp_path: Path) -> None:
    topo = load_topology(write(tmp_path, REGISTRY + 'ca = "ca.pem"\n'))
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        registry_credentials.ca_pem(topo)
    assert caught.value.key == "artifacts.ca" and "no PEM certificate" in caught.value.message
    (tmp_path / "ca.pem").write_bytes(ca.create_ca("t").cert_pem)
    assert "BEGIN CERTIFICATE" in (registry_credentials.ca_pem(topo) or "")
