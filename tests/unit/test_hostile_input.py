"""Bad and hostile input: every class of file that once crashed `check`, passed it to fail
later, or reached a shell unquoted, now gets one-line errors (file, line, key) and exit 2."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from flinger.cli import run
from flinger.errors import ConfigError
from flinger.overlay.templates import make_environment, render

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the Orion example: deploy.toml + packaging/package-manifest.toml + files."""
    dest = tmp_path / "orion"
    shutil.copytree(REPO / "examples" / "orion", dest)
    return dest


def check(project: Path) -> tuple[int, list[str]]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(["-c", str(project / "deploy.toml"), "check"])
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert "Traceback" not in err.getvalue() + out.getvalue()
    return code, lines


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("flinger: error: ")]


def test_the_unchanged_example_passes(project: Path) -> None:
    assert check(project)[0] == 0


def test_a_key_twice_in_a_table_names_its_second_line(project: Path) -> None:
    config = project / "deploy.toml"
    edit(config, 'server = "build1"\n', 'server = "build1"\nserver = "build1"\n')
    line = config.read_text().splitlines().index('server = "build1"') + 2
    code, lines = check(project)
    assert code == 2
    assert errors(lines) == [
        f'flinger: error: {config}:{line}: builder.server: invalid TOML: Key "server" already exists '
        "(a key may be set once per table)"
    ]


def test_invalid_utf8_names_its_line(project: Path) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    data = manifest.read_bytes().replace(b'version = "0.1.0"', b'version = "\xff"')
    manifest.write_bytes(data)
    line = data[: data.index(b"\xff")].count(b"\n") + 1
    code, lines = check(project)
    assert code == 2
    assert errors(lines) == [f"flinger: error: {manifest}:{line}: not UTF-8 text: byte 0xff cannot be decoded"]


def test_a_top_level_section_of_the_wrong_type(project: Path) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    manifest.write_text("secrets = 1\n" + manifest.read_text())
    code, lines = check(project)
    assert code == 2
    assert errors(lines) == [
        f"flinger: error: {manifest}:1: secrets: expected a table ([secrets.NAME] sections), got an integer (1)"
    ]


@pytest.mark.parametrize("line", ['prereqs = "x"', "packages = []"])
def test_a_value_where_the_file_also_has_that_table(project: Path, line: str) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    manifest.write_text(line + "\n" + manifest.read_text())
    key = line.split()[0]
    header = next(i for i, text in enumerate(manifest.read_text().splitlines(), 1) if text.startswith(f"[{key}."))
    code, lines = check(project)
    assert code == 2
    assert errors(lines) == [
        f'flinger: error: {manifest}:{header}: {key}: invalid TOML: Key "{key}" already exists '
        "(a key may be set once per table)"
    ]


@pytest.mark.parametrize("key", ["users", "dirs"])
def test_prereq_users_or_dirs_that_are_not_arrays(project: Path, key: str) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    edit(manifest, "[prereqs.runner]\n", f'[prereqs.runner]\n{key} = "oops"\n')
    text = manifest.read_text()
    text = text.replace('users = [{ name = "orion"', '# users = [{ name = "orion"') if key == "users" else text
    if key == "dirs":
        start = text.index("dirs = [\n")
        end = text.index("]\n", start) + 2
        text = text[:start] + text[end:]
    manifest.write_text(text)
    code, lines = check(project)
    assert code == 2
    assert any(f"prereqs.runner.{key}: expected an array" in e for e in errors(lines)), lines


