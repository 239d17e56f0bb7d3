"""The remote tool's OCI client (flinger/remote/registry.py) against a real CNCF Distribution
(Debian's docker-registry, TLS and htpasswd as the sandbox runs it), and against a small
local server for what a real one will not do on demand: a download cut off midway, and
bearer-token auth."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flinger.protocol.plans import Credential, PushPlan, RegistrySpec
from flinger.remote import registry
from flinger.zipapp import build_remote_zipapp
from flinger_sandbox import registry as sandbox_registry
from flinger_sandbox.net import pick_addresses
from tests.oldest_python import require_python39
from tests.remote_helpers import envelope, run_remote


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(sandbox_registry.PROGRAM).is_file():
        reason = f"needs {sandbox_registry.PACKAGE} (apt-get install {sandbox_registry.PACKAGE})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this must not be skipped")
        pytest.skip(reason)
    files = sandbox_registry.RegistryFiles(tmp_path_factory.mktemp("distribution") / "registry")
    addr = pick_addresses(None, 1, sandbox_registry.PORT)[0]
    record = sandbox_registry.start(files, addr)
    try:
        yield {
            "files": files,
            "url": record.url,
            "ca": files.ca_cert.read_text(),
            "password": files.password.read_text().strip(),
        }
    finally:
        sandbox_registry.stop(record)


def client(dist: dict[str, Any], **overrides: Any) -> registry.Registry:
    options: dict[str, Any] = {
        "ca_pem": dist["ca"],
        "username": sandbox_registry.USERNAME,
        "password": dist["password"],
    }
    options.update(overrides)
    return registry.Registry(options.pop("url", dist["url"]), options.pop("repository", "test/repo"), **options)


def artifacts(root: Path, contents: dict[str, bytes]) -> Path:
    (root / "packages").mkdir(parents=True)
    packages = {}
    for name, data in contents.items():
        (root / "packages" / f"{name}.tar.gz").write_bytes(data)
        packages[name] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "file": f"packages/{name}.tar.gz",
            "size": len(data),
            "version": "1",
        }
    (root / "manifest.json").write_text(json.dumps({"packages": packages}))
    return root


def test_a_build_is_published_once_and_pulled_back_bit_for_bit(distribution: dict[str, Any], tmp_path: Path) -> None:
    big = os.urandom(3 * registry.CHUNK + 17)
    art = artifacts(tmp_path / "out", {"app": big, "conf": b"small"})
    reg = client(distribution)
    first = registry.publish(reg, str(art))
    assert sorted(first.pushed) == ["app", "conf"] and first.present == []
    assert len(big) + 5 < first.bytes_sent < len(big) + 5 + 4096  # packages, list and manifest, once
    again = registry.publish(reg, str(art))
    assert again.pushed == [] and again.bytes_sent == 0 and again.manifest_digest == first.manifest_digest
    dest = tmp_path / "app.tar.gz"
    got = reg.pull_blob("sha256:" + hashlib.sha256(big).hexdigest(), str(dest))
    assert dest.read_bytes() == big and got == registry.Pulled(len(big), resumed=False)
    assert dest.stat().st_mode & 0o777 == 0o600
    # the manifest names every package by digest, under the build's tag
    _, _, body = reg.request("GET", f"/v2/test/repo/manifests/{first.tag}", headers={"Accept": registry.MANIFEST_TYPE})
    layers = {layer["annotations"]["dev.flinger.package"]: layer["digest"] for layer in json.loads(body)["layers"]}
    assert layers == {
        "app": "sha256:" + hashlib.sha256(big).hexdigest(),
        "conf": "sha256:" + hashlib.sha256(b"small").hexdigest(),
    }
    reg.close()


def test_a_partial_download_is_resumed_from_where_it_stopped(distribution: dict[str, Any], tmp_path: Path) -> None:
    data = os.urandom(2 * registry.CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reg = client(distribution)
    reg.push_blob(digest, data=data)
    dest = tmp_path / "blob"
    (tmp_path / "blob.part").write_bytes(data[: registry.CHUNK + 5])
    got = reg.pull_blob(digest, str(dest))
    assert got == registry.Pulled(len(data) - registry.CHUNK - 5, resumed=True)
    assert dest.read_bytes() == data and not (tmp_path / "blob.part").exists()


def test_a_blob_with_the_wrong_digest_is_refused_and_not_kept(distribution: dict[str, Any], tmp_path: Path) -> None:
    data = os.urandom(50_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reg = client(distribution)
    reg.push_blob(digest, data=data)
    stored = distribution["files"].blob(digest)
    stored.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    dest = tmp_path / "blob"
    with pytest.raises(registry.RegistryError, match="refused"):
        reg.pull_blob(digest, str(dest))
    assert not dest.exists() and not (tmp_path / "blob.part").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"password": "wrong"}, "refused the credentials"),
        ({"ca_pem": None}, "certificate of .* is not trusted"),
        ({"url": "https://127.0.0.1:1"}, "unreachable"),
    ],
)
def test_failures_name_what_failed_and_never_the_password(
    distribution: dict[str, Any], overrides: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "RETRY_PAUSE", 0.01)
    reg = client(distribution, **overrides)
    with pytest.raises(registry.RegistryError, match=message) as caught:
        reg.has_blob("sha256:" + "0" * 64)
    assert distribution["password"] not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "plain_http", "message"),
    [
        ("http://10.0.0.1:5000", True, "only for a loopback registry"),
        ("http://127.0.0.1:5000", False, "only for a loopback registry"),
        ("ftp://127.0.0.1", False, "must be https"),
        ("https://user:pw@example.net", False, "must not carry credentials"),
    ],
)
def test_plain_http_and_odd_urls_are_refused(url: str, plain_http: bool, message: str) -> None:
    with pytest.raises(registry.RegistryError, match=message):
        registry.Registry(url, "test/repo", plain_http=plain_http)


def test_the_builder_publishes_through_the_remote_tool_on_the_oldest_python(
    distribution: dict[str, Any], tmp_path: Path
) -> None:
    pyz = tmp_path / "tool.pyz"
    build_remote_zipapp(pyz)
    art = artifacts(tmp_path / "out", {"old": os.urandom(10_000)})
    plan = PushPlan(
        artifacts_dir=str(art),
        registry=RegistrySpec(distribution["url"], "test/old", ca_pem=distribution["ca"]),
        credential=Credential(sandbox_registry.USERNAME, distribution["password"]),
    )
    for python in (sys.executable, require_python39()):
        answer = run_remote("registry-push", plan, python=python, tool=[str(pyz)], timeout=60)
        assert answer.result is not None and answer.result.ok is True, answer.stdout + answer.stderr
        assert distribution["password"] not in answer.stdout + answer.stderr
    assert answer.result.pushed == [] and answer.result.bytes_sent == 0  # the second run found it all there
    # and a server on the oldest Python pulls it back, resuming a partial download
    digest = "sha256:" + json.loads((art / "manifest.json").read_text())["packages"]["old"]["sha256"]
    (tmp_path / "old.part").write_bytes((art / "packages" / "old.tar.gz").read_bytes()[:1000])
    script = (
        "import dataclasses, json, sys; sys.path.insert(0, sys.argv[1]); from flinger.remote import registry; "
        "from flinger.protocol.messages import read_plan; "
        "plan = read_plan('registry-push', sys.stdin.read()); "
        "reg = registry.Registry.of(plan.registry, plan.credential); "
        "print(json.dumps(dataclasses.asdict(reg.pull_blob(sys.argv[2], sys.argv[3]))))"
    )
    done = subprocess.run(
        [require_python39(), "-c", script, str(pyz), digest, str(tmp_path / "old")],
        input=envelope("registry-push", plan),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"received": 9000, "resumed": True}
    assert (tmp_path / "old").read_bytes() == (art / "packages" / "old.tar.gz").read_bytes()


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """A registry that asks for a bearer token, and cuts the first download of a blob short."""

    blob = os.urandom(300_000)
    token = "tok-123"
    seen: ClassVar[list[tuple[str, str | None, str | None]]] = []
    cut = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        """An upload needs a token of the push scope: a pull token gets a new challenge."""
        FakeRegistry.seen.append((self.path, self.headers.get("Authorization"), None))
        if self.headers.get("Authorization") != "Bearer tok-push":
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://{self.headers.get("Host")}/token",'
                'service="fake",scope="repository:t/r:pull,push"',
            )
        else:
            self.send_response(202)
            self.send_header("Location", "/v2/t/r/blobs/uploads/abc")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        FakeRegistry.seen.append((self.path, self.headers.get("Authorization"), self.headers.get("Range")))
        if self.path.startswith("/token?"):
            ok = self.headers.get("Authorization") == "Basic dTpw"  # u:p
            self.send_response(200 if ok else 401)
            token = "tok-push" if "pull%2Cpush" in self.path else self.token  # one token per scope
            body = json.dumps({"token": token}).encode() if ok else b"{}"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            host = self.headers.get("Host")
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate", f'Bearer realm="http://{host}/token",service="fake",scope="repository:t/r:pull"'
            )
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int((self.headers.get("Range") or "bytes=0-")[6:].rstrip("-"))
        data = self.blob[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if FakeRegistry.cut:
            FakeRegistry.cut = False
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


def test_bearer_tokens_per_scope_and_a_cut_download_that_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "RETRY_PAUSE", 0.01)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reg = registry.Registry(
            f"http://127.0.0.1:{server.server_port}", "t/r", username="u", password="p", plain_http=True
        )
        digest = "sha256:" + hashlib.sha256(FakeRegistry.blob).hexdigest()
        retries: list[str] = []
        got = reg.pull_blob(digest, str(tmp_path / "blob"), on_retry=retries.append)
        assert (tmp_path / "blob").read_bytes() == FakeRegistry.blob
        assert got.resumed is True and retries and "cut off" in retries[0]
        token_asks = [s for s in FakeRegistry.seen if s[0].startswith("/token?")]
        assert len(token_asks) == 1 and "scope=repository%3At%2Fr%3Apull" in token_asks[0][0]
        ranges = [s[2] for s in FakeRegistry.seen if s[0].startswith("/v2/") and s[1] == "Bearer tok-123"]
        assert ranges[0] is None and ranges[-1] == f"bytes={len(FakeRegistry.blob) // 3}-", ranges
        # a push after the pull asks for a wider scope: a token of its own, then the upload starts
        status, headers, _ = reg.request("POST", "/v2/t/r/blobs/uploads/", body=b"", ok=(202,))
        assert status == 202 and headers["location"] == "/v2/t/r/blobs/uploads/abc"
        assert len([s for s in FakeRegistry.seen if s[0].startswith("/token?")]) == 2
    finally:
        server.shutdown()
