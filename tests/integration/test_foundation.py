"""The foundation against real sshd hosts: exec, unreachable servers, host keys, sync, agent forwarding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flinger_helpers import derived_config, run_flinger

import flinger_sandbox as sb
from flinger_sandbox import SandboxState

pytestmark = pytest.mark.integration


def test_exec_runs_on_three_servers_in_parallel_with_prefixed_output(sandbox: SandboxState) -> None:
    proc = run_flinger("-c", str(sandbox.config_path), "exec", "uname -n; echo done-$((6*7))")
    assert proc.returncode == 0, proc.stderr
    for node in ("node1", "node2", "node3"):
        assert f"[{node}] {node}" in proc.stdout
        assert f"[{node}] done-42" in proc.stdout
    assert "[build1]" not in proc.stdout


def test_exec_json_and_failed_command(sandbox: SandboxState) -> None:
    proc = run_flinger(
        "-c",
        str(sandbox.config_path),
        "--json",
        "exec",
        "--servers",
        "node1,node2",
        'if [ "$(uname -n)" = node2 ]; then echo boom; exit 3; fi; echo fine',
    )
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    by = {s["server"]: s for s in doc["servers"]}
    assert by["node1"]["status"] == "ok"
    assert by["node2"]["status"] == "failed" and by["node2"]["exit_code"] == 3
    assert "boom" in by["node2"]["tail"]


def test_stopped_server_is_unreachable_while_others_succeed(sandbox: SandboxState) -> None:
    sb.stop_host(sandbox.directory, "node2")
    try:
        proc = run_flinger("-c", str(sandbox.config_path), "--json", "exec", "echo alive")
    finally:
        sb.start_host(sandbox.directory, "node2")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    by = {s["server"]: s for s in json.loads(proc.stdout)["servers"]}
    assert by["node2"]["status"] == "unreachable"
    assert "node2" in by["node2"]["message"]
    assert by["node1"]["status"] == by["node3"]["status"] == "ok"


def test_changed_host_key_is_refused_and_nothing_runs(sandbox: SandboxState, ssh_run) -> None:  # type: ignore[no-untyped-def]
    marker = "/opt/ran-despite-changed-key"
    sb.rotate_host_key(sandbox.directory, "node3")
    try:
        proc = run_flinger("-c", str(sandbox.config_path), "--json", "exec", "--servers", "node3", f"touch {marker}")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        server = json.loads(proc.stdout)["servers"][0]
        assert server["status"] == "unreachable"
        assert "host key CHANGED" in server["message"] and "SHA256:" in server["message"]
        # trust without --replace refuses too; with --replace it records the new key
        refused = run_flinger("-c", str(sandbox.config_path), "trust", "--servers", "node3")
        assert refused.returncode != 0 and "CHANGED" in refused.stdout
    finally:
        sb.refresh_known_hosts(sandbox.directory)
    check = ssh_run(sandbox, "node3", "test", "!", "-e", marker)
    assert check.returncode == 0, "the command ran on a host whose key had changed"


def test_unknown_host_key_is_refused_until_trusted(sandbox: SandboxState, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = derived_config(sandbox, tmp_path, {"ssh.known_hosts": str(empty)})
    proc = run_flinger("-c", str(config), "exec", "--servers", "node1", "true")
    assert proc.returncode == 4
    assert "unknown host key" in proc.stdout and "flinger trust --servers node1" in proc.stdout
    trusted = run_flinger("-c", str(config), "trust", "--servers", "node1")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "127.77." in empty.read_text() or sandbox.hosts["node1"].addr in empty.read_text()
    again = run_flinger("-c", str(config), "exec", "--servers", "node1", "true")
    assert again.returncode == 0, again.stdout


def test_sync_sends_a_tree_then_only_the_delta_then_deletes(sandbox: SandboxState, tmp_path: Path, ssh_run) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = bytes(range(256)) * 4096  # 1 MiB, incompressible enough to see the delta
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "small.txt").write_text("hello\n")
    (src / "gone.txt").write_text("bye\n")
    (src / ".gitignore").write_text("ignored.log\n")
    (src / "ignored.log").write_text("x\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    config = derived_config(sandbox, tmp_path, {"source_dir": str(src), "builder.source_dir": "/home/deploy/sync-test"})

    first = run_flinger("-c", str(config), "--json", "sync")
    assert first.returncode == 0, first.stderr
    stats1 = json.loads(first.stdout)
    assert set(stats1["transferred"]) >= {"big.bin", "sub/small.txt", "gone.txt"}
    assert stats1["stats"]["literal_bytes"] >= len(big) // 2
    listing = ssh_run(sandbox, "build1", "sh", "-c", "cd /home/deploy/sync-test && find . -type f | sort")
    assert "./big.bin" in listing.stdout and "./ignored.log" not in listing.stdout and "./.git/" not in listing.stdout

    # change one byte of the big file and delete another file
    (src / "big.bin").write_bytes(b"Z" + big[1:])
    # rsync's quick check compares size and whole-second mtime: make this a later edit.
    later = (src / "big.bin").stat().st_mtime + 10
    os.utime(src / "big.bin", (later, later))
    (src / "gone.txt").unlink()
    second = run_flinger("-c", str(config), "--json", "sync")
    assert second.returncode == 0, second.stderr
    stats2 = json.loads(second.stdout)
    assert stats2["transferred"] == ["big.bin"]
    assert stats2["deleted"] == ["gone.txt"]
    assert stats2["stats"]["matched_bytes"] > len(big) // 2
    assert stats2["stats"]["literal_bytes"] < len(big) // 8
    checksum = ssh_run(sandbox, "build1", "head", "-c", "1", "/home/deploy/sync-test/big.bin")
    assert checksum.stdout == "Z"
    assert ssh_run(sandbox, "build1", "test", "-e", "/home/deploy/sync-test/gone.txt").returncode == 1


def test_agent_forwarded_to_the_builder_reaches_another_host(sandbox: SandboxState) -> None:
    from flinger.ssh.openssh import strict_argv
    from flinger.ssh.pool import ConnectionPool
    from flinger.topology import load_topology

    topo = load_topology(sandbox.config_path)
    node = topo.servers["node1"]
    pool = ConnectionPool(topo.servers, topo.ssh, agent_for={"build1"})
    plain = ConnectionPool(topo.servers, topo.ssh)
    try:
        builder = pool.get("build1")
        assert topo.ssh.known_hosts is not None and node.port is not None
        builder.put_file(topo.ssh.known_hosts, "/home/deploy/kh-test", mode=0o600)
        hop = [*strict_argv(topo.ssh, "/home/deploy/kh-test", node.port, "deploy"), node.addr, "uname", "-n"]
        import shlex

        line = "ls ~/.ssh/id_* 2>/dev/null | wc -l; " + shlex.join(hop)
        result = builder.run(line, check=False)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.split() == ["0", "node1"]  # no key of its own, yet reaches node1
        # without a forwarded agent the same hop fails: the builder has no key
        no_agent = plain.get("build1").run(shlex.join(hop), check=False)
        assert no_agent.exit_code != 0
    finally:
        pool.close()
        plain.close()


def test_ctrl_c_ends_a_running_exec_at_once_then_prints_the_summary(sandbox: SandboxState) -> None:
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "flinger", "-c", str(sandbox.config_path), "--parallel", "1", "exec",
            "echo started; sleep 3; echo finished"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "started" in line:
            proc.send_signal(signal.SIGINT)  # while the first server runs its command
            break
    rest = proc.stdout.read()
    out = "".join(seen) + rest
    assert proc.wait(timeout=60) == 130, out
    assert "finished" not in out  # an exec is a command the operator stops: it was ended there
    rows = {line.split()[1]: line.split()[3] for line in out.splitlines() if line.startswith("│ node")}
    assert sorted(rows.values()) == ["interrupted", "interrupted", "interrupted"], out
    assert "stopped by SIGINT while it ran" in out and "not started: interrupted" in out, out
