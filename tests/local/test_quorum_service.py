"""The example quorum service (examples/quorum) run as real processes on 127.0.0.1 with a test CA
and real threshold shares, plus its config template, SMF manifest and package manifest."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from glob import glob
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.oldest_python import require_python39

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "packaging" / "package-manifest.toml"
CONFIG_TEMPLATE = REPO / "smf" / "quorum" / "config.json.j2"
SMF_TEMPLATE = REPO / "smf" / "quorum" / "manifest.xml"
NODES = ("node1", "node2", "node3")
# each node on its own loopback address, as in the sandbox, so a certificate's IP names one node
ADDRS = {name: f"127.0.77.{i}" for i, name in enumerate(NODES, start=1)}
THRESHOLD = 2
# a bound on every wait, never an assertion about how long something took
WAIT_BOUND = 60.0


# ------------------------------------------------------------------ test CA and certificates


@dataclass
class TLSFiles:
    cert: Path
    key: Path
    ca: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


class TestCA:
    __test__ = False  # a helper, not a test class

    def __init__(self, directory: Path, name: str = "quorum test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = self.dir / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, addr: str) -> TLSFiles:
        """A server+client certificate naming `name` (DNS) and `addr` (IP), as flinger issues."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(addr))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        out = self.dir / name
        out.mkdir(exist_ok=True)
        files = TLSFiles(out / "cert.pem", out / "key.pem", out / "ca.pem")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, files.key)
        shutil.copy(self.ca_path, files.ca)
        return files


# ------------------------------------------------------------------ shares


@pytest.fixture(scope="module")
def shamir() -> Any:
    return pytest.importorskip(
        "flinger.remote.shamir", reason="flinger/remote/shamir.py (split, share_document) is needed to make real shares"
    )


@dataclass
class Shares:
    secret: int
    documents: dict[str, dict[str, Any]]  # node name -> share.json document
    values: list[int]


def make_shares(shamir: Any, deployment: str = "quorum-test") -> Shares:
    secret = shamir.random_secret()
    commitments, shares = shamir.split(secret, len(NODES), THRESHOLD)
    documents = {
        name: shamir.share_document(deployment, THRESHOLD, len(NODES), index, value, commitments)
        for name, (index, value) in zip(NODES, shares, strict=True)
    }
    return Shares(secret, documents, [v for _, v in shares])


# ------------------------------------------------------------------ the package's bin dir


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory, shamir: Any) -> Path:
    """The package's bin/ as the manifest builds it: every `to = "bin/..."` mapping applied."""
    out = tmp_path_factory.mktemp("quorum-package")
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    for mapping in manifest["packages"]["quorum"]["source"]["paths"]:
        if not mapping["to"].startswith("bin/"):
            continue
        sources = sorted(glob(str(REPO / mapping["from"])))
        assert sources, f"manifest path {mapping['from']} matches nothing"
        for src in sources:
            dst = out / mapping["to"]
            if mapping["to"].endswith("/"):
                dst = dst / Path(src).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    assert (out / "bin" / "quorum.py").is_file()
    assert (out / "bin" / "shamir.py").is_file()
    return out / "bin"


# ------------------------------------------------------------------ processes


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + WAIT_BOUND
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}\n{logs()}")


@dataclass
class Node:
    name: str
    addr: str
    port: int
    tls: TLSFiles
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "stderr.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


Peers = dict[str, tuple[str, int]]  # peer name -> (addr, port)


