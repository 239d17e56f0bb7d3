"""SSH as operators have it: each case of an operator's ~/.ssh (Include, aliases, ProxyJump
through a bastion, HostKeyAlias, HashKnownHosts, host and user certificates, identities picked
from a crowded agent, a hardened sshd, silent and dying peers) run with flinger and, beside
it, with plain `ssh` and the same files: the two agree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flinger_helpers import run_flinger
from ssh_bed import PORT, USER, Bed, BedHost, keygen, sign, start_agent, start_host, stop

pytestmark = pytest.mark.integration

FLEET = """\
Host bastion
  HostName {b}.1
Host inner-alias
  HostName {b}.2
  ProxyJump bastion
Host keyalias
  HostName {b}.1
  HostKeyAlias bastion-key
Host certhost
  HostName {b}.3
Host usercert
  HostName {b}.4
  IdentityFile {ssh}/certkey
  CertificateFile {ssh}/certkey-cert.pub
  IdentitiesOnly yes
Host picky
  HostName {b}.5
  IdentityFile {ssh}/picked.pub
  IdentitiesOnly yes
Host picky-unnamed
  HostName {b}.5
Host narrow
  HostName {b}.6
Host twokeys
  HostName {b}.7
Host quick-alive
  HostName {b}.1
  ServerAliveInterval 2
Host *
  Port {port}
  User {user}
  UserKnownHostsFile {ssh}/known_hosts
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("sshbed")
    home = root / "home"
    ssh_dir = home / ".ssh"
    (ssh_dir / "config.d").mkdir(parents=True)
    os.chmod(ssh_dir, 0o700)
    made = _ensure_user()
    bed = Bed(directory=root, home=home, made_user=made)
    try:
        _keys_and_agent(bed)
        ca = keygen(root / "host_ca")
        start_host(bed, "bastion", 1, "AllowTcpForwarding yes")
        start_host(bed, "inner", 2)
        cert_dir = root / "certhost-keys"
        cert_dir.mkdir()
        host_key = keygen(cert_dir / "ssh_host_ed25519_key")
        cert = sign(ca, Path(f"{host_key}.pub"), host=True, principals=f"{bed_addr(3)}")
        start_host(bed, "certhost", 3, f"HostKey {host_key}\nHostCertificate {cert}")
        start_host(bed, "usercert", 4, f"TrustedUserCAKeys {root / 'user_ca.pub'}\nAuthorizedKeysCommand none")
        start_host(bed, "picky", 5, "MaxAuthTries 3", picky=True)
        start_host(bed, "narrow", 6, "MaxSessions 2")
        start_host(bed, "twokeys", 7, keys=("ed25519", "rsa"))
        (ssh_dir / "config").write_text(f"Include {ssh_dir}/config.d/*\n")
        (ssh_dir / "config.d" / "fleet").write_text(FLEET.format(b="127.78.0", port=PORT, user=USER, ssh=ssh_dir))
        (ssh_dir / "known_hosts").write_text("")
        yield bed
    finally:
        stop(bed)


def bed_addr(index: int) -> str:
    return f"127.78.0.{index}"


def _ensure_user() -> bool:
    from ssh_bed import ensure_user

    return ensure_user(Path("/nonexistent"))


def _keys_and_agent(bed: Bed) -> None:
    ssh_dir = bed.ssh_dir
    main = keygen(ssh_dir / "id_main", comment="main")
    others = [keygen(bed.directory / f"other{i}", comment=f"other{i}") for i in range(6)]
    picked = keygen(ssh_dir / "picked", comment="picked")
    user_ca = keygen(bed.directory / "user_ca")
    certkey = keygen(ssh_dir / "certkey", comment="certkey")
    sign(user_ca, Path(f"{certkey}.pub"), host=False, principals=USER)
    (bed.directory / "authorized_keys").write_text(Path(f"{main}.pub").read_text())
    (bed.directory / "picky_keys").write_text(Path(f"{picked}.pub").read_text())
    start_agent(bed)
    env = {**os.environ, **bed.agent}
    for key in [main, *others, picked]:  # picked last: 7 keys before it in the agent
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
    picked.unlink()  # only in the agent now; ~/.ssh keeps picked.pub to name it


