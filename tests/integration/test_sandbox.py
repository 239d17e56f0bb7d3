"""The local sandbox itself: real sshd hosts, private mounts, runit, agent forwarding, lifecycle."""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flinger_helpers import run_sandbox_cli

from flinger.errors import FlingerError
from flinger.topology import load_topology
from flinger_sandbox import (
    SandboxState,
    down,
    env,
    refresh_known_hosts,
    rotate_host_key,
    start_host,
    status,
    stop_host,
    up,
)
from flinger_sandbox import state as sandbox_state
from flinger_sandbox.net import is_listening
from flinger_sandbox.paths import LOGIN_USER

pytestmark = pytest.mark.integration

SshRun = Callable[..., subprocess.CompletedProcess[str]]
SERVICE_WAIT = 30.0  # runsvdir rescans /etc/service every 5 seconds


@pytest.fixture(scope="module")
def hosts3(sandbox_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxState]:
    """A 3-host sandbox of this module's own: some tests here stop hosts and change keys."""
    directory = tmp_path_factory.mktemp("sandbox3")
    state = up(directory, 3)
    try:
        yield state
    finally:
        down(directory)


def _process_gone(pid: int) -> bool:
    """Gone or a zombie (this machine's init may never reap orphans)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return text[text.rindex(")") + 2 :].split()[0] == "Z"


def _install_service(ssh_run: SshRun, state: SandboxState, host: str, name: str, run_script: str) -> None:
    script = (
        f"mkdir -p /etc/sv/{name} && printf '%s\\n' {shlex.quote(run_script)} > /etc/sv/{name}/run"
        f" && chmod +x /etc/sv/{name}/run && ln -sfn /etc/sv/{name} /etc/service/{name}"
    )
    result = ssh_run(state, host, "sh", "-c", script)
    assert result.returncode == 0, result.stderr


def _wait_for_run(ssh_run: SshRun, state: SandboxState, host: str, name: str) -> str:
    deadline = time.monotonic() + SERVICE_WAIT
    while True:
        out = ssh_run(state, host, "sv", "status", name).stdout
        if out.startswith("run:") or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_every_host_takes_the_agent_key_with_strict_host_keys(hosts3: SandboxState, ssh_run: SshRun) -> None:
    assert list(hosts3.hosts) == ["build1", "node1", "node2"]
    for name in hosts3.hosts:
        result = ssh_run(hosts3, name, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == name


def test_known_hosts_holds_each_hosts_real_key(hosts3: SandboxState) -> None:
    lines = hosts3.known_hosts.read_text().splitlines()
    for (name, (addr, port)), line in zip(hosts3.hosts.items(), lines, strict=True):
        pub = (hosts3.directory / "hosts" / name / "ssh_host_ed25519_key.pub").read_text().split()
        assert line.split() == [f"[{addr}]:{port}", pub[0], pub[1]]


def test_opt_is_private_to_each_host(hosts3: SandboxState, ssh_run: SshRun) -> None:
    marker = f"sandbox-test-{secrets.token_hex(6)}"
    wrote = ssh_run(hosts3, "node1", "sh", "-c", f"echo hello > /opt/{marker}")
    assert wrote.returncode == 0, wrote.stderr
    assert ssh_run(hosts3, "node1", "cat", f"/opt/{marker}").stdout == "hello\n"
    assert ssh_run(hosts3, "node2", "test", "-e", f"/opt/{marker}").returncode == 1
    assert not Path("/opt", marker).exists()
    assert (hosts3.directory / "hosts" / "node1" / "opt" / marker).exists()


def test_home_is_private_and_holds_no_key(hosts3: SandboxState, ssh_run: SshRun) -> None:
    result = ssh_run(hosts3, "node2", "sh", "-c", "ls -A ~/.ssh", as_root=False)
    assert result.stdout.split() == ["authorized_keys"]
    assert not Path("/home", LOGIN_USER, ".ssh", "authorized_keys").exists()


def test_login_is_a_plain_user_with_sudo_and_root_is_refused(hosts3: SandboxState, ssh_run: SshRun) -> None:
    plain = ssh_run(hosts3, "node1", "id", "-un", as_root=False)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == LOGIN_USER
    assert ssh_run(hosts3, "node1", "id", "-un").stdout.strip() == "root"  # through sudo -n
    # The login user exists inside the hosts only: this machine's /etc is left alone.
    if not _machine_had_user():
        assert f"\n{LOGIN_USER}:" not in "\n" + Path("/etc/passwd").read_text()
    addr, port = hosts3.hosts["node1"]
    as_root = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={hosts3.known_hosts}", "-p", str(port), f"root@{addr}", "true"],
        capture_output=True, text=True, env={**os.environ, "SSH_AUTH_SOCK": str(hosts3.agent_socket)},
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert as_root.returncode == 255 and "Permission denied" in as_root.stderr


def _machine_had_user() -> bool:
    """Whether the login user was on this machine before any sandbox (then nothing is proven)."""
    import pwd

    try:
        pwd.getpwnam(LOGIN_USER)
    except KeyError:
        return False
    return True


def test_sshd_keeps_its_stock_limits(hosts3: SandboxState) -> None:
    config = (hosts3.directory / "hosts" / "node1" / "sshd_config").read_text()
    assert "MaxSessions" not in config and "MaxStartups" not in config and "PermitRootLogin no" in config


def test_runit_service_runs_on_its_own_host_only(hosts3: SandboxState, ssh_run: SshRun) -> None:
    _install_service(ssh_run, hosts3, "node1", "sleeper", "#!/bin/sh\nexec sleep 1000")
    assert _wait_for_run(ssh_run, hosts3, "node1", "sleeper").startswith("run: sleeper")
    other = ssh_run(hosts3, "node2", "sv", "status", "sleeper")
    assert not other.stdout.startswith("run:")
    assert not Path("/etc/sv/sleeper").exists()


def test_agent_forwarding_carries_to_a_second_host(hosts3: SandboxState, ssh_run: SshRun) -> None:
    addr, port = hosts3.hosts["node2"]
    # The login user cannot read this machine's files: give it the known_hosts on node1 itself.
    known = shlex.quote(hosts3.known_hosts.read_text())
    assert ssh_run(hosts3, "node1", "sh", "-c", f"printf %s {known} > ~/kh", as_root=False).returncode == 0
    inner = [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", "UserKnownHostsFile=~/kh", "-o", "GlobalKnownHostsFile=/dev/null",
        "-p", str(port), f"{LOGIN_USER}@{addr}", "hostname",
    ]  # fmt: skip
    forwarded = ssh_run(hosts3, "node1", *inner, forward_agent=True, as_root=False)  # sudo drops the agent
    assert forwarded.returncode == 0, forwarded.stderr
    assert forwarded.stdout.strip() == "node2"
    # Without the forwarded agent node1 has no key that node2 accepts.
    alone = ssh_run(hosts3, "node1", *inner, as_root=False)
    assert alone.returncode != 0
    assert "Permission denied" in alone.stderr


def test_stop_host_refuses_connections_until_start_host(hosts3: SandboxState, ssh_run: SshRun) -> None:
    addr, port = hosts3.hosts["node2"]
    stop_host(hosts3.directory, "node2")
    try:
        assert not is_listening(addr, port)
        assert ssh_run(hosts3, "node2", "true").returncode == 255
        assert ssh_run(hosts3, "node1", "true").returncode == 0
        by_name = {s.name: s for s in status(hosts3.directory)}
        assert not by_name["node2"].sshd_alive
        assert by_name["node2"].supervisor_alive
        assert by_name["node1"].sshd_alive
    finally:
        start_host(hosts3.directory, "node2")
    assert ssh_run(hosts3, "node2", "hostname").stdout.strip() == "node2"


def test_restarted_sshd_keeps_the_hosts_private_mounts(hosts3: SandboxState, ssh_run: SshRun) -> None:
    marker = f"keep-{secrets.token_hex(6)}"
    assert ssh_run(hosts3, "node2", "touch", f"/opt/{marker}").returncode == 0
    stop_host(hosts3.directory, "node2")
    start_host(hosts3.directory, "node2")
    assert ssh_run(hosts3, "node2", "test", "-e", f"/opt/{marker}").returncode == 0
    assert ssh_run(hosts3, "node1", "test", "-e", f"/opt/{marker}").returncode == 1


def test_rotated_host_key_is_refused_until_known_hosts_is_refreshed(hosts3: SandboxState, ssh_run: SshRun) -> None:
    old_known_hosts = hosts3.known_hosts.read_text()
    rotate_host_key(hosts3.directory, "node1")
    try:
        assert hosts3.known_hosts.read_text() == old_known_hosts
        refused = ssh_run(hosts3, "node1", "true")
        assert refused.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
        assert ssh_run(hosts3, "node2", "true").returncode == 0
    finally:
        refresh_known_hosts(hosts3.directory)
    assert hosts3.known_hosts.read_text() != old_known_hosts
    assert ssh_run(hosts3, "node1", "true").returncode == 0


def test_up_again_returns_the_running_sandbox(hosts3: SandboxState) -> None:
    again = up(hosts3.directory, 3)
    assert again.hosts == hosts3.hosts
    with pytest.raises(FlingerError, match="already runs"):
        up(hosts3.directory, 5)


def test_deploy_toml_describes_the_sandbox(hosts3: SandboxState) -> None:
    topology = load_topology(hosts3.config_path)
    assert topology.builder.server == "build1"
    assert topology.builder_server().roles == ("builder",)
    assert topology.deployment.servers == ("node1", "node2")
    assert topology.deployment.threshold == 2
    assert topology.servers["node1"].roles == ("seed", "node")
    assert topology.servers["node2"].roles == ("node",)
    assert topology.ssh.known_hosts == hosts3.known_hosts
    assert topology.ssh.use_ssh_config is False
    assert (topology.source_dir / "pyproject.toml").is_file()
    for name, (addr, port) in hosts3.hosts.items():
        server = topology.servers[name]
        assert (server.addr, server.port, server.user) == (addr, port, LOGIN_USER)
        assert server.privilege == "sudo"
        assert server.service_manager == "runit"


def test_env_exports_the_agent_socket(hosts3: SandboxState) -> None:
    assert f"export SSH_AUTH_SOCK={hosts3.agent_socket}\n" in env(hosts3.directory)


def test_up_refuses_a_directory_a_host_would_hide(sandbox_prerequisites: None) -> None:
    with pytest.raises(FlingerError, match="must not be under /opt"):
        up(Path("/opt/flinger-sandbox-test"), 2)
    assert not Path("/opt/flinger-sandbox-test").exists()


def test_down_stops_every_recorded_process_and_its_services(
    sandbox_prerequisites: None, tmp_path_factory: pytest.TempPathFactory, ssh_run: SshRun
) -> None:
    directory = tmp_path_factory.mktemp("sandbox-down")
    state = up(directory, 2)
    try:
        addr, _ = state.hosts["node1"]
        _install_service(ssh_run, state, "node1", "web", f"#!/bin/sh\nexec python3 -m http.server --bind {addr} 8123")
        assert _wait_for_run(ssh_run, state, "node1", "web").startswith("run: web")
        record = sandbox_state.load(directory)
        assert record is not None
        pids = [p.pid for h in record.hosts for p in h.processes()]
        assert record.agent is not None
        pids.append(record.agent.pid)
        host_key = (directory / "hosts" / "node1" / "ssh_host_ed25519_key.pub").read_text()
    finally:
        stopped = down(directory)
    assert stopped == ["build1", "node1"]
    assert all(_process_gone(pid) for pid in pids)
    assert not is_listening(addr, 8123)
    for host_addr, port in state.hosts.values():
        assert not is_listening(host_addr, port)
    assert not state.agent_socket.exists()
    assert status(directory) == []
    said = run_sandbox_cli("status", "--dir", str(directory))
    assert said.returncode == 4 and "no sandbox running" in said.stderr, said
    # Keys stay for the next up, until a purge.
    again = up(directory, 2)
    try:
        assert (directory / "hosts" / "node1" / "ssh_host_ed25519_key.pub").read_text() == host_key
        assert ssh_run(again, "node1", "true").returncode == 0
    finally:
        purged = run_sandbox_cli("down", "--purge", "--dir", str(directory))
    assert purged.returncode == 0 and "purged" in purged.stderr, purged
    assert not directory.exists()


def test_shared_session_sandbox_has_four_hosts(sandbox: SandboxState, ssh_run: SshRun) -> None:
    assert list(sandbox.hosts) == ["build1", "node1", "node2", "node3"]
    assert os.environ["SSH_AUTH_SOCK"] == str(sandbox.agent_socket)
    assert sandbox.config_path.name == "deploy.toml"
    assert ssh_run(sandbox, "node3", "hostname").stdout.strip() == "node3"