class Cluster:
    """Three nodes' files (certs, shares, configs) on 127.0.0.1; processes started on demand."""

    def __init__(self, root: Path, bin_dir: Path, shares: Shares, python: str = sys.executable) -> None:
        self.python = python
        self.root = root
        self.bin_dir = bin_dir
        self.shares = shares
        self.ca = TestCA(root / "ca")
        self.nodes = {}  # type: dict[str, Node]
        for name in NODES:
            node_dir = root / name
            node_dir.mkdir()
            addr = ADDRS[name]
            self.nodes[name] = Node(name, addr, free_port(addr), self.ca.issue(name, addr), node_dir)
            self.write_share(name, shares.documents[name])

    def write_share(self, name: str, document: dict[str, Any]) -> None:
        path = self.nodes[name].dir / "share.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        path.chmod(0o600)

    def config(self, name: str, peers: Peers | None = None) -> dict[str, Any]:
        node = self.nodes[name]
        if peers is None:
            peers = {n.name: (n.addr, n.port) for n in self.nodes.values()}
        return {
            "name": name,
            "deployment": "quorum-test",
            "addr": node.addr,
            "port": node.port,
            "threshold": THRESHOLD,
            "peers": [{"name": peer, "addr": addr, "port": port} for peer, (addr, port) in peers.items()],
            "paths": {
                "cert": str(node.tls.cert),
                "key": str(node.tls.key),
                "ca": str(node.tls.ca),
                "share": str(node.dir / "share.json"),
            },
            # fast retries keep the test short; the service defaults are 0.5 s up to 10 s
            "retry_initial": 0.05,
            "retry_max": 0.3,
        }

    def start(self, name: str, peers: Peers | None = None) -> Node:
        node = self.nodes[name]
        config_path = node.dir / "config.json"
        config_path.write_text(json.dumps(self.config(name, peers)), encoding="utf-8")
        with open(node.log_path, "ab") as err:
            node.proc = subprocess.Popen(
                [self.python, "-S", str(self.bin_dir / "quorum.py"), "--config", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=str(node.dir),
            )
        wait_for(f"{name} to serve /status", lambda: self._serving(node), self.logs)
        return node

    def _serving(self, node: Node) -> bool:
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"{node.name} exited with {node.proc.returncode}\n{node.log()}")
        try:
            self.status(node.name)
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
        return True

    def https(self, name: str, client: TLSFiles | None = None) -> http.client.HTTPSConnection:
        # verifies the node's certificate against the CA and its IP address, as flinger's
        # health check does
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        node = self.nodes[name]
        return http.client.HTTPSConnection(node.addr, node.port, context=ctx, timeout=10)

    def get(self, name: str, path: str, client: TLSFiles | None = None) -> tuple[int, bytes]:
        conn = self.https(name, client)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def status(self, name: str) -> dict[str, Any]:
        code, body = self.get(name, "/status")
        assert code == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log()}" for n in self.nodes.values())

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=WAIT_BOUND)


@pytest.fixture
def cluster(tmp_path: Path, bin_dir: Path, shamir: Any) -> Iterator[Cluster]:
    c = Cluster(tmp_path, bin_dir, make_shares(shamir))
    try:
        yield c
    finally:
        c.stop_all()


def secret_spellings(shares: Shares) -> list[str]:
    """Every way the secret or a share could appear in a response or a log line."""
    out = []
    for number in [shares.secret, *shares.values]:
        out += [format(number, "x"), format(number, "X"), str(number)]
    return out


# ------------------------------------------------------------------ the service


@pytest.mark.parametrize("python", ["this python", "python3.9"])
def test_three_nodes_unseal_and_status_reveals_no_secret(cluster: Cluster, python: str) -> None:
    if python == "python3.9":
        cluster.python = require_python39()
    for name in NODES:
        cluster.start(name)

    def all_unsealed() -> bool:
        return all(cluster.status(name)["state"] == "unsealed" for name in NODES)

    wait_for("every node to unseal", all_unsealed, cluster.logs)
    for name in NODES:
        status = cluster.status(name)
        assert status["name"] == name
        assert status["threshold"] == THRESHOLD
        assert status["shares"] >= THRESHOLD
        assert set(status["peers_seen"]) <= set(NODES) - {name}
        assert status["peers_seen"]
        _, raw = cluster.get(name, "/status")
        text = raw.decode()
        for spelling in secret_spellings(cluster.shares):
            assert spelling not in text
        # nor in what it logged
        for spelling in secret_spellings(cluster.shares):
            assert spelling not in cluster.nodes[name].log()


