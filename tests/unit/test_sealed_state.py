"""The deployment's state sealed at rest with age: what is on disk holds no secret in clear,
every recipient opens it and nobody else, a change of recipients re-encrypts, a clear state
of an older flinger is migrated, and bad keys, damaged files and merge conflicts are exit 2
with nothing touched."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyrage import x25519

from flinger.cli import run
from flinger.errors import ExitStatus
from flinger.overlay.store import reader
from flinger.secrets.sealing import IDENTITY_ENV, Keyring, SealError, parse_recipient
from tests.state_helpers import overlays, view


def ssh_key(path: Path, comment: str, passphrase: bytes | None = None) -> str:
    """A new ed25519 SSH key at `path`; its public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    crypt = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )  # fmt: skip
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, crypt))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"


def age_key(path: Path) -> str:
    ident = x25519.Identity.generate()
    path.write_text(f"# test\n{ident}\n")
    path.chmod(0o600)
    return str(ident.to_public())


def project(root: Path, recipients: list[str] | None = None, *, given: bool = False) -> Path:
    """A deployment of three servers with a secret api_key (and a given db_password) whose
    template embeds both; its deploy.toml."""
    src = root / "src"
    (src / "packaging").mkdir(parents=True, exist_ok=True)
    (src / "t").mkdir(exist_ok=True)
    (src / "t" / "app.conf.j2").write_text(
        "name = {{ server.name }}\nkey = {{ secrets.api_key }}\n"
        + ("db = {{ secrets.db_password }}\n" if given else "")
    )
    (src / "packaging" / "package-manifest.toml").write_text(
        '[packages.app]\nservice_name = "app"\nroles = ["node"]\n'
        '[packages.app.source]\ntype = "local"\nbuild = ["true"]\n'
        '[[packages.app.overlay]]\ntemplate = "t/app.conf.j2"\nto = "app.conf"\n'
        '[secrets.api_key]\nroles = ["node"]\n'
        + ('[secrets.db_password]\nroles = ["node"]\nscope = "deployment"\ngiven = true\n' if given else "")
    )
    servers = "".join(
        f'[servers.node{i}]\naddr = "10.0.0.{i}"\nuser = "deploy"\nroles = ["node"]\n' for i in range(1, 4)
    )
    state = (
        "" if recipients is None else "[state]\nrecipients = [" + ", ".join(json.dumps(r) for r in recipients) + "]\n"
    )
    config = root / "deploy.toml"
    config.write_text(
        f'name = "demo"\nsource_dir = "{src}"\n'
        '[builder]\nserver = "node1"\nsource_dir = "$HOME/src"\n'
        '[deployment]\nservers = ["node1", "node2", "node3"]\ninstall_dir = "/opt/demo"\nthreshold = 2\n'
        f'[ssh]\nknown_hosts = "{root / "known_hosts"}"\n' + state + servers
    )
    return config


def flinger(config: Path, *args: str, identity: Path | None = None) -> int:
    if identity is not None:
        os.environ[IDENTITY_ENV] = str(identity)
    try:
        return run(["-c", str(config), *args])
    finally:
        os.environ.pop(IDENTITY_ENV, None)


@contextlib.contextmanager
def as_identity(path: Path) -> Iterator[None]:
    """FLINGER_IDENTITY set to `path` for what this process reads of a state."""
    os.environ[IDENTITY_ENV] = str(path)
    try:
        yield
    finally:
        del os.environ[IDENTITY_ENV]


def made_by_alice(tmp_path: Path, keys: dict[str, tuple[Path, str]]) -> tuple[Path, Path]:
    """A deployment sealed to alice and bob, its overlay made by alice: (deploy.toml, state dir)."""
    config = project(tmp_path / "p", [keys["alice"][1], keys["bob"][1]])
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    return config, tmp_path / "p" / ".flinger" / "demo"


