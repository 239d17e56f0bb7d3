"""deploy on the sandbox: real sshd, rsync from the builder over the forwarded agent, runit.

The tests of this module run in order on the session sandbox and share its state:
install → checks → no-change re-install → lock → unreachable server → failing health → uninstall.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from flinger_helpers import by_server, fetch_cert, flinger_json, quorum_states, run_flinger, why

import flinger_sandbox as sb
from flinger.protocol.plans import LockPlan
from flinger.secrets.ca import cert_sans, chains_to
from flinger.topology import load_topology
from flinger_sandbox import SandboxState
from tests.remote_helpers import envelope, eventually
from tests.state_helpers import overlay_of

pytestmark = pytest.mark.integration

NODES = ("node1", "node2", "node3")
WATCHED = "/opt /srv /etc/sv /etc/service /root /home/deploy"


def tree(ssh_run: Any, state: SandboxState, host: str) -> list[str]:
    """Every path (with type and mode) under the directories a deploy may touch, but the staging dir."""
    script = (
        f"find {WATCHED} -xdev \\( -path /home/deploy/flinger-staging -o -path /home/deploy/.ssh \\) -prune -o "
        "-printf '%y %m %p\\n' 2>/dev/null | sort"
    )
    out = ssh_run(state, host, "sh", "-c", script)
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def deployed(sandbox: SandboxState) -> dict[str, Any]:
    from flinger_helpers import deploy_everything, run_ssh

    before = {h: tree(run_ssh, sandbox, h) for h in NODES}
    doc = deploy_everything(sandbox)
    return {"before": before, "install": doc, "topology": load_topology(sandbox.config_path)}


def test_install_runs_the_service_on_each_server_with_its_own_certificate(deployed: dict[str, Any]) -> None:
    topo = deployed["topology"]
    results = by_server(deployed["install"])
    assert set(results) == set(NODES) and all(r["status"] == "ok" for r in results.values())
    ca_path = topo.state_dir / "ca" / "ca.pem"
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    for name in NODES:
        server = topo.servers[name]
        cert, status = fetch_cert(server.addr, 8443, ca_path)
        assert chains_to(cert, ca)
        assert server.addr in " ".join(cert_sans(cert)) and name in " ".join(cert_sans(cert))
        assert status["name"] == name
        assert "share" not in json.dumps(status).replace("shares", "")


def test_builder_got_no_overlay_and_no_server_got_another_ones(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    topo = deployed["topology"]
    # A sandbox host's own files are its private mounts; the rest of / is the shared machine.
    found = ssh_run(
        sandbox, "build1", "sh", "-c", f"find {WATCHED} \\( -name share.json -o -name key.pem \\) 2>/dev/null || true"
    )
    assert found.stdout.strip() == "", f"overlay files on the builder: {found.stdout}"
    for name in NODES:
        local = overlay_of(topo, name)  # the sealed overlay, opened
        remote = ssh_run(sandbox, name, "cat", "/opt/quorum/current/overlay/tls/cert.pem")
        assert remote.stdout == local["tls/cert.pem"].decode()
        share = json.loads(ssh_run(sandbox, name, "cat", "/opt/quorum/current/overlay/share.json").stdout)
        assert share["index"] == json.loads(local["share.json"])["index"]
        indexes = ssh_run(
            sandbox,
            name,
            "sh",
            "-c",
            f"find {WATCHED} -name share.json -exec python3 -c "
            "'import json,sys; print(json.load(open(sys.argv[1]))[\"index\"])' {} \\;",
        )
        assert indexes.stdout.split() and set(indexes.stdout.split()) == {str(share["index"])}, (
            f"{name}: {indexes.stdout}"
        )
        modes = ssh_run(
            sandbox,
            name,
            "stat",
            "-c",
            "%a",
            "/opt/quorum/current/overlay/share.json",
            "/opt/quorum/current/overlay/tls/key.pem",
        )
        assert modes.stdout.split() == ["600", "600"]
        staged = ssh_run(sandbox, name, "sh", "-c", "ls -d /home/deploy/flinger-staging/overlay-* 2>/dev/null || true")
        assert staged.stdout.strip() == "", "the staged overlay was not removed"


def test_every_node_unseals(deployed: dict[str, Any]) -> None:
    assert quorum_states(deployed["topology"], NODES, until="unsealed") == {n: "unsealed" for n in NODES}


def test_second_install_with_nothing_changed_sends_no_package_bytes(
    deployed: dict[str, Any], sandbox: SandboxState
) -> None:
    code, doc = flinger_json(sandbox.config_path, "deploy", "install")
    assert code == 0
    for name, result in by_server(doc).items():
        details = result["details"]
        assert details["packages_sent"] == [], name
        assert details["push"].get("literal_bytes", 0) == 0, name
        assert details["changed"] is False, name


def test_status_reports_release_digests_and_running_services(deployed: dict[str, Any], sandbox: SandboxState) -> None:
    code, doc = flinger_json(sandbox.config_path, "deploy", "status")
    assert code == 0, doc
    built = json.loads(json.dumps(doc))  # plain data
    for name, result in by_server(built).items():
        details = result["details"]
        assert details["installed"] is True, name
        assert details["packages"]["quorum"]["digest"]
        assert next(s["state"] for s in details["services"] if s["name"] == "quorum").startswith("run"), details


TOOL = "/home/deploy/flinger-staging/flinger-remote.pyz"


def _hold_lock(sandbox: SandboxState, host: str, holder: str) -> Any:
    """Another run holding `host`'s deploy lock: an SSH session that took it and stays open
    until the returned ssh is killed (its remote side then reads the end of its input and
    goes: nothing is left running on the host)."""
    import subprocess

    addr, port = sandbox.hosts[host]
    plan = envelope("lock", LockPlan("acquire", "/opt/quorum", holder)).strip()
    line = f"echo {shlex.quote(plan)} | python3 {TOOL} lock"
    argv = [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={sandbox.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-p", str(port), f"deploy@{addr}", f"sudo -n sh -c {shlex.quote(line + ' && cat > /dev/null')}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.PIPE)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first.get("event") == "result" and first.get("ok") is True, first
    return proc


def test_a_held_lock_refuses_a_second_deploy_before_anything_is_staged(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    import time

    holder = _hold_lock(sandbox, "node1", "someone-else")
    try:
        code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node1")
        assert code == 1
        result = by_server(doc)["node1"]
        assert result["status"] == "failed" and result["step"] == "lock", result
        assert "held by someone-else" in result["message"], result
        assert "ssh session" in result["message"] and "still running here" in result["message"], result
        assert "push" not in result["details"], result  # lock first: nothing was pushed
        runs = ssh_run(sandbox, "node1", "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/opt_quorum 2>/dev/null")
        assert runs.stdout.strip() == "", runs.stdout

        # The holder's session ends (its flinger was killed, say): nothing of it is left on
        # node1, so the next run breaks the stale lock by itself and says whose it was.
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 30
    while True:
        code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node1")
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # sshd may take a moment to notice the closed connection
    assert code == 0, doc
    broke = by_server(doc)["node1"]["details"]["broke_stale_lock"]
    assert broke["holder"] == "someone-else", broke


def test_a_lock_held_by_a_live_run_is_broken_only_by_unlock(deployed: dict[str, Any], sandbox: SandboxState) -> None:
    import time

    holder = _hold_lock(sandbox, "node1", "someone-else")
    try:
        code, doc = flinger_json(sandbox.config_path, "deploy", "unlock", "--servers", "node1")
        assert code == 0, doc
        code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node1")
        assert code == 0, doc
        assert "broke_stale_lock" not in by_server(doc)["node1"]["details"]
    finally:
        holder.kill()
        holder.wait()
    # the holder's remote side went with its session: nothing of it is left on node1
    deadline = time.monotonic() + 20
    while _holder_left(sandbox, "node1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _holder_left(sandbox, "node1") == []


def _holder_left(sandbox: SandboxState, host: str) -> list[str]:
    """The command lines of what _hold_lock started on `host` that still run."""
    found = []
    for ref in _host_processes(sandbox, host):
        try:
            cmdline = Path(f"/proc/{ref.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "someone-else" in cmdline:
            found.append(cmdline)
    return found


def test_a_server_known_to_be_untrusted_stops_the_install_before_any_server(
    deployed: dict[str, Any], sandbox: SandboxState
) -> None:
    known_hosts = Path(str(deployed["topology"].ssh.known_hosts))
    node3 = sandbox.hosts["node3"]
    kept = [ln for ln in known_hosts.read_text().splitlines(keepends=True) if not ln.startswith(f"[{node3.addr}]:")]
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir())
    known_hosts.write_text("".join(kept))
    try:
        proc = run_flinger("-c", str(sandbox.config_path), "deploy", "install")
    finally:
        sb.refresh_known_hosts(sandbox.directory)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert "node3: unknown host key" in said and "flinger trust --servers node3" in said, said
    assert "no server was touched" in said
    # nothing was asked of any server: the run's log dir holds no server's log
    for run in set(logs.iterdir()) - runs_before:
        assert not list(run.glob("node*.log")), sorted(p.name for p in run.iterdir())


def _host_processes(state: SandboxState, name: str) -> list[Any]:
    """The processes of one sandbox host (they share this machine's process table: each host
    is a network namespace, so a process is found by its namespace, never by name alone)."""
    from flinger_sandbox.procs import processes_in_namespace

    record = json.loads((state.directory / "sandbox.json").read_text())
    namespace = next(h["namespace"] for h in record["hosts"] if h["name"] == name)
    return list(processes_in_namespace(namespace))


def _cut_host(state: SandboxState, name: str) -> None:
    """Stop the host's sshd listener and kill every sshd session already open to it, so a
    connection in use breaks mid-run (stopping the listener alone leaves sessions alive)."""
    import signal

    sb.stop_host(state.directory, name)
    for ref in _host_processes(state, name):
        try:
            comm = Path(f"/proc/{ref.pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "sshd":
            os.kill(ref.pid, signal.SIGKILL)


def test_server_cut_off_mid_run_is_reported_and_a_rerun_completes_it(
    deployed: dict[str, Any], sandbox: SandboxState
) -> None:
    import subprocess
    import sys
    import time

    # A change for every server, so that each has a real install to do.
    proc = run_flinger("-c", str(sandbox.config_path), "overlay", "--rotate")
    assert proc.returncode == 0, proc.stderr
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(sandbox.config_path), "--json", "deploy", "install"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    cut = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and deploy.poll() is None:
            new = [d for d in logs.iterdir() if d not in runs_before] if logs.exists() else []
            log = new[0] / "node2.log" if new else None
            if log is not None and log.exists() and "step: install" in log.read_text():
                _cut_host(sandbox, "node2")
                cut = True
                break
            time.sleep(0.01)
        out, err = deploy.communicate(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
        sb.start_host(sandbox.directory, "node2")
    assert cut, "the run ended before node2 reached its install step"
    results = by_server(json.loads(out))
    assert deploy.returncode in (1, 4), out + err
    assert results["node2"]["status"] in ("unreachable", "failed"), results["node2"]
    assert results["node2"]["step"] and results["node2"]["step"].startswith("install"), results["node2"]
    # The others are not left on the new release because one server failed: cut off before
    # its batch switched, they were held back (not switched at all); cut off in the switch,
    # they switched and went back to the release they had.
    for node in ("node1", "node3"):
        if results[node]["status"] == "not switched":
            assert results[node]["message"].startswith("ready, not switched: node2 failed before switching")
            assert results[node]["details"]["switched"] is False
        else:
            assert results[node]["status"] == "rolled back", results[node]
            assert results[node]["details"]["switched"] is True
            assert f"rolled back to {results[node]['details']['previous_release']}, healthy" in results[node]["message"]

    # Cut off in its switch, node2 keeps its lock until it has switched itself back (no
    # confirmation can come): the re-run waits for it (--lock-wait) and finishes the job.
    code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--lock-wait", "90")
    assert code == 0, why(doc)
    results = by_server(doc)
    assert results["node1"]["details"]["changed"] is True and results["node3"]["details"]["changed"] is True
    status_code, status = flinger_json(sandbox.config_path, "deploy", "status", "--servers", "node2")
    assert status_code == 0
    node2 = by_server(status)["node2"]["details"]
    assert next(s["state"] for s in node2["services"] if s["name"] == "quorum").startswith("run"), node2


def _sv_pid(sandbox: SandboxState, ssh_run: Any, node: str) -> str:
    status = ssh_run(sandbox, node, "sv", "status", "quorum").stdout
    assert "(pid " in status, status
    return status.split("(pid ", 1)[1].split(")", 1)[0]


def _untouched(sandbox: SandboxState, ssh_run: Any, node: str) -> tuple[str, str, str]:
    """What a server that was not switched still has: current, its release dirs, the service's pid."""
    current = ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout.strip()
    releases = ssh_run(sandbox, node, "ls", "/opt/quorum/releases").stdout
    return current, releases, _sv_pid(sandbox, ssh_run, node)