def test_one_node_alone_stays_sealed(cluster: Cluster) -> None:
    node = cluster.start("node1")
    # it has asked both (absent) peers at least once and is still running
    wait_for("node1 to try both peers", lambda: "peer node2" in node.log() and "peer node3" in node.log(), cluster.logs)
    status = cluster.status("node1")
    assert status["state"] == "sealed"
    assert status["shares"] == 1
    assert status["peers_seen"] == []
    assert node.proc is not None and node.proc.poll() is None


def test_share_needs_a_client_certificate_from_the_deployment_ca(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("node1")
    code, body = cluster.get("node1", "/share")
    assert code == 403
    assert set(json.loads(body)) == {"error"}
    for spelling in secret_spellings(cluster.shares):
        assert spelling.encode() not in body

    # a certificate from another CA fails the handshake
    stranger = TestCA(tmp_path / "other-ca", "someone else").issue("node2", ADDRS["node2"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        cluster.get("node1", "/share", client=stranger)

    # a deployment certificate gets the share, and it verifies
    code, body = cluster.get("node1", "/share", client=cluster.nodes["node2"].tls)
    assert code == 200
    answer = json.loads(body)
    document = cluster.shares.documents["node1"]
    assert answer["index"] == document["index"]
    assert int(answer["share"], 16) == int(document["share"], 16)
    assert answer["verifier_fingerprint"] == cluster.status("node1")["verifier_fingerprint"]


class FakePeer:
    """A peer with a valid deployment certificate that answers /share with a given body."""

    def __init__(self, addr: str, tls: TLSFiles, answer: dict[str, Any]) -> None:
        body = json.dumps(answer).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((addr, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tampered_share_from_a_peer_is_not_counted(cluster: Cluster, shamir: Any) -> None:
    # node1's fingerprint, to make the fake peer's answer look right in every other way
    probe = cluster.start("node1", peers={})
    fingerprint = cluster.status("node1")["verifier_fingerprint"]
    probe.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    probe.proc.wait(timeout=WAIT_BOUND)  # type: ignore[union-attr]

    real = cluster.shares.documents["node2"]
    tampered_value = (int(real["share"], 16) + 1) % shamir.Q
    fake = FakePeer(
        ADDRS["node2"],
        cluster.nodes["node2"].tls,
        {
            "name": "node2",
            "deployment": "quorum-test",
            "index": real["index"],
            "share": format(tampered_value, "x"),
            "verifier_fingerprint": fingerprint,
        },
    )
    try:
        peers = {
            "node1": (ADDRS["node1"], cluster.nodes["node1"].port),
            "node2": (ADDRS["node2"], fake.port),
            "node3": (ADDRS["node3"], cluster.nodes["node3"].port),
        }
        cluster.start("node1", peers=peers)
        wait_for(
            "node1 to reject node2's share", lambda: "node2" in cluster.status("node1")["peers_rejected"], cluster.logs
        )
        status = cluster.status("node1")
        assert status["state"] == "sealed"
        assert status["shares"] == 1
        assert "node2" not in status["peers_seen"]

        # an honest second peer still unseals it: the bad share blocked nothing
        cluster.start("node3")
        wait_for("node1 to unseal with node3", lambda: cluster.status("node1")["state"] == "unsealed", cluster.logs)
        status = cluster.status("node1")
        assert status["peers_seen"] == ["node3"]
        assert status["peers_rejected"] == ["node2"]
    finally:
        fake.close()


def test_peer_with_a_certificate_for_another_node_is_not_asked(cluster: Cluster) -> None:
    # whatever answers at node2's address holds node3's (valid) certificate and share
    impostor = FakePeer(
        ADDRS["node2"],
        cluster.nodes["node3"].tls,
        {
            "name": "node3",
            "deployment": "quorum-test",
            "index": 3,
            "share": cluster.shares.documents["node3"]["share"],
            "verifier_fingerprint": "x",
        },
    )
    try:
        cluster.start("node1", peers={"node2": (ADDRS["node2"], impostor.port)})
        node1 = cluster.nodes["node1"]
        wait_for("node1 to refuse the impostor", lambda: "does not name node2" in node1.log(), cluster.logs)
        status = cluster.status("node1")
        assert status["state"] == "sealed"
        assert status["shares"] == 1
    finally:
        impostor.close()


def test_sigterm_stops_the_service_cleanly(cluster: Cluster) -> None:
    node = cluster.start("node1")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=WAIT_BOUND) == 0
    assert "SIGTERM received" in node.log()


def test_own_share_that_does_not_verify_is_refused_at_start(cluster: Cluster, shamir: Any) -> None:
    document = dict(cluster.shares.documents["node1"])
    document["share"] = format((int(document["share"], 16) + 1) % shamir.Q, "x")
    cluster.write_share("node1", document)
    node = cluster.nodes["node1"]
    config_path = node.dir / "config.json"
    config_path.write_text(json.dumps(cluster.config("node1")), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(cluster.bin_dir / "quorum.py"), "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
        check=False,
    )
    assert result.returncode == 2
    assert "does not verify" in result.stderr
    assert "Traceback" not in result.stderr
    assert document["share"] not in result.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, bin_dir: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"name": "node1", "addr": "127.0.0.1", "threshold": 2, "peers": [], "paths": {"cert": "relative.pem"}}
        )
    )
    result = subprocess.run(
        [sys.executable, str(bin_dir / "quorum.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "config.paths.cert" in result.stderr


# ------------------------------------------------------------------ templates and manifest


def render_config(servers: list[dict[str, Any]], me: str, threshold: int = 2) -> dict[str, Any]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    template = env.from_string(CONFIG_TEMPLATE.read_text(encoding="utf-8"))
    server = next(s for s in servers if s["name"] == me)
    text = template.render(
        server={**server, "port": 22, "user": "deploy"},
        servers=servers,
        deployment={
            "name": "demo",
            "install_dir": "/opt/quorum",
            "staging_dir": "/tmp/stage",
            "threshold": threshold,
            "n": len(servers),
        },
        install_dir="/opt/quorum",
        overlay={"threshold": threshold, "index": 1},
    )
    result: dict[str, Any] = json.loads(text)
    return result


@pytest.mark.parametrize("count", [1, 2, 5])
def test_config_template_renders_valid_json_for_any_number_of_nodes(count: int) -> None:
    servers = [{"name": f"node{i}", "addr": f"10.0.0.{i}", "roles": ["node"]} for i in range(1, count + 1)]
    # a server without the node role is no peer
    servers.append({"name": "build1", "addr": "10.0.0.99", "roles": ["builder"]})
    config = render_config(servers, "node1", threshold=min(2, count))
    assert config["name"] == "node1"
    assert config["addr"] == "10.0.0.1"
    assert config["port"] == 8443
    assert config["threshold"] == min(2, count)
    assert [p["name"] for p in config["peers"]] == [f"node{i}" for i in range(1, count + 1)]
    assert config["paths"] == {
        "cert": "/opt/quorum/current/overlay/tls/cert.pem",
        "key": "/opt/quorum/current/overlay/tls/key.pem",
        "ca": "/opt/quorum/current/overlay/tls/ca.pem",
        "share": "/opt/quorum/current/overlay/share.json",
    }


def test_config_template_escapes_odd_names() -> None:
    servers = [
        {"name": 'n"1\\', "addr": "::1", "roles": ["node", "seed"]},
        {"name": "n<2>", "addr": "fe80::2", "roles": ["node"]},
    ]
    config = render_config(servers, 'n"1\\')
    assert config["name"] == 'n"1\\'
    assert [p["name"] for p in config["peers"]] == ['n"1\\', "n<2>"]


def test_rendered_config_is_accepted_by_the_service(bin_dir: Path) -> None:
    servers = [{"name": f"node{i}", "addr": f"10.0.0.{i}", "roles": ["node"]} for i in (1, 2, 3)]
    rendered = render_config(servers, "node2")
    code = (
        "import json, sys; import quorum_config as q;"
        "c = q.parse_config(json.load(sys.stdin));"
        "print(json.dumps([c.name, c.threshold, [p.name for p in c.peers], c.share]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(rendered),
        capture_output=True,
        text=True,
        cwd=str(bin_dir),
        check=True,
        timeout=WAIT_BOUND,
    )
    name, threshold, peers, share = json.loads(result.stdout)
    assert name == "node2" and threshold == 2
    assert peers == ["node1", "node3"]  # its own entry is skipped
    assert share == "/opt/quorum/current/overlay/share.json"


def check_smf_manifest(text: str, install_dir: str, command: str) -> None:
    root = ET.fromstring(text.encode("utf-8"))
    service = root.find("service")
    assert service is not None and service.get("name") == "site/quorum"
    start = service.find("exec_method[@name='start']")
    assert start is not None
    assert command in (start.get("exec") or "")
    context = start.find("method_context")
    assert context is not None
    assert context.get("working_directory") == f"{install_dir}/current/quorum"


def test_smf_manifest_renders_to_well_formed_xml() -> None:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    command = '/usr/bin/python3 "/opt/q & <co>/current/quorum/bin/quorum.py" --config x'
    text = env.from_string(SMF_TEMPLATE.read_text(encoding="utf-8")).render(
        install_dir="/opt/q & <co>", service={"command": command}
    )
    check_smf_manifest(text, "/opt/q & <co>", command)


def test_smf_manifest_is_what_flinger_deploys_for_smf_hosts() -> None:
    service_render = pytest.importorskip("flinger.service_render")
    loader = pytest.importorskip("flinger.manifest.loader")
    package = loader.load_manifest(MANIFEST).packages["quorum"]
    context = {
        "server": {"name": "node1", "addr": "10.0.0.1", "roles": ["node"], "port": 22, "user": "root"},
        "servers": [{"name": "node1", "addr": "10.0.0.1", "roles": ["node"]}],
        "deployment": {"name": "demo", "install_dir": "/opt/quorum", "staging_dir": "/tmp/s", "threshold": 1, "n": 1},
        "install_dir": "/opt/quorum",
    }
    files = service_render.render_service(
        package.service, package.service_name, "smf", context, override_dir=SMF_TEMPLATE.parent
    )
    command = (
        "/usr/bin/python3 /opt/quorum/current/quorum/bin/quorum.py"
        " --config /opt/quorum/current/overlay/files/quorum/config.json"
    )
    check_smf_manifest(files["manifest"], "/opt/quorum", command)
    assert "ctrun" in files["manifest"]  # ours, not the generated one


def test_package_manifest_loads_and_its_paths_exist() -> None:
    loader = pytest.importorskip("flinger.manifest.loader")
    manifest = loader.load_manifest(MANIFEST)
    package = manifest.packages["quorum"]
    assert package.roles == ("node",)
    assert package.service is not None and package.service.restart == "always"
    assert "{{ install_dir }}/current/quorum/bin/quorum.py" in package.service.command
    assert "{{ install_dir }}/current/overlay/files/quorum/config.json" in package.service.command
    for mapping in package.source.paths:
        assert glob(str(REPO / mapping.src)), mapping.src
    for overlay in package.overlay:
        assert (REPO / overlay.template).is_file()
    assert [o.dest for o in package.overlay] == ["quorum/config.json"]


def test_packaging_and_smf_stay_data_only() -> None:
    python_files = [p for d in ("packaging", "smf") for p in (REPO / d).rglob("*.py")]
    assert python_files == []
    assert not (REPO / "packaging" / "__init__.py").exists()


def test_service_runs_on_the_oldest_supported_python_without_site_packages(bin_dir: Path) -> None:
    python39 = require_python39()
    # -S: no site-packages, so any import beyond the standard library fails
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import quorum, quorum_config, quorum_http, quorum_peers, quorum_seal, quorum_tls;"
        "print(sys.version_info[:2] == (3, 9))"
    )
    result = subprocess.run(
        [python39, "-S", "-c", code, str(bin_dir)], capture_output=True, text=True, timeout=WAIT_BOUND, check=False
    )
    assert result.stdout.strip() == "True", result.stderr