def stored(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: content and mtime (to see that nothing was rewritten)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    k = tmp_path / "keys"
    k.mkdir()
    return {
        "alice": (k / "alice", ssh_key(k / "alice", "alice@laptop")),
        "bob": (k / "bob.txt", age_key(k / "bob.txt")),
        "mallory": (k / "mallory", ssh_key(k / "mallory", "mallory@elsewhere")),
    }


def test_two_recipients_open_it_nothing_is_in_clear_and_a_rerun_rewrites_nothing(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = made_by_alice(tmp_path, keys)
    with as_identity(keys["bob"][0]):
        opened = overlays(state_dir)  # bob opens what alice made
        split = reader(state_dir).read("state/split.json")
        ca_key = reader(state_dir).read("ca/ca.key")
    assert sorted(opened) == ["node1", "node2", "node3"] and split is not None and ca_key is not None
    values = [json.loads(f["share.json"])["share"] for f in opened.values()]
    values += [f["secrets/api_key"].decode() for f in opened.values()]
    values += [f["tls/key.pem"].decode().splitlines()[1] for f in opened.values()]
    values += [ca_key.decode().splitlines()[1]]
    for path in (tmp_path / "p").rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("latin-1")
            assert not any(v in data for v in values), f"a secret in clear in {path}"
    for path in state_dir.rglob("*"):
        kind = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == kind, path
    assert stat.S_IMODE(state_dir.parent.stat().st_mode) == 0o700
    before = stored(state_dir)
    assert flinger(config, "overlay", identity=keys["bob"][0]) == 0
    assert stored(state_dir) == before  # not one file rewritten, the index included
    index = json.loads((state_dir / "state" / "index.json").read_text())
    assert str(tmp_path) not in (state_dir / "state" / "index.json").read_text()  # no machine path inside
    assert index["recipients"] == [keys["alice"][1], keys["bob"][1]]


def test_a_stranger_gets_exit_2_naming_the_recipients_and_nothing_changes(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, state_dir = made_by_alice(tmp_path, keys)
    before = stored(state_dir)
    capsys.readouterr()
    for args in (["overlay"], ["overlay", "--rotate"], ["secret", "verify"], ["deploy", "install"]):
        assert flinger(config, *args, identity=keys["mallory"][0]) == ExitStatus.USAGE, args
        err = capsys.readouterr().err
        assert "alice@laptop (SHA256:" in err and "age1" in err and str(keys["mallory"][0]) in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert stored(state_dir) == before


def test_no_identity_says_where_it_looked(
    tmp_path: Path,
    keys: dict[str, tuple[Path, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = project(tmp_path / "p", [keys["alice"][1]])
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-home" / ".config"))
    capsys.readouterr()
    assert flinger(config, "secret", "verify") == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "no identity" in err and "empty-home/.ssh/id_ed25519" in err and "identity.txt" in err
    assert "FLINGER_IDENTITY" in err
    # what needs no secret works without one
    assert flinger(config, "check") == 0
    capsys.readouterr()
    assert flinger(config, "--json", "deploy", "install", "--dry-run", "--offline") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and "share.json" in plan["servers"][0]["steps"][2]["files"]


def test_without_recipients_flinger_makes_the_operator_an_identity_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    config = project(tmp_path / "p")
    assert flinger(config, "overlay") == 0
    made = tmp_path / "config" / "flinger" / "identity.txt"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.parent.stat().st_mode) == 0o700
    err = capsys.readouterr().err
    assert "made an age identity for you" in err and "[state] recipients" in err
    assert flinger(config, "overlay") == 0
    assert "made an age identity" not in capsys.readouterr().err  # once


def test_a_removed_recipient_can_no_longer_open_it(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path / "p", [keys["alice"][1], keys["bob"][1]])
    assert flinger(config, "overlay", identity=keys["bob"][0]) == 0
    config.write_text(config.read_text().replace(f', "{keys["bob"][1]}"', ""))
    capsys.readouterr()
    assert flinger(config, "secret", "recipients", identity=keys["alice"][0]) == 0
    out = capsys.readouterr()
    assert "re-encrypted" in out.err and "removed: bob" not in out.err and "removed: age1" in out.err
    assert "--rotate" in out.err and "alice@laptop" in out.out
    assert flinger(config, "secret", "verify", identity=keys["bob"][0]) == ExitStatus.USAGE
    assert "none of your identities" in capsys.readouterr().err
    assert flinger(config, "secret", "verify", identity=keys["alice"][0]) == 0
    # and added back: bob opens it again
    config.write_text(config.read_text().replace(f'"{keys["alice"][1]}"', f'"{keys["alice"][1]}", "{keys["bob"][1]}"'))
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    assert "added: age1" in capsys.readouterr().err
    assert flinger(config, "secret", "verify", identity=keys["bob"][0]) == 0


def test_a_clear_state_of_an_older_flinger_is_migrated_and_the_clear_files_removed(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path / "p", [keys["alice"][1]])
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    state_dir = tmp_path / "p" / ".flinger" / "demo"
    with as_identity(keys["alice"][0]):
        clear = view(state_dir)  # the same state in the layout of flinger before sealing
        before = overlays(state_dir)
    for path in list(state_dir.iterdir()):
        _remove(path)
    for path in clear.iterdir():
        path.rename(state_dir / path.name)
    assert (state_dir / "ca" / "ca.key").is_file() and (state_dir / "overlay" / "node1" / "share.json").is_file()
    capsys.readouterr()
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    err = capsys.readouterr().err
    assert "migrated the clear state" in err
    assert not (state_dir / "ca" / "ca.key").exists() and not (state_dir / "overlay" / "node1").exists()
    assert not list(state_dir.rglob("key.pem")) and not list(state_dir.rglob("share.json"))
    with as_identity(keys["alice"][0]):
        assert overlays(state_dir) == before  # the same shares, keys and secrets, now sealed


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def test_merge_conflicts_and_damaged_files_are_refused_with_nothing_touched(
    tmp_path: Path, keys: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path / "p", [keys["alice"][1]])
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    state_dir = tmp_path / "p" / ".flinger" / "demo"
    index = state_dir / "state" / "index.json"
    good = index.read_text()
    lines = good.splitlines()
    at = next(i for i, line in enumerate(lines) if '"write"' in line)
    theirs = lines[at].replace('"write": "', '"write": "0')
    index.write_text(
        "\n".join([*lines[:at], "<<<<<<< HEAD", lines[at], "=======", theirs, ">>>>>>> theirs", *lines[at + 1 :]])
    )
    before = stored(state_dir)
    capsys.readouterr()
    assert flinger(config, "overlay", identity=keys["alice"][0]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "merge conflict" in err and "Traceback" not in err
    assert stored(state_dir) == before
    index.write_text(good)
    bundle = state_dir / "overlay" / "node2.age"
    bundle.write_bytes(bundle.read_bytes()[:-20])  # truncated
    before = stored(state_dir)
    assert flinger(config, "deploy", "install", identity=keys["alice"][0]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "node2.age" in err and "altered or truncated" in err
    assert stored(state_dir) == before
    # an overlay is made from the state: `overlay` makes the damaged one again
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    assert flinger(config, "secret", "verify", identity=keys["alice"][0]) == 0


def test_secret_set_reads_stdin_and_a_given_secret_is_needed_before_an_overlay(
    tmp_path: Path,
    keys: dict[str, tuple[Path, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io

    config = project(tmp_path / "p", [keys["alice"][1]], given=True)
    assert flinger(config, "overlay", identity=keys["alice"][0]) == ExitStatus.USAGE
    assert "flinger secret set db_password" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    assert flinger(config, "secret", "set", "db_password", identity=keys["alice"][0]) == 0
    assert "correct horse" not in "".join(capsys.readouterr())
    assert flinger(config, "overlay", identity=keys["alice"][0]) == 0
    state_dir = tmp_path / "p" / ".flinger" / "demo"
    with as_identity(keys["alice"][0]):
        files = overlays(state_dir)
    assert all(b"db = correct horse battery staple\n" in f["files/app.conf"] for f in files.values())
    assert not any(b"correct horse" in p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file())
    assert flinger(config, "overlay", "--rotate", identity=keys["alice"][0]) == 0  # a given secret is kept
    with as_identity(keys["alice"][0]):
        assert b"correct horse" in overlays(state_dir)["node1"]["files/app.conf"]
    monkeypatch.setattr("sys.stdin", io.StringIO("x"))
    assert flinger(config, "secret", "set", "api_key", identity=keys["alice"][0]) == ExitStatus.USAGE
    assert "given = true" in capsys.readouterr().err


def test_a_passphrase_key_without_a_terminal_says_so(tmp_path: Path) -> None:
    public = ssh_key(tmp_path / "locked", "carol", passphrase=b"pw")
    other = age_key(tmp_path / "other.txt")
    from flinger.secrets.sealing import seal

    data = seal(b"hello", [parse_recipient(public), parse_recipient(other)])
    with pytest.raises(SealError, match="passphrase and there is no terminal"):
        Keyring(str(tmp_path / "locked")).unseal(data, "x", [])
    assert Keyring(str(tmp_path / "other.txt")).unseal(data, "x", []) == b"hello"


def test_a_passphrase_is_asked_once_for_every_file_of_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flinger.secrets import sealing

    public = ssh_key(tmp_path / "locked", "carol", passphrase=b"pw")
    asked: list[str] = []
    monkeypatch.setattr(sealing.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sealing.getpass, "getpass", lambda prompt: asked.append(prompt) or "pw")
    keyring = Keyring(str(tmp_path / "locked"))
    blobs = [sealing.seal(f"file {i}".encode(), [parse_recipient(public)]) for i in range(5)]
    assert [keyring.unseal(b, "x", []) for b in blobs] == [f"file {i}".encode() for i in range(5)]
    assert len(asked) == 1


@pytest.mark.parametrize(
    ("entry", "why"),
    [("ssh-ed25519 AAAAnotbase64", "not a valid"), ("ssh-dss AAAA x", "expected an SSH"), ("age1xyz", "not a valid")],
)
def test_a_bad_recipient_in_deploy_toml_names_the_file_line_and_key(
    tmp_path: Path, entry: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path / "p", [entry])
    assert flinger(config, "check") == ExitStatus.USAGE
    err = capsys.readouterr().err.strip()
    assert f"{config}:" in err and "state.recipients" in err and why in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p" / ".flinger").exists()
