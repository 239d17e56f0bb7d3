"""Real networks: the user's own known_hosts (markers, comments), strict jump hosts on the
OpenSSH path, ssh_config ProxyCommand, command timeouts, and missing local programs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from flinger_helpers import derived_config, run_flinger

from flinger_sandbox import SandboxState

pytestmark = pytest.mark.integration


def _user_known_hosts(sandbox: SandboxState, tmp_path: Path) -> Path:
    """The sandbox's keys inside a file as users keep them: comments, a CA line, a revoked key."""
    path = tmp_path / "known_hosts"
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    assert other.returncode == 0
    ca_blob = (tmp_path / "other.pub").read_text().split()[1]
    path.write_text(
        "# kept by hand\n"
        f"@cert-authority *.corp.example ssh-ed25519 {ca_blob}\n"
        + sandbox.known_hosts.read_text()
        + "# the end, no newline after the next line\n"
        f"old.example ssh-ed25519 {ca_blob}"
    )
    return path


def test_a_users_known_hosts_with_markers_works_and_trust_only_appends(sandbox: SandboxState, tmp_path: Path) -> None:
    path = _user_known_hosts(sandbox, tmp_path)
    config = derived_config(sandbox, tmp_path, {"ssh.known_hosts": str(path)})
    proc = run_flinger("-c", str(config), "exec", "uname -n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[node1] node1" in proc.stdout
    assert "@cert-authority" not in proc.stderr and "skipped" not in proc.stderr  # lines OpenSSH reads
    assert "Traceback" not in proc.stderr and "InvalidHostKey" not in proc.stdout + proc.stderr

    # node3 forgotten: trust records it by appending a line; nothing else changes
    node3 = "[{}]:{}".format(*sandbox.hosts["node3"])
    lines = path.read_text().splitlines(keepends=True)
    without = "".join(line for line in lines if not line.startswith(node3))
    path.write_text(without)
    trusted = run_flinger("-c", str(config), "trust", "--servers", "node3")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    after = path.read_text()
    assert after.startswith(without)
    added = after[len(without) :]
    assert added.startswith("\n" + node3 + " ssh-ed25519 ") and added.count("\n") == 2


def test_a_revoked_key_is_refused(sandbox: SandboxState, tmp_path: Path) -> None:
    path = _user_known_hosts(sandbox, tmp_path)
    node2 = "[{}]:{}".format(*sandbox.hosts["node2"])
    blob = next(line.split()[2] for line in sandbox.known_hosts.read_text().splitlines() if line.startswith(node2))
    path.write_text(path.read_text() + f"\n@revoked * ssh-ed25519 {blob}\n")
    config = derived_config(sandbox, tmp_path, {"ssh.known_hosts": str(path)})
    proc = run_flinger("-c", str(config), "--json", "exec", "--servers", "node1,node2", "true")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    results = {r["server"]: r for r in json.loads(proc.stdout)["servers"]}
    assert results["node1"]["status"] == "ok"
    assert results["node2"]["status"] == "unreachable" and "@revoked" in results["node2"]["message"]
    again = run_flinger("-c", str(config), "trust", "--servers", "node2")
    assert again.returncode != 0 and "@revoked" in again.stdout + again.stderr


def test_sync_through_a_jump_host_checks_the_jump_hosts_key_strictly(sandbox: SandboxState, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hi\n")
    jump = "deploy@{}:{}".format(*sandbox.hosts["node3"])
    edits = {"source_dir": str(src), "builder.source_dir": f"$HOME/jump-{tmp_path.name}", "ssh.jump": jump}
    config = derived_config(sandbox, tmp_path, edits)
    ok = run_flinger("-c", str(config), "sync")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The same, with the jump host's key missing from flinger's known_hosts: refused, even
    # though the target's key is there (with -J the jump was checked elsewhere, or asked about).
    node3 = "[{}]:{}".format(*sandbox.hosts["node3"])
    partial = tmp_path / "partial_known_hosts"
    kept = [ln for ln in sandbox.known_hosts.read_text().splitlines(True) if not ln.startswith(node3)]
    partial.write_text("".join(kept))
    strict = derived_config(sandbox, tmp_path, {**edits, "ssh.known_hosts": str(partial)})
    refused = run_flinger("-c", str(strict), "sync")
    assert refused.returncode != 0
    assert f"No ED25519 host key is known for {node3}" in refused.stderr, refused.stderr


def test_an_ssh_config_proxycommand_is_honoured(sandbox: SandboxState, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    addr, port = sandbox.hosts["node3"]
    # Everything to node1 goes through node3; a ProxyCommand that was ignored would still connect
    # straight away, so it also leaves a mark that it ran.
    mark = tmp_path / "proxy-ran"
    proxy = (
        f"sh -c 'touch {mark}; exec ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={sandbox.known_hosts} -p {port} -W %h:%p deploy@{addr}'"
    )
    node1 = sandbox.hosts["node1"][0]
    (home / ".ssh" / "config").write_text(f"Host {node1}\n  ProxyCommand {proxy}\n")
    edits = {"ssh.use_ssh_config": True, "ssh.config": str(home / ".ssh" / "config")}
    config = derived_config(sandbox, tmp_path, edits)
    proc = run_flinger("-c", str(config), "exec", "--servers", "node1", "uname -n")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[node1] node1" in proc.stdout
    assert mark.exists()


def test_a_hung_command_times_out_with_its_name_and_output(sandbox: SandboxState, tmp_path: Path) -> None:
    config = derived_config(sandbox, tmp_path, {"ssh.command_timeout": 2})
    proc = run_flinger("-c", str(config), "--json", "exec", "--servers", "node1", "echo started-ok; sleep 60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["servers"][0]
    assert "did not finish within 2s" in result["message"] and "sleep 60" in result["message"]
    assert result["exit_code"] == 124 and "started-ok" in result["tail"]


def test_a_missing_local_rsync_is_one_line_naming_the_package(sandbox: SandboxState, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_flinger("-c", str(sandbox.config_path), "sync", env={"PATH": str(empty)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [
        "flinger: error: rsync and ssh not found on this machine (PATH): "
        "apt-get install rsync openssh-client (Debian/Ubuntu)"
    ], proc.stderr
    assert os.environ.get("PATH")  # the test's own PATH is untouched


def test_exec_keeps_stdout_stderr_and_exit_status_apart_when_it_fails(sandbox: SandboxState) -> None:
    proc = run_flinger("-c", str(sandbox.config_path), "--json", "exec", "--servers", "node1",
                       "echo to-out; echo to-err >&2; exit 3")  # fmt: skip
    assert proc.returncode == 1
    result = json.loads(proc.stdout)["servers"][0]
    assert result["status"] == "failed" and result["exit_code"] == 3
    assert result["details"]["stdout"] == "to-out\n" and result["details"]["stderr"] == "to-err\n"
    human = run_flinger("-c", str(sandbox.config_path), "exec", "--servers", "node1", "exit 3")
    assert "node1: node1:" not in human.stdout + human.stderr
    assert "node1: `exit 3` exited with status 3" in human.stdout