def test_an_unreachable_server_costs_the_others_of_its_batch_nothing(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0
    before = {n: _untouched(sandbox, ssh_run, n) for n in ("node1", "node2")}
    changed = _derived_manifest(sandbox, tmp_path, {"timeout = 30 ": "timeout = 31 "})  # a change for every server
    sb.stop_host(sandbox.directory, "node3")
    try:
        code, doc = flinger_json(changed, "deploy", "install")
        results = by_server(doc)
        assert code == 4, doc  # only node3 failed: unreachable
        assert results["node3"]["status"] == "unreachable" and results["node3"]["step"] == "connect", results
        for node in ("node1", "node2"):  # ready, then held back: as they were, not even restarted
            assert results[node]["status"] == "not switched", results[node]
            assert results[node]["message"] == "ready, not switched: node3 failed before switching (node3: connect)"
            assert _untouched(sandbox, ssh_run, node) == before[node]
            lock = ssh_run(sandbox, node, "sh", "-c", "sudo -n test -e /opt/quorum/.flinger/lock && echo held || true")
            assert lock.stdout.strip() == "", node  # the lock was given up
            runs = ssh_run(sandbox, node, "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/opt_quorum 2>/dev/null")
            assert runs.stdout.strip() == "", runs.stdout  # nothing staged is left (the overlay held secrets)
        assert doc["release_state"] == "failed", doc

        # An allowance of one failure lets the rest of the batch switch.
        code, doc = flinger_json(changed, "deploy", "install", "--max-failures", "1")
        results = by_server(doc)
        assert code == 4 and results["node3"]["status"] == "unreachable", doc
        assert all(results[n]["status"] == "ok" and results[n]["details"]["switched"] for n in ("node1", "node2"))
    finally:
        sb.start_host(sandbox.directory, "node3")
    code, doc = flinger_json(changed, "deploy", "install")  # node3 back: the re-run finishes the job
    assert code == 0 and doc["release_state"] == "completed", doc
    assert len(set(_current(sandbox, ssh_run).values())) == 1


def _wait_for_step(proc: Any, logs: Path, before: set[Path], node: str, step: str) -> bool:
    """Wait until `node`'s log of the run started after `before` shows `step`; False if the run ended first."""
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = _new_run_dirs(logs, before)
        log = new[0] / f"{node}.log" if new else None
        if log is not None and log.exists() and f"step: {step}" in log.read_text():
            return True
        time.sleep(0.01)
    return False


def _receipt(sandbox: SandboxState, ssh_run: Any, node: str) -> dict[str, Any]:
    """The node's receipt: the release it runs (and the fleet release it serves)."""
    return dict(json.loads(ssh_run(sandbox, node, "cat", "/opt/quorum/.flinger/state.json").stdout))


def _receipt_release(sandbox: SandboxState, ssh_run: Any, node: str) -> str:
    return str(_receipt(sandbox, ssh_run, node)["release"])


SELF_ROLLBACK = "/opt/quorum/.flinger/self-rollback.json"


def _fault_in_node2s_switch(
    deployed: dict[str, Any],
    sandbox: SandboxState,
    ssh_run: Any,
    tmp_path: Path,
    timeout: str,
    fault: Any,
    heal: Any = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A change for every node (health `timeout` edited), installed with --confirm-timeout 5;
    `fault()` while node2 restarts its service, `heal()` once the run is over; then wait for
    node2's watcher to have put the release back. (exit status, report, each node's release
    before)."""
    import subprocess
    import sys

    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0
    before = {n: _receipt_release(sandbox, ssh_run, n) for n in NODES}
    changed = _derived_manifest(sandbox, tmp_path, {"timeout = 30 ": f"timeout = {timeout} "})
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(changed), "--json", "deploy", "install", "--confirm-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        switching = _wait_for_step(deploy, logs, runs_before, "node2", "install: service")
        if switching:
            fault()
        out, err = deploy.communicate(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
        if heal is not None:
            heal()
    assert switching, "the run ended before node2 switched"
    doc = json.loads(out)
    assert deploy.returncode == 1 and doc["release_state"] == "rolled back", out + err
    # node2 got no confirmation within 5 s and went back by itself: the fleet ends where it started.
    assert eventually(lambda: ssh_run(sandbox, "node2", "test", "-e", SELF_ROLLBACK).returncode == 0)
    assert {n: _receipt_release(sandbox, ssh_run, n) for n in NODES} == before
    return deploy.returncode, doc, before


def test_a_server_cut_off_in_its_switch_switches_itself_back_where_the_fleet_went(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    # mid-switch: its install goes on, and nobody can confirm it
    _, doc, before = _fault_in_node2s_switch(deployed, sandbox, ssh_run, tmp_path, "33",
                                             lambda: _cut_host(sandbox, "node2"),
                                             lambda: sb.start_host(sandbox.directory, "node2"))  # fmt: skip
    results = by_server(doc)
    assert results["node2"]["status"] in ("unreachable", "failed"), results["node2"]
    for node in ("node1", "node3"):  # the rollout lost node2: it undid the others
        assert results[node]["status"] == "rolled back", results[node]
    assert ssh_run(sandbox, "node2", "sv", "status", "quorum").stdout.startswith("run:")
    code, status = flinger_json(sandbox.config_path, "deploy", "status")
    assert code == 0, status
    back = by_server(status)["node2"]["details"]["self_rollback"]
    assert back["to"] == before["node2"] and back["ok"] is True, back
    assert back["reason"] == "no confirmation within 5 s of the switch", back
    code, history = flinger_json(sandbox.config_path, "deploy", "history")
    row = next(r for r in history["fleet_releases"] if r["id"] == doc["fleet_release"])
    assert (row["state"], row["rolled_itself_back"], row["running"]) == ("rolled back", ["node2"], []), row


def _kill_tool(state: SandboxState, name: str) -> None:
    """SIGKILL the remote tool's install on that host only (a pkill would hit every host)."""
    import signal

    killed = 0
    for ref in _host_processes(state, name):
        try:
            argv = Path(f"/proc/{ref.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        tool = any(a.endswith(b"flinger-remote.pyz") for a in argv) and b"install" in argv
        stat = Path(f"/proc/{ref.pid}/stat").read_text()
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        # the install, not its watcher (a fork with the same argv, in a session of its own, reparented)
        if tool and argv[0].endswith(b"python3") and Path(f"/proc/{parent}/comm").read_text().strip() == "sh":
            os.kill(ref.pid, signal.SIGKILL)
            killed += 1
    assert killed == 1, killed


def test_a_remote_tool_killed_in_its_switch_leaves_the_fleet_on_one_release(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    # SIGKILL: the install can neither finish nor undo its switch itself
    _, doc, _ = _fault_in_node2s_switch(
        deployed, sandbox, ssh_run, tmp_path, "36", lambda: _kill_tool(sandbox, "node2")
    )
    results = by_server(doc)
    assert results["node2"]["status"] == "failed", results["node2"]
    assert all(results[n]["status"] == "rolled back" for n in ("node1", "node3")), why(doc)
    assert _on_one_release_unlocked(sandbox, ssh_run)  # each link is its receipt's release, no lock left
    code, status = flinger_json(sandbox.config_path, "deploy", "status")
    assert code == 0, why(status)  # every service runs and is healthy, one release
    assert by_server(status)["node2"]["details"]["self_rollback"]["ok"] is True


def test_a_killed_client_leaves_the_ledger_true_and_a_rerun_finishes_the_release(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    code, doc = flinger_json(sandbox.config_path, "deploy", "install")
    assert code == 0, doc
    first = doc["fleet_release"]
    changed = _derived_manifest(sandbox, tmp_path, {"timeout = 30 ": "timeout = 34 "})
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    argv = [
        "-m",
        "flinger",
        "-c",
        str(changed),
        "--json",
        "deploy",
        "install",
        "--batch",
        "1",
        "--confirm-timeout",
        "5",
    ]
    client = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        reached = _wait_for_step(client, logs, runs_before, "node2", "install: service")
        client.send_signal(signal.SIGKILL)  # batch 2 mid-switch; no goodbye, no ledger end
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert reached, "the run ended before node2 switched"
    # node1 switched and was confirmed; node2 switched, was never confirmed and goes back; node3 never started.
    assert eventually(lambda: ssh_run(sandbox, "node2", "test", "-e", SELF_ROLLBACK).returncode == 0)
    running = _current(sandbox, ssh_run)
    second = running["node1"]
    assert second != first and running == {"node1": second, "node2": first, "node3": first}, running
    code, history = flinger_json(sandbox.config_path, "deploy", "history")
    row = next(r for r in history["fleet_releases"] if r["id"] == second)
    assert row["state"] == "interrupted" and row["running"] == ["node1"], row  # the lost client, as it is
    code, status = flinger_json(sandbox.config_path, "deploy", "status")
    assert code == 1 and status["fleet"]["running"] == running, status  # one role, two releases: said
    assert by_server(status)["node2"]["details"]["self_rollback"]["ok"] is True

    code, doc = flinger_json(changed, "deploy", "install", "--confirm-timeout", "5")  # the re-run finishes it
    assert code == 0 and doc["fleet_release"] == second and doc["release_state"] == "completed", doc
    assert _current(sandbox, ssh_run) == dict.fromkeys(NODES, second)
    code, history = flinger_json(sandbox.config_path, "deploy", "history")
    row = next(r for r in history["fleet_releases"] if r["id"] == second)
    assert row["state"] == "completed" and row["running"] == list(NODES), row


def test_a_failing_health_check_keeps_the_previous_release_running(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    from flinger_helpers import derived_config

    before = ssh_run(sandbox, "node3", "readlink", "/opt/quorum/current").stdout.strip()
    # The same project, but node3's health check can never pass.
    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    assert 'url = "https://{{ server.addr }}:8443/status"' in manifest
    broken = manifest.replace(
        'url = "https://{{ server.addr }}:8443/status"',
        "url = \"https://{{ server.addr }}:{{ 8443 if server.name != 'node3' else 9 }}/status\"",
    ).replace("timeout = 30 ", "timeout = 3 ")
    (tmp_path / "manifest.toml").write_text(broken)
    config = derived_config(sandbox, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    state = sandbox.config_path.parent / ".flinger"
    (tmp_path / ".flinger").symlink_to(state)  # same overlay and CA as the running deployment
    code, doc = flinger_json(config, "deploy", "install")
    results = by_server(doc)
    assert code == 1, doc
    assert results["node3"]["status"] == "failed"
    assert "health" in (results["node3"]["step"] or "") + json.dumps(results["node3"])
    assert ssh_run(sandbox, "node3", "readlink", "/opt/quorum/current").stdout.strip() == before
    running = ssh_run(sandbox, "node3", "sv", "status", "quorum")
    assert running.stdout.startswith("run:"), running.stdout
    topo = deployed["topology"]
    _, status = fetch_cert(topo.servers["node3"].addr, 8443, topo.state_dir / "ca" / "ca.pem")
    assert status["name"] == "node3"


def _new_run_dirs(logs: Path, before: set[Path]) -> list[Path]:
    return sorted(d for d in logs.iterdir() if d not in before) if logs.exists() else []


def _serves(sandbox: SandboxState, ssh_run: Any, topo: Any, node: str, tmp_path: Path) -> bool:
    """The node's quorum answers over TLS with the certificate of the release it runs now."""
    ca = tmp_path / f"{node}-current-ca.pem"
    ca.write_text(ssh_run(sandbox, node, "cat", "/opt/quorum/current/overlay/tls/ca.pem").stdout)
    _, status = fetch_cert(topo.servers[node].addr, 8443, ca)
    return bool(status["name"] == node)


def _derived_manifest(sandbox: SandboxState, tmp_path: Path, edits: dict[str, str]) -> Path:
    from flinger_helpers import derived_config

    repo = Path(__file__).resolve().parents[2]
    text = (repo / "packaging" / "package-manifest.toml").read_text()
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "manifest.toml").write_text(text)
    config = derived_config(sandbox, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(sandbox.config_path.parent / ".flinger")  # same overlay and CA
    return config


def test_a_crashing_release_in_batches_of_one_touches_only_the_first_server(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0
    start = 'command = "/usr/bin/python3 {{ install_dir }}/current/quorum/bin/quorum.py'
    config = _derived_manifest(sandbox, tmp_path, {
        start: "command = \"/usr/bin/python3 -c \\\"raise SystemExit('crash-on-start')\\\"\" # ",
        "timeout = 30 ": "timeout = 4 ",
    })  # fmt: skip
    before = {n: ssh_run(sandbox, n, "ls", "/opt/quorum/releases").stdout for n in NODES}
    current = {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout for n in NODES}
    code, doc = flinger_json(config, "deploy", "install", "--batch", "1")
    results = by_server(doc)
    assert code == 1, doc
    node1 = results["node1"]
    assert node1["status"] == "failed" and node1["step"] in ("service:quorum", "health:quorum"), node1
    assert ", healthy" in node1["message"] and "NOT healthy" not in node1["message"], node1  # back, serving
    # the crash's own words, from the log service flinger gives a runit service with no log_file
    log = node1["details"]["service_log"]
    assert log["service"] == "quorum" and any("crash-on-start" in line for line in log["lines"]), log
    for node in ("node2", "node3"):
        assert results[node]["status"] == "skipped", results[node]
        assert results[node]["message"] == "not started: batch 1 failed (node1)", results[node]
    for node in NODES:  # node2 and node3 untouched; node1 back on the release it ran
        assert ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout == current[node], node
        assert ssh_run(sandbox, node, "ls", "/opt/quorum/releases").stdout == before[node], node
        assert _serves(sandbox, ssh_run, deployed["topology"], node, tmp_path), node


def test_a_release_failing_in_batch_two_leaves_every_server_on_the_old_release(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    config = _derived_manifest(sandbox, tmp_path, {
        'url = "https://{{ server.addr }}:8443/status"':
            "url = \"https://{{ server.addr }}:{{ 8443 if server.name != 'node2' else 9 }}/status\"",
        "timeout = 30 ": "timeout = 3 ",
    })  # fmt: skip
    current = {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES}
    code, doc = flinger_json(config, "deploy", "install", "--batch", "1")
    results = by_server(doc)
    assert code == 1, doc
    old = current["node1"].rsplit("/", 1)[-1]
    assert results["node1"]["status"] == "rolled back", results["node1"]
    assert results["node1"]["details"]["rolled_back_to"] == old
    assert f"rolled back to {old}, healthy: batch 2 failed (node2)" in results["node1"]["message"]
    assert results["node2"]["status"] == "failed" and results["node2"]["step"] == "health:quorum"
    assert results["node3"]["status"] == "skipped"
    for node in NODES:
        assert ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout.strip() == current[node], node
        assert _serves(sandbox, ssh_run, deployed["topology"], node, tmp_path), node
    history = by_server(flinger_json(sandbox.config_path, "deploy", "history", "--servers", "node1")[1])
    assert history["node1"]["details"]["current"] == old


def test_a_healthy_canary_is_checked_again_after_its_wait_then_the_rest_follow(
    deployed: dict[str, Any], sandbox: SandboxState
) -> None:
    assert run_flinger("-c", str(sandbox.config_path), "overlay", "--rotate").returncode == 0  # a change everywhere
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    code, doc = flinger_json(
        sandbox.config_path, "deploy", "install", "--canary", "1", "--canary-wait", "1", "--batch", "2"
    )
    assert code == 0, doc
    assert all(r["details"]["changed"] for r in by_server(doc).values()), doc
    run = _new_run_dirs(logs, runs_before)[0]
    canary = (run / "node1.log").read_text()
    # node1 alone first, its install done, then its status checked again before the others start
    assert canary.index("step: install") < canary.index("step: status"), canary
    for node in ("node2", "node3"):
        assert "step: status" not in (run / f"{node}.log").read_text()
    started = {n: (run / f"{n}.log").read_text().splitlines()[0].split()[0] for n in NODES}
    assert started["node1"] <= started["node2"] and started["node1"] <= started["node3"], started


def test_a_client_killed_mid_install_leaves_the_server_on_one_release_and_a_rerun_waits_for_it(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from flinger_helpers import derived_config

    # A release whose health check never passes on node3 (for 12 s), so its install is still
    # busy (then rolling back) on node3 when the client dies.
    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    broken = manifest.replace(
        'url = "https://{{ server.addr }}:8443/status"', 'url = "https://{{ server.addr }}:9/status"'
    ).replace("timeout = 30 ", "timeout = 12 ")
    assert broken != manifest
    (tmp_path / "manifest.toml").write_text(broken)
    config = derived_config(sandbox, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(sandbox.config_path.parent / ".flinger")
    assert flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node3")[0] == 0
    before = ssh_run(sandbox, "node3", "readlink", "/opt/quorum/current").stdout.strip()
    ssh_run(sandbox, "node3", "rm", "-f", "/opt/quorum/.flinger/events.log")
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    killed = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(config), "--json", "deploy", "install", "--servers", "node3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and killed.poll() is None:
            new = _new_run_dirs(logs, runs_before)
            log = new[0] / "node3.log" if new else None
            if log is not None and log.exists() and "step: install: service" in log.read_text():
                killed.send_signal(signal.SIGKILL)  # no goodbye: the client is simply gone
                break
            time.sleep(0.01)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL, "the run ended before node3 reached its install step"
    killed_run = _new_run_dirs(logs, runs_before)[0].name

    # At once, the next run: the killed run's install still works on node3, so it waits for
    # it (it does not break the lock under it); that install, done with its rollback, gives
    # the lock up itself, and the next run takes it (nothing stale to break).
    code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node3", "--lock-wait", "120")
    assert code == 0, doc
    node3 = by_server(doc)["node3"]
    assert "broke_stale_lock" not in node3["details"], node3
    rerun = next(d for d in _new_run_dirs(logs, runs_before) if d.name != killed_run)
    text = (rerun / "node3.log").read_text()
    assert "waiting for the deploy lock: held by" in text and "its install (pid" in text, text

    # The killed run's install finished on its own: rolled back, its lines in events.log.
    events = ssh_run(sandbox, "node3", "cat", "/opt/quorum/.flinger/events.log").stdout.splitlines()
    result = json.loads(next(line for line in reversed(events) if '"event": "result"' in line))
    assert result["ok"] is False and result["rolled_back_to"] == before.rsplit("/", 1)[-1], result
    assert result["restored_health"]["quorum"]["healthy"] is True, result
    assert result["lock_released"] is True, result  # and the lock given up by that install
    # One release, everywhere on node3: the link, the receipt and the running service agree.
    current = ssh_run(sandbox, "node3", "readlink", "/opt/quorum/current").stdout.strip()
    receipt = json.loads(ssh_run(sandbox, "node3", "cat", "/opt/quorum/.flinger/state.json").stdout)
    assert current.endswith(receipt["release"]) and receipt["release"] == before.rsplit("/", 1)[-1], receipt
    assert ssh_run(sandbox, "node3", "sv", "status", "quorum").stdout.startswith("run:")
    left = ssh_run(sandbox, "node3", "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/opt_quorum 2>/dev/null")
    assert left.stdout.strip() == "", left.stdout  # no staged overlay (secrets) of either run


def test_two_concurrent_installs_take_turns_on_every_server(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    import subprocess
    import sys

    proc = run_flinger("-c", str(sandbox.config_path), "overlay", "--rotate")  # a change for every server
    assert proc.returncode == 0, proc.stderr
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    argv = [sys.executable, "-m", "flinger", "-c", str(sandbox.config_path), "--json", "deploy", "install",
            "--lock-wait", "180"]  # fmt: skip
    runs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=400) for r in runs]
    for r, (out, err) in zip(runs, outputs, strict=True):
        assert r.returncode == 0, out + err
    first, second = (by_server(json.loads(out)) for out, _ in outputs)
    for node in NODES:
        # one of the two installed the new overlay, the other found nothing left to do
        assert sorted([first[node]["details"]["changed"], second[node]["details"]["changed"]]) == [False, True]
    waited = 0
    for run in _new_run_dirs(logs, runs_before):
        for node in NODES:
            text = (run / f"{node}.log").read_text()
            steps = [ln.split("step: ", 1)[1] for ln in text.splitlines() if "step: " in ln]
            # nothing staged before the lock (an overlay change: the ledger says every server has
            # the packages, so nothing is delivered ahead; the run that found nothing to do pushed nothing)
            assert (
                steps.index("lock") < steps.index("push")
                if "push" in steps
                else steps[:4] == ["connect", "tool", "builder", "lock"]
            )
            waited += "waiting for the deploy lock" in text
    assert waited >= 1  # they did meet on at least one server
    for node in NODES:
        current = ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout.strip()
        receipt = json.loads(ssh_run(sandbox, node, "cat", "/opt/quorum/.flinger/state.json").stdout)
        assert current.endswith(receipt["release"]), (node, current, receipt["release"])
        left = ssh_run(sandbox, node, "sh", "-c", "ls -A /home/deploy/flinger-staging/runs/opt_quorum 2>/dev/null")
        assert left.stdout.strip() == "", (node, left.stdout)
    assert flinger_json(sandbox.config_path, "deploy", "status")[0] == 0


def _stop_mid_run(
    config: Path, logs: Path, args: list[str], node: str, cue: str, signals: int = 1
) -> tuple[int, dict[str, Any], str, float]:
    """Run `flinger --json ARGS` in a session of its own; once `node`'s run log shows `cue`,
    send SIGINT to its process group (what a terminal's Ctrl-C does), `signals` times, each
    after flinger said it heard the one before (two signals at once are one to a process).
    (exit status, report, stderr, seconds from the first signal to the exit)."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    runs_before = set(logs.iterdir()) if logs.exists() else set()
    argv = [sys.executable, "-m", "flinger", "-c", str(config), "--json", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    said: list[str] = []
    printed: list[str] = []
    readers = [
        threading.Thread(target=lambda: said.extend(iter(proc.stderr.readline, "")), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: printed.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    sent_at = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and sent_at is None:
            new = _new_run_dirs(logs, runs_before)
            log = new[0] / f"{node}.log" if new else None
            if log is not None and log.exists() and cue in log.read_text():
                sent_at = time.monotonic()
                for n in range(signals):
                    heard = time.monotonic() + 10
                    while n and sum("SIGINT" in line for line in said) < n and time.monotonic() < heard:
                        time.sleep(0.01)
                    assert proc.poll() is None, f"flinger ended before signal {n + 1}"
                    os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.01)
        proc.wait(timeout=120)
        for reader in readers:
            reader.join(timeout=10)
        out, err = "".join(printed), "".join(said)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent_at is not None, f"the run ended before {node} showed {cue!r}: {''.join(said)}"
    took = time.monotonic() - sent_at
    try:
        return proc.returncode, json.loads(out), err, took
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{out}\n{err}") from None


def _on_one_release_unlocked(sandbox: SandboxState, ssh_run: Any) -> dict[str, str]:
    """Every node: `current` is the release its receipt names, and no lock is left; the releases."""
    releases = {}
    for node in NODES:
        current = ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout.strip()
        receipt = _receipt(sandbox, ssh_run, node)
        assert current.endswith(receipt["release"]), (node, current, receipt["release"])
        assert ssh_run(sandbox, node, "test", "!", "-e", "/opt/quorum/.flinger/lock").returncode == 0, node
        releases[node] = current
    return releases


# The brake: one SIGINT stops a rollout in every mode; what was at work finishes its step.
BRAKE_MODES = {
    "batch of one": (["deploy", "install", "--batch", "1"], "step: install: service", {"node1"}),
    "canary wait": (["deploy", "install", "--canary", "1", "--canary-wait", "600"], "state: ok", {"node1"}),
    "rollback batch of one": (["deploy", "rollback", "--batch", "1"], "step: rollback", {"node1"}),
}


@pytest.mark.parametrize("mode", list(BRAKE_MODES))
def test_one_ctrl_c_stops_a_rollout_the_server_at_work_finishes_and_no_other_starts(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, mode: str, tmp_path: Path
) -> None:
    args, cue, working = BRAKE_MODES[mode]
    base = sandbox.config_path
    changed = _derived_manifest(sandbox, tmp_path, {"timeout = 30 ": "timeout = 31 "})  # restarts every service
    assert flinger_json(base, "deploy", "install")[0] == 0  # release A everywhere
    if args[1] == "rollback":  # release B everywhere: the rollback goes back to A
        assert flinger_json(changed, "deploy", "install")[0] == 0
    config = base if args[1] == "rollback" else changed
    before = _on_one_release_unlocked(sandbox, ssh_run)
    code, doc, err, took = _stop_mid_run(config, deployed["topology"].state_dir / "logs", args, "node1", cue)
    assert code == 130, (doc, err)
    assert doc["stopped_by"] == "SIGINT" and "SIGINT: stopping" in err, err
    results = by_server(doc)
    after = _on_one_release_unlocked(sandbox, ssh_run)
    for node in NODES:
        if node in working:  # it finished what it was doing: switched
            assert results[node]["status"] == "ok" and results[node]["details"]["changed"], results[node]
            assert after[node] != before[node], node
        else:  # never started: untouched
            assert results[node]["status"] == "interrupted", results[node]
            assert results[node]["message"].startswith("not started: interrupted"), results[node]
            assert after[node] == before[node], node
    assert took < 60, f"{took:.1f} s from Ctrl-C to the exit"  # not the 600 s canary wait, nor another server
    assert doc["release_state" if args[1] == "install" else "fleet_release"], doc
    if args[1] == "install":
        assert doc["release_state"] == "interrupted", doc
    code, doc = flinger_json(config, *args[:2])  # the re-run finishes the job
    assert code == 0, doc
    assert len(set(_on_one_release_unlocked(sandbox, ssh_run).values())) == 1
    assert flinger_json(base, "deploy", "install")[0] == 0  # back at the manifest's state for what follows


def test_ctrl_c_twice_mid_deploy_finishes_the_running_servers_and_reports_them(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    """The default rollout (a whole wave at once): every server was getting ready; an
    impatient second Ctrl-C cuts none of them short, and none of them switches (the batch
    is given up whole: its new releases removed, its locks given back)."""
    assert run_flinger("-c", str(sandbox.config_path), "overlay", "--rotate").returncode == 0  # a change everywhere
    logs = deployed["topology"].state_dir / "logs"
    code, doc, err, _ = _stop_mid_run(sandbox.config_path, logs, ["deploy", "install"], "node1", "step: tool", 2)
    assert code == 130, (doc, err)
    assert "already stopping" in err, err
    results = by_server(doc)
    assert all(r["status"] == "interrupted" for r in results.values()), results
    ready = [r for r in results.values() if r["message"] == "ready, not switched: interrupted"]
    assert all(r["steps"][-1]["step"] == "install: abort" for r in ready), ready  # those at work finished their step
    _on_one_release_unlocked(sandbox, ssh_run)
    code, doc = flinger_json(sandbox.config_path, "deploy", "install")  # the re-run does the job
    assert code == 0 and all(r["details"]["changed"] for r in by_server(doc).values()), why(doc)


def test_a_stopped_service_fails_status_and_install_starts_it_again(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    # At the manifest's desired state first (an earlier test installed another manifest).
    assert flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node2")[0] == 0
    assert ssh_run(sandbox, "node2", "sv", "-w", "10", "down", "/etc/sv/quorum").returncode == 0
    code, status = flinger_json(sandbox.config_path, "deploy", "status", "--servers", "node2")
    node2 = by_server(status)["node2"]
    assert code == 1 and node2["status"] == "failed", node2
    assert node2["message"].startswith("quorum is down"), node2["message"]
    release = ssh_run(sandbox, "node2", "readlink", "/opt/quorum/current").stdout.strip()
    code, doc = flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node2")
    details = by_server(doc)["node2"]["details"]
    assert code == 0 and details["started"] == ["quorum"] and details["changed"] is True, doc
    assert "started quorum (was not running)" in details["summary"]
    assert ssh_run(sandbox, "node2", "readlink", "/opt/quorum/current").stdout.strip() == release  # same release
    code, status = flinger_json(sandbox.config_path, "deploy", "status", "--servers", "node2")
    assert code == 0, status


def test_a_role_typo_that_empties_servers_is_refused_and_changes_nothing(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    from flinger_helpers import derived_config

    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    typo = manifest.replace('roles = ["node"]                 #', 'roles = ["nodes"]                #', 1)
    assert typo != manifest
    (tmp_path / "manifest.toml").write_text(typo)
    config = derived_config(sandbox, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(sandbox.config_path.parent / ".flinger")
    before = {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES}
    for extra in ([], ["--dry-run"]):
        proc = run_flinger("-c", str(config), "deploy", "install", *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "no package is meant for node1, node2, node3" in proc.stderr and "--allow-empty" in proc.stderr
    checked = run_flinger("-c", str(config), "check")
    line = typo.splitlines().index(next(ln for ln in typo.splitlines() if ln.startswith('roles = ["nodes"]'))) + 1
    assert f"manifest.toml:{line}: packages.quorum.roles.0: no deployment server has role" in checked.stderr
    assert {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES} == before


def test_a_failing_validate_changes_nothing_and_shows_why(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    from flinger_helpers import derived_config

    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    good = 'validate = "/usr/bin/python3 -m json.tool overlay/files/quorum/config.json > /dev/null"'
    assert good in manifest
    marker = "MARKER-v41: line 7: Bad directive"
    bad = manifest.replace(good, f"validate = \"echo '{marker}' >&2; exit 3\"")
    (tmp_path / "manifest.toml").write_text(bad)
    config = derived_config(sandbox, tmp_path, {"manifest": str(tmp_path / "manifest.toml")})
    (tmp_path / ".flinger").symlink_to(sandbox.config_path.parent / ".flinger")
    assert flinger_json(sandbox.config_path, "deploy", "install", "--servers", "node1")[0] == 0
    before = ssh_run(sandbox, "node1", "readlink", "/opt/quorum/current").stdout.strip()
    pid = ssh_run(sandbox, "node1", "sv", "status", "quorum").stdout.split("(pid ")[1].split(")")[0]

    proc = run_flinger("-c", str(config), "deploy", "install", "--servers", "node1")
    assert proc.returncode == 1 and marker in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    code, doc = flinger_json(config, "deploy", "install", "--servers", "node1")
    node1 = by_server(doc)["node1"]
    assert code == 1 and node1["step"] == "validate:quorum", node1
    assert node1["details"]["validate_output"] == [marker] and "nothing was switched" in node1["message"], node1
    assert ssh_run(sandbox, "node1", "readlink", "/opt/quorum/current").stdout.strip() == before
    now = ssh_run(sandbox, "node1", "sv", "status", "quorum").stdout
    assert f"(pid {pid})" in now, now  # not even restarted


def _current(sandbox: SandboxState, ssh_run: Any) -> dict[str, str]:
    """The fleet release each node's receipt says it runs (its `current` is that receipt's release)."""
    found = {}
    for node in NODES:
        link = ssh_run(sandbox, node, "readlink", "/opt/quorum/current").stdout.strip()
        receipt = _receipt(sandbox, ssh_run, node)
        assert link == f"releases/{receipt['release']}", (node, link, receipt["release"])
        found[node] = receipt["fleet_release"]
    return found


def test_a_rollback_after_a_rolled_back_rollout_lands_every_server_on_one_earlier_release(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    code, doc = flinger_json(sandbox.config_path, "deploy", "install")  # at the manifest's state: release A
    assert code == 0 and doc["release_state"] == "completed", doc
    first = doc["fleet_release"]
    (tmp_path / "b").mkdir()
    healthy = _derived_manifest(sandbox, tmp_path / "b", {"timeout = 30 ": "timeout = 31 "})  # a new release B
    code, doc = flinger_json(healthy, "deploy", "install", "--servers", "node1")
    assert code == 0 and doc["release_state"] == "partial", doc
    second = doc["fleet_release"]
    code, status = flinger_json(sandbox.config_path, "deploy", "status")  # node1 apart from its role: unhealthy
    assert code == 1, status
    assert status["fleet_problem"] == (
        f"servers of one role run different releases: role node: {second} on node1; {first} on node2, node3"
    ), status
    assert status["fleet"]["running"] == {"node1": second, "node2": first, "node3": first}
    assert {r["status"] for r in status["servers"]} == {"ok"}  # every server is well: the fleet is not
    assert flinger_json(healthy, "deploy", "install")[0] == 0  # the others follow: B completed
    (tmp_path / "c").mkdir()
    failing = _derived_manifest(sandbox, tmp_path / "c", {
        'url = "https://{{ server.addr }}:8443/status"':
            "url = \"https://{{ server.addr }}:{{ 8443 if server.name != 'node2' else 9 }}/status\"",
        "timeout = 30 ": "timeout = 3 ",
    })  # fmt: skip
    code, doc = flinger_json(failing, "deploy", "install", "--batch", "1")  # release C fails in batch 2: undone
    assert code == 1 and doc["release_state"] == "rolled back", doc
    third = doc["fleet_release"]
    assert _current(sandbox, ssh_run) == dict.fromkeys(NODES, second)

    code, doc = flinger_json(sandbox.config_path, "deploy", "rollback", "--batch", "1")  # one at a time
    assert code == 0, doc
    assert doc["fleet_release"] == first and doc["rolled_back_from"] == [second], doc
    assert _current(sandbox, ssh_run) == dict.fromkeys(NODES, first)  # all on A, none on C
    assert flinger_json(sandbox.config_path, "deploy", "status")[0] == 0  # running, healthy, one release
    code, history = flinger_json(sandbox.config_path, "deploy", "history")
    rows = {r["id"]: r for r in history["fleet_releases"]}
    assert code == 0 and rows[first]["running"] == list(NODES), rows[first]
    assert (rows[first]["state"], rows[second]["state"], rows[third]["state"]) == ("completed", "rolled back",
                                                                                    "rolled back")  # fmt: skip
    assert set(rows[second]["kept"]) == set(NODES)

    refused = run_flinger("-c", str(sandbox.config_path), "deploy", "rollback", "--to", "no-such-release")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "release no-such-release is not kept on every chosen server" in refused.stderr, refused.stderr
    assert _current(sandbox, ssh_run) == dict.fromkeys(NODES, first)  # nothing changed


def test_a_rollback_across_a_rotation_is_refused_naming_the_secrets(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any
) -> None:
    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0
    before = _current(sandbox, ssh_run)
    assert run_flinger("-c", str(sandbox.config_path), "overlay", "--rotate").returncode == 0
    code, doc = flinger_json(sandbox.config_path, "deploy", "install")
    assert code == 0 and doc["release_state"] == "completed", doc
    # the fleet completed the rotation: every older kept release lost its overlay (the old secrets)
    assert set(doc["forgot"]) == set(NODES) and all(doc["forgot"][n] for n in NODES), doc
    for node in NODES:
        left = ssh_run(sandbox, node, "sh", "-c", "ls -d /opt/quorum/releases/*/overlay")
        assert left.stdout.split() == [f"/opt/quorum/releases/{doc['fleet_release']}/overlay"], left.stdout
    after = _current(sandbox, ssh_run)
    assert after != before
    refused = run_flinger("-c", str(sandbox.config_path), "deploy", "rollback")
    assert refused.returncode == 2 and "predates the rotation of the deployment CA key" in refused.stderr, refused
    assert "--restore-rotated-secrets" in refused.stderr
    refused = run_flinger("-c", str(sandbox.config_path), "deploy", "rollback", "--restore-rotated-secrets")
    assert refused.returncode == 2 and "lost its overlay once the fleet completed a rotation" in refused.stderr
    assert _current(sandbox, ssh_run) == after  # nothing changed


def test_a_deployment_wide_secret_is_the_same_everywhere_and_follows_its_role(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    from flinger_helpers import derived_config

    repo = Path(__file__).resolve().parents[2]
    manifest = (repo / "packaging" / "package-manifest.toml").read_text()
    manifest += '\n[secrets.cluster_token]\nscope = "deployment"\nroles = ["node", "keeper"]\n'
    manifest += '\n[secrets.keeper_key]\nscope = "deployment"\nroles = ["keeper"]\n'
    (tmp_path / "manifest.toml").write_text(manifest)
    (tmp_path / ".flinger").symlink_to(sandbox.config_path.parent / ".flinger")  # the same overlay state
    secret = "/opt/quorum/current/overlay/secrets"

    def deploy_with(keeper: str) -> dict[str, str]:
        edits: dict[str, object] = {"manifest": str(tmp_path / "manifest.toml")}
        edits.update({f"servers.{n}.roles": ["node", "keeper"] if n == keeper else ["node"] for n in NODES})
        config = derived_config(sandbox, tmp_path, edits)
        assert run_flinger("-c", str(config), "overlay").returncode == 0
        code, doc = flinger_json(config, "deploy", "install")
        assert code == 0, doc
        tokens = {n: ssh_run(sandbox, n, "cat", f"{secret}/cluster_token").stdout for n in NODES}
        assert len(set(tokens.values())) == 1 and len(tokens["node1"]) == 64, tokens  # one value, everywhere
        keepers = {n for n in NODES if ssh_run(sandbox, n, "test", "-e", f"{secret}/keeper_key").returncode == 0}
        assert keepers == {keeper}
        return {"token": tokens["node1"], "keeper_key": ssh_run(sandbox, keeper, "cat", f"{secret}/keeper_key").stdout}

    first = deploy_with("node1")
    assert deploy_with("node2") == first  # the keeper role moved: same values, on its new server

    # back to the deployment as the other tests know it
    assert run_flinger("-c", str(sandbox.config_path), "overlay").returncode == 0
    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0


def test_uninstall_leaves_every_server_as_it_was(deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any) -> None:
    code, doc = flinger_json(sandbox.config_path, "deploy", "uninstall")
    assert code == 0, doc
    for name in NODES:
        assert tree(ssh_run, sandbox, name) == deployed["before"][name], name
        listening = ssh_run(
            sandbox, name, "sh", "-c", f"ss -ltn | grep -c {shlex.quote(sandbox.hosts[name].addr + ':8443')} || true"
        )
        assert listening.stdout.strip() == "0"


def test_a_client_killed_while_its_batch_gets_ready_leaves_every_server_as_it_was_and_unlocked(
    deployed: dict[str, Any], sandbox: SandboxState, ssh_run: Any, tmp_path: Path
) -> None:
    """A batch of three: node1 ready and waiting in its install for the word, node3's validate
    still at work, when the client dies (SIGKILL, no goodbye). Each server removes what it made
    ready and gives its lock up by itself: those waiting at once (their stdin closed with the
    client's ssh), node3 once its validate is done. Nothing switched, and the next run finds
    no stale lock to break."""
    import signal
    import subprocess
    import sys

    assert flinger_json(sandbox.config_path, "deploy", "install")[0] == 0
    before = {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES}
    kept = {n: ssh_run(sandbox, n, "ls", "/opt/quorum/releases").stdout.split() for n in NODES}
    validate = "/usr/bin/python3 -m json.tool overlay/files/quorum/config.json > /dev/null"
    config = _derived_manifest(sandbox, tmp_path, {validate: f"test $(hostname) != node3 || sleep 8; {validate}"})
    logs = deployed["topology"].state_dir / "logs"
    runs_before = set(logs.iterdir()) if logs.exists() else set()
    killed = subprocess.Popen(
        [sys.executable, "-m", "flinger", "-c", str(config), "--json", "deploy", "install"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = _wait_for_step(killed, logs, runs_before, "node1", "install: ready")
        if ready:
            killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert ready and killed.returncode == -signal.SIGKILL, "the run ended before node1 was ready"

    def as_it_was(node: str) -> bool:
        locked = ssh_run(sandbox, node, "test", "-e", "/opt/quorum/.flinger/lock").returncode == 0
        releases = ssh_run(sandbox, node, "ls", "/opt/quorum/releases").stdout.split()
        return not locked and releases == kept[node]

    assert eventually(lambda: all(as_it_was(n) for n in NODES), seconds=60)
    assert {n: ssh_run(sandbox, n, "readlink", "/opt/quorum/current").stdout.strip() for n in NODES} == before
    said = ssh_run(sandbox, "node1", "cat", "/opt/quorum/.flinger/events.log").stdout
    assert "no word from the client (its stdin closed)" in said, said[-2000:]  # at once, not after 90 s of silence

    code, doc = flinger_json(config, "deploy", "install")  # the next run: nothing stale to break
    assert code == 0, why(doc)
    for node in NODES:
        assert "broke_stale_lock" not in by_server(doc)[node]["details"], by_server(doc)[node]
        assert by_server(doc)[node]["details"]["changed"] is True