def test_a_byte_order_mark_is_fine(project: Path) -> None:
    for path in (project / "deploy.toml", project / "packaging" / "package-manifest.toml"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert check(project)[0] == 0


@pytest.mark.parametrize(
    "value",
    ["/opt/x$(touch /tmp/pwned)", "/opt/my app", "/opt/x`id`", "/opt/x;rm -rf /", "/opt/%i", "opt/relative"],
)
def test_install_dir_that_a_shell_would_read_differently_is_refused(project: Path, value: str) -> None:
    edit(project / "deploy.toml", 'install_dir = "/opt/orion-runner"', f'install_dir = "{value}"')
    code, lines = check(project)
    assert code == 2
    assert len(errors(lines)) == 1 and "deployment.install_dir:" in errors(lines)[0], lines


@pytest.mark.parametrize("addr", ["127.0.11.11/24", "host name", "-oProxyCommand=x", "10.0.0.1:22", "a..b", ""])
def test_an_address_is_a_host_name_or_an_ip(project: Path, addr: str) -> None:
    edit(project / "deploy.toml", 'addr = "build1.example.net"', f'addr = "{addr}"')
    code, lines = check(project)
    assert code == 2
    assert len(errors(lines)) == 1 and "servers.build1.addr:" in errors(lines)[0], lines


@pytest.mark.parametrize(
    ("where", "old", "evil"),
    [
        ("deploy.toml", 'user = "deploy"', 'user = "de\\u202eploy"'),
        ("deploy.toml", 'roles = ["runner"]', 'roles = ["run\\u200bner"]'),
        ("deploy.toml", 'roles = ["runner"]', 'roles = ["run ner"]'),
        ("deploy.toml", 'source_dir = "$HOME/orion-src"', 'source_dir = "$HOME/orion\\nsrc"'),
        ("deploy.toml", "connect_timeout = 10", 'connect_timeout = 10\njump = "bastion\\u0007"'),
        ("deploy.toml", "connect_timeout = 10", 'connect_timeout = 10\njump = "root@bastion:99999"'),
        ("packaging/package-manifest.toml", 'command = "/bin/bash run.sh"', 'command = "/bin/bash run.sh\\u0000"'),
        ("packaging/package-manifest.toml", 'user = "orion"', 'user = "or\\u2066ion"'),
        ("packaging/package-manifest.toml", 'group = "orion"', 'group = "orion\\r"'),
        (
            "packaging/package-manifest.toml",
            'log_file = "/var/log/orion-runner.log"',
            'log_file = "/var/log/a\\u202eb"',
        ),
    ],
)
def test_control_bidi_and_invisible_characters_are_refused(project: Path, where: str, old: str, evil: str) -> None:
    edit(project / where, old, evil)
    code, lines = check(project)
    assert code == 2, lines
    assert len(errors(lines)) == 1 and f"{project / where}:" in errors(lines)[0], lines


def test_an_undefined_placeholder_is_found_by_check_with_its_real_key(project: Path) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    edit(manifest, 'command = "/bin/bash run.sh"', 'command = "/bin/bash run.sh {{ nope }}"')
    line = manifest.read_text().splitlines().index('command = "/bin/bash run.sh {{ nope }}"') + 1
    code, lines = check(project)
    assert code == 2
    assert errors(lines) == [
        f"flinger: error: {manifest}:{line}: packages.orion-runner.service.command: placeholder: 'nope' is "
        "undefined (rendering it for server orion-client)"
    ]


def test_every_error_of_a_file_is_reported(project: Path) -> None:
    config = project / "deploy.toml"
    edit(config, 'addr = "build1.example.net"', 'addr = "bad/addr"')
    edit(config, 'addr = "192.0.2.10"', 'addr = "also bad"')
    edit(config, 'install_dir = "/opt/orion-runner"', 'install_dir = "/opt/x y"')
    code, lines = check(project)
    assert code == 2
    keys = [e.split(": ")[3] for e in errors(lines)]
    assert keys == ["servers.build1.addr", "servers.orion-client.addr", "deployment.install_dir"], lines


def test_line_numbers_are_right_after_a_multiline_string(project: Path) -> None:
    manifest = project / "packaging" / "package-manifest.toml"
    edit(
        manifest,
        'setup_hint = "the real package',
        'setup_hint = """\nline one\n[fake.table]\nport = 1\n"""\nversion_x = 1\n#setup_hint = "the real package',
    )
    line = manifest.read_text().splitlines().index("version_x = 1") + 1
    code, lines = check(project)
    assert code == 2
    expected = f"flinger: error: {manifest}:{line}: packages.orion-runner.version_x: unknown key"
    assert errors(lines)[0].startswith(expected)


def test_an_undefined_variable_through_a_filter_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("peers = {{ peers | tojson }}\nkey = {{ missing_thing | tojson }}\n")
    with pytest.raises(ConfigError) as caught:
        render(make_environment(tmp_path), "t.j2", {"peers": ["a"]}, server="n1")
    expected = f"{tmp_path / 't.j2'}:2: undefined variable 'missing_thing' (rendering for server n1)"
    assert caught.value.message == expected


def test_a_missing_include_is_named_at_the_include_not_blamed_on_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "head.j2").write_text("[head]\n")
    (tmp_path / "t.j2").write_text('{% include "parts/head.j2" %}\nx = 1\n{% include "parts/gone.j2" %}\n')
    with pytest.raises(ConfigError) as caught:
        render(make_environment(tmp_path), "t.j2", {}, server="n1", manifest_path="m.toml", manifest_key="k")
    assert caught.value.message == f"{tmp_path / 't.j2'}:3: parts/gone.j2: no such template under {tmp_path}"
    # the template itself missing is still the manifest's entry that names it
    with pytest.raises(ConfigError) as missing:
        render(make_environment(tmp_path), "nope.j2", {}, server="n1", manifest_path="m.toml", manifest_key="k")
    assert missing.value.message.startswith("m.toml") and "template nope.j2 not found" in missing.value.message


def test_templates_cannot_reach_python_internals(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ ''.__class__.__mro__ }}\n")
    with pytest.raises(ConfigError, match="unsafe"):
        render(make_environment(tmp_path), "t.j2", {}, server="n1")


def test_a_name_too_long_for_the_file_system_is_bad_input_not_a_crash(project: Path) -> None:
    deploy = project / "deploy.toml"
    text = deploy.read_text()
    deploy.write_text(text.replace('source_dir = ".', 'source_dir = "./' + "y" * 300, 1))
    code, lines = check(project)
    assert code == 2 and errors(lines) and "source_dir" in errors(lines)[0] and "too long" in errors(lines)[0]


def test_a_config_that_is_a_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "deploy.toml"
    os.mkfifo(fifo)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run(["-c", str(fifo), "check"]) == 2  # no reader waits for a writer that never comes
    assert "not a regular file" in err.getvalue()