def flinger(bed: Bed, config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_flinger("-c", str(config), *args, env=bed.env(), timeout=timeout)


def one(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    doc = json.loads(proc.stdout)
    return dict(doc["servers"][0])


def known(bed: Bed, name: str) -> str:
    path = bed.ssh_dir / "known_hosts"
    return subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True).stdout


def test_trust_and_exec_through_a_bastion_set_in_an_included_file(bed: Bed) -> None:
    config = bed.deploy_toml({"inner": {"addr": "inner-alias"}})
    (bed.ssh_dir / "known_hosts").write_text("")
    before = bed.plain_ssh("inner-alias", "true")
    assert before.returncode == 255 and "Host key verification failed" in before.stderr  # the bastion's
    refused = flinger(bed, config, "--json", "exec", "uname -n")
    assert refused.returncode == 4 and "a jump host on the way" in str(one(refused)["message"])

    trusted = flinger(bed, config, "--json", "trust")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    details = one(trusted)["details"]
    assert isinstance(details, dict)
    assert details["state"] == "recorded" and details["jump_hosts"][0]["state"] == "recorded"
    assert known(bed, f"[{bed_addr(1)}]:{PORT}") and known(bed, f"[{bed_addr(2)}]:{PORT}")

    ran = flinger(bed, config, "exec", "echo via-$((40+2))")
    assert ran.returncode == 0 and "[inner] via-42" in ran.stdout, ran.stdout + ran.stderr
    assert bed.plain_ssh("inner-alias", "true").returncode == 0  # plain ssh agrees
    # it went through the bastion: the bastion's sshd opened the forward to the inner host
    assert f"to {bed_addr(2)} port {PORT}" in (bed.hosts["bastion"].directory / "log").read_text()
    again = flinger(bed, config, "--json", "trust")
    assert one(again)["details"]["state"] == "already trusted"  # type: ignore[index]


def test_host_key_alias_and_hashed_known_hosts(bed: Bed) -> None:
    (bed.ssh_dir / "known_hosts").write_text("")
    (bed.ssh_dir / "config.d" / "zz-hash").write_text("Host *\n  HashKnownHosts yes\n")
    try:
        config = bed.deploy_toml({"aliased": {"addr": "keyalias"}})
        trusted = flinger(bed, config, "--json", "trust")
        assert trusted.returncode == 0, trusted.stdout
        assert one(trusted)["details"]["name"] == "bastion-key"  # type: ignore[index]
        text = (bed.ssh_dir / "known_hosts").read_text()
        assert text.startswith("|1|") and "bastion-key" not in text and bed_addr(1) not in text
        assert known(bed, "bastion-key")  # OpenSSH finds it under the alias
        assert flinger(bed, config, "exec", "true").returncode == 0
        assert bed.plain_ssh("keyalias", "true").returncode == 0
    finally:
        (bed.ssh_dir / "config.d" / "zz-hash").unlink()


def test_host_certificates_from_a_known_authority_need_no_trust(bed: Bed) -> None:
    ca = (bed.directory / "host_ca.pub").read_text().split()
    other = keygen(bed.directory / "other_ca").with_suffix(".pub").read_text().split()
    config = bed.deploy_toml({"certhost": {"addr": "certhost"}})
    (bed.ssh_dir / "known_hosts").write_text(f"@cert-authority 127.78.0.* {ca[0]} {ca[1]}\n")
    ran = flinger(bed, config, "exec", "true")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert bed.plain_ssh("certhost", "true").returncode == 0
    trusted = flinger(bed, config, "--json", "trust")
    assert one(trusted)["details"]["state"] == "trusted by certificate authority"  # type: ignore[index]
    assert (bed.ssh_dir / "known_hosts").read_text().count("\n") == 1  # nothing recorded

    (bed.ssh_dir / "known_hosts").write_text(f"@cert-authority 127.78.0.* {other[0]} {other[1]}\n")
    refused = flinger(bed, config, "--json", "exec", "true")
    assert refused.returncode == 4 and "unknown host key" in str(one(refused)["message"])
    assert bed.plain_ssh("certhost", "true").returncode == 255

    host_key = (bed.directory / "certhost-keys" / "ssh_host_ed25519_key.pub").read_text().split()
    (bed.ssh_dir / "known_hosts").write_text(
        f"@cert-authority 127.78.0.* {ca[0]} {ca[1]}\n@revoked * {host_key[0]} {host_key[1]}\n"
    )
    revoked = flinger(bed, config, "--json", "exec", "true")
    assert revoked.returncode == 4 and "@revoked" in str(one(revoked)["message"])
    assert bed.plain_ssh("certhost", "true").returncode == 255


def _trust_all(bed: Bed) -> None:
    lines = [bed.hosts[n].known_line() for n in ("bastion", "inner", "usercert", "picky", "narrow")]
    (bed.ssh_dir / "known_hosts").write_text("\n".join(lines) + "\n")


def test_user_certificates_and_identities_picked_from_the_agent(bed: Bed) -> None:
    _trust_all(bed)
    config = bed.deploy_toml({"usercert": {"addr": "usercert"}, "picky": {"addr": "picky"}})
    ran = flinger(bed, config, "exec", "echo in")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "[usercert] in" in ran.stdout and "[picky] in" in ran.stdout
    assert bed.plain_ssh("usercert", "true").returncode == 0 and bed.plain_ssh("picky", "true").returncode == 0
    # without IdentitiesOnly the agent offers its keys in order: MaxAuthTries 3 ends the login
    crowded = bed.deploy_toml({"picky": {"addr": "picky-unnamed"}})
    failed = flinger(bed, crowded, "--json", "exec", "true")
    assert failed.returncode == 4
    message = str(one(failed)["message"])
    assert "too many authentication failures" in message and "IdentitiesOnly" in message
    assert bed.plain_ssh("picky-unnamed", "true").returncode == 255


def test_a_host_with_max_sessions_2_runs_every_command(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    from flinger.ssh.pool import ConnectionPool
    from flinger.topology import load_topology

    _trust_all(bed)
    for key, value in bed.env().items():
        monkeypatch.setenv(key, value)
    topology = load_topology(bed.deploy_toml({"narrow": {"addr": "narrow"}}))
    pool = ConnectionPool(topology.servers, topology.ssh)
    results: list[str] = []

    def one_command(i: int) -> None:
        with pool.lease("narrow") as conn:
            results.append(conn.run(f"sleep 1; echo done-{i}").stdout.strip())

    try:
        threads = [threading.Thread(target=one_command, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(results) == [f"done-{i}" for i in range(6)]
        assert pool.get("narrow").sessions.limit <= 2  # learned from the host's refusals
    finally:
        pool.close()


def test_a_wrong_key_of_another_type_is_a_change_that_replace_fixes(bed: Bed) -> None:
    wrong = keygen(bed.directory / "wrong_rsa", "rsa").with_suffix(".pub").read_text().split()
    (bed.ssh_dir / "known_hosts").write_text(f"[{bed_addr(7)}]:{PORT} {wrong[0]} {wrong[1]}\n")
    config = bed.deploy_toml({"twokeys": {"addr": "twokeys"}})
    refused = flinger(bed, config, "--json", "exec", "true")
    assert refused.returncode == 4 and "CHANGED" in str(one(refused)["message"])
    assert "--replace" in str(one(refused)["message"])
    assert bed.plain_ssh("twokeys", "true").returncode == 255
    trust = flinger(bed, config, "--json", "trust")
    assert trust.returncode != 0 and "CHANGED" in str(one(trust)["message"])
    replaced = flinger(bed, config, "--json", "trust", "--replace")
    assert replaced.returncode == 0 and one(replaced)["details"]["state"] == "replaced"  # type: ignore[index]
    assert flinger(bed, config, "exec", "true").returncode == 0
    assert bed.plain_ssh("twokeys", "true").returncode == 0


def test_a_silent_host_times_out_in_connect_timeout(bed: Bed) -> None:
    listener = socket.socket()
    listener.bind((bed_addr(9), PORT))
    listener.listen(8)  # accepts, never says a word
    try:
        config = bed.deploy_toml({"silent": {"addr": bed_addr(9), "port": PORT}})
        (bed.ssh_dir / "known_hosts").write_text(f"[{bed_addr(9)}]:{PORT} {bed.hosts['bastion'].host_pub}\n")
        started = time.monotonic()
        proc = flinger(bed, config, "--json", "exec", "true")
        took = time.monotonic() - started
        assert proc.returncode == 4 and "no SSH banner within 3s" in str(one(proc)["message"])
        assert took < 30, took
        plain = bed.plain_ssh("-o", "ConnectTimeout=3", "-p", str(PORT), bed_addr(9), "true")
        assert plain.returncode == 255 and "banner exchange" in plain.stderr
    finally:
        listener.close()


def _exec_on_bastion(bed: Bed, config: Path, command: str) -> tuple[subprocess.Popen[str], BedHost]:
    """`flinger exec COMMAND` started in the background, once its connection to the bastion is up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(config), "--json", "exec", command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **bed.env()},
    )  # fmt: skip
    host = bed.hosts["bastion"]
    deadline = time.monotonic() + 20
    while not host.connection_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # the command runs
    return proc, host


def test_a_connection_lost_under_a_command_is_unreachable(bed: Bed) -> None:
    _trust_all(bed)
    config = bed.deploy_toml({"bastion": {"addr": "bastion"}})
    proc, host = _exec_on_bastion(bed, config, "echo started; sleep 30")
    for pid in host.connection_processes():  # sshd's processes for the connection die
        os.kill(pid, 9)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4, out + err
    result = json.loads(out)["servers"][0]
    assert result["status"] == "unreachable" and "connection lost" in result["message"]


def test_a_silent_peer_is_found_by_its_keepalives(bed: Bed) -> None:
    _trust_all(bed)
    (bed.ssh_dir / "known_hosts").write_text(
        (bed.ssh_dir / "known_hosts").read_text() + f"quick-alive {bed.hosts['bastion'].host_pub}\n"
    )
    config = bed.deploy_toml({"bastion": {"addr": "quick-alive"}})
    proc, host = _exec_on_bastion(bed, config, "sleep 120")
    stopped = host.connection_processes()
    started = time.monotonic()
    for pid in stopped:  # the host stops answering; TCP stays up
        os.kill(pid, signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - started
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 4, out + err
    result = json.loads(out)["servers"][0]
    assert "connection lost" in result["message"] and "keepalives unanswered" in result["message"]
    assert took < 30, took  # the user's ServerAliveInterval 2 x 3, not the command timeout


def test_the_deploy_pre_check_looks_where_openssh_looks(bed: Bed) -> None:
    """`deploy status` checks trust before connecting: under the alias's HostName and Port,
    in the UserKnownHostsFile the config names (not port 22 of the raw addr)."""
    (bed.ssh_dir / "known_hosts").write_text("")
    config = bed.deploy_toml({"aliased": {"addr": "bastion"}})
    refused = flinger(bed, config, "--json", "deploy", "status")
    assert refused.returncode == 4
    message = str(one(refused)["message"])
    assert f"nothing for [{bed_addr(1)}]:{PORT} in {bed.ssh_dir}/known_hosts" in message
    assert "flinger trust --servers aliased" in message
    assert flinger(bed, config, "trust").returncode == 0
    status = flinger(bed, config, "--json", "deploy", "status")
    assert "unknown host key" not in status.stdout and one(status)["step"] != "connect", status.stdout
