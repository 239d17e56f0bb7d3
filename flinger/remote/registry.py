"""An OCI distribution client in the standard library (python3 3.9+, as the remote tool).

The builder publishes a build (`registry-push`): each package tarball as a blob (only those
the registry lacks), the build's package list as the config blob, and one OCI image
manifest that names them, tagged `build-<digest of the list>`. Servers pull the blobs they
lack by digest (`pull`, called by the remote install): a cut-off download resumes with a
Range request, and a blob whose sha256 is not its digest is deleted and refused before
anything unpacks it.

TLS is verified (against the plan's CA, else the system's); plain HTTP is refused unless the
plan allows it and the registry is on a loopback address. Auth: HTTP basic, or a bearer
token fetched from the realm a 401 names (registries with token auth). Credentials never
appear in events, errors or results.
"""

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from flinger.protocol.plans import Credential, PushPlan, RegistrySpec
from flinger.protocol.results import BuiltPackage, PushResult
from flinger.remote import events, files

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.flinger.build.v1+json"
PACKAGE_TYPE = "application/vnd.flinger.package.v1.tar+gzip"
TITLE = "org.opencontainers.image.title"
CHUNK = 1 << 20
TRIES = 4  # attempts per request that failed on the network or with a 5xx/429
RETRY_PAUSE = 0.5  # seconds, doubled after each failed attempt
REDIRECTS = 5
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(Exception):
    """A registry request that failed for good (a one-line message, no credentials)."""


class _Retry(Exception):
    """A failure worth another attempt (network, 5xx, 429)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Registry:
    """One registry and repository, with one kept-alive connection per host."""

    @classmethod
    def of(cls, spec: RegistrySpec, credential: Optional[Credential] = None) -> "Registry":
        """The registry a plan names, with the credential that travels apart from it."""
        return cls(
            spec.url,
            spec.repository,
            ca_pem=spec.ca_pem,
            username=credential.username if credential else None,
            password=credential.password if credential else None,
            plain_http=spec.plain_http,
        )

    def __init__(
        self,
        url: str,
        repository: str,
        *,
        ca_pem: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        plain_http: bool = False,
        timeout: float = 60.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise RegistryError("registry url must be https://HOST[:PORT], got %r" % url)
        if parts.username or parts.password:
            raise RegistryError("the registry url must not carry credentials")
        if parts.scheme == "http" and not (plain_http and is_loopback(parts.hostname)):
            raise RegistryError("plain http is only for a loopback registry the topology allows (plain_http)")
        if not _REPOSITORY.match(repository):
            raise RegistryError("repository %r is not an OCI repository name" % repository)
        self.base = "%s://%s" % (parts.scheme, parts.netloc)
        self.repository = repository
        self.timeout = timeout
        self._context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
        self._basic = None
        if username is not None:
            token = base64.b64encode(("%s:%s" % (username, password or "")).encode()).decode()
            self._basic = "Basic " + token
        self._auth = self._basic
        self._bearer_tried: Set[Tuple[Optional[str], ...]] = set()
        self._conns: Dict[str, http.client.HTTPConnection] = {}

    # -- the connection and one request -------------------------------------------------
    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _conn(self, origin: str) -> http.client.HTTPConnection:
        conn = self._conns.get(origin)
        if conn is None:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    parts.hostname or "", parts.port, timeout=self.timeout, context=self._context, blocksize=CHUNK
                )
            else:
                conn = http.client.HTTPConnection(
                    parts.hostname or "", parts.port, timeout=self.timeout, blocksize=CHUNK
                )
            self._conns[origin] = conn
        return conn

    def _drop(self, origin: str) -> None:
        conn = self._conns.pop(origin, None)
        if conn is not None:
            conn.close()

    def _send(
        self,
        method: str,
        url: str,
        headers: Dict[str, str],
        body: Any = None,
    ) -> Tuple[http.client.HTTPResponse, str]:
        """One request, following redirects (credentials go only to the registry's own
        origin); the response (not yet read) and the origin it came from."""
        for _ in range(REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            origin = "%s://%s" % (parts.scheme, parts.netloc)
            if parts.scheme == "http" and origin != self.base:
                raise RegistryError("the registry redirected to plain http (%s): refused" % parts.netloc)
            sent = dict(headers)
            if self._auth and origin == self.base:
                sent["Authorization"] = self._auth
            path = parts.path + ("?" + parts.query if parts.query else "")
            conn = self._conn(origin)
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                conn.request(method, path or "/", body=body, headers=sent)
                response = conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                self._drop(origin)
                raise RegistryError(
                    "TLS: the certificate of %s is not trusted: %s" % (parts.netloc, exc.verify_message or exc)
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(origin)
                raise _Retry("%s unreachable: %s" % (parts.netloc, _why(exc))) from None
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                response.read()
                url = urllib.parse.urljoin(url, response.getheader("Location") or "")
                if response.status == 303:
                    method, body = "GET", None
                continue
            return response, origin
        raise RegistryError("too many redirects from %s" % self.base)

    def _open(
        self,
        method: str,
        url: str,
        headers: Dict[str, str],
        body: Any = None,
    ) -> Tuple[http.client.HTTPResponse, str]:
        """`_send`, and again with a bearer token for as long as a 401 asks for a scope not
        tried yet (a push after a pull asks for a wider one)."""
        response, origin = self._send(method, url, headers, body)
        while response.status == 401 and self._authorize(response):
            response.read()
            response, origin = self._send(method, url, headers, body)
        return response, origin

    @staticmethod
    def _refuse(method: str, url: str, status: int, data: bytes) -> None:
        """Raise for an answer that is not the one wanted: _Retry when another attempt may
        do (429, 5xx), else RegistryError with the registry's own words."""
        if status == 429 or status >= 500:
            raise _Retry("%s %s: HTTP %d" % (method, _shown(url), status))
        if status == 401:
            raise RegistryError("%s %s: HTTP 401: the registry refused the credentials" % (method, _shown(url)))
        raise RegistryError("%s %s: HTTP %d%s" % (method, _shown(url), status, _errors(data)))

    @staticmethod
    def _retrying(attempt: Callable[[], Any], on_retry: Optional[Callable[[str], None]] = None) -> Any:
        """`attempt()`, again after a pause (doubled each time) while it raises _Retry, up to
        TRIES times; the last _Retry becomes a RegistryError."""
        pause = RETRY_PAUSE
        for tried in range(1, TRIES + 1):
            try:
                return attempt()
            except _Retry as exc:
                if tried == TRIES:
                    raise RegistryError(str(exc)) from None
                if on_retry is not None:
                    on_retry(str(exc))
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Optional[Dict[str, str]] = None,
        body: Any = None,
        ok: Tuple[int, ...] = (200,),
    ) -> Tuple[int, Dict[str, str], bytes]:
        """A request to the registry (a path under it, or a whole URL it gave), with retries
        and auth; (status, headers, body) for a status in `ok` (or 404 when listed)."""
        url = path if "://" in path else self.base + path

        def attempt() -> Tuple[int, Dict[str, str], bytes]:
            response, origin = self._open(method, url, dict(headers or {}), body)
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                self._drop(origin)
            if response.status not in ok:
                self._refuse(method, url, response.status, data)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data

        result: Tuple[int, Dict[str, str], bytes] = self._retrying(attempt)
        return result

    def _authorize(self, response: http.client.HTTPResponse) -> bool:
        """After a 401: fetch a bearer token when the registry asks for one (once); True to
        try the request again."""
        challenge = response.getheader("WWW-Authenticate") or ""
        if not challenge.lower().startswith("bearer "):
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        asked = (fields.get("realm"), fields.get("service"), fields.get("scope"))
        if asked in self._bearer_tried:  # a token for this scope did not do: the credentials
            return False
        self._bearer_tried.add(asked)  # a new scope (a push after a pull) gets its own token
        realm = fields.pop("realm", "")
        if not realm.startswith("https://") and not (realm.startswith("http://") and self.base.startswith("http://")):
            raise RegistryError("the registry's token realm %r is not https: refused" % realm)
        query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
        parts = urllib.parse.urlsplit(realm)
        origin = "%s://%s" % (parts.scheme, parts.netloc)
        headers = {"Authorization": self._basic} if self._basic else {}
        conn = self._conn(origin)
        try:
            conn.request("GET", parts.path + "?" + query, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(origin)
            raise RegistryError("token service %s unreachable: %s" % (parts.netloc, _why(exc))) from None
        if reply.status != 200:
            raise RegistryError(
                "token service %s: HTTP %d (are the registry credentials right?)" % (parts.netloc, reply.status)
            )
        try:
            answer = json.loads(data.decode())
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError("token service %s gave no token" % parts.netloc)
        self._auth = "Bearer " + token
        return True

    # -- blobs and manifests ------------------------------------------------------------
    def _blob_path(self, digest: str) -> str:
        if not _DIGEST.match(digest):
            raise RegistryError("%r is not a sha256 digest" % digest)
        return "/v2/%s/blobs/%s" % (self.repository, digest)

    def has_blob(self, digest: str) -> bool:
        status, _, _ = self.request("HEAD", self._blob_path(digest), ok=(200, 404))
        return status == 200

    def push_blob(self, digest: str, path: Optional[str] = None, data: Optional[bytes] = None) -> int:
        """Upload one blob (a file or bytes) in one PUT; bytes sent."""
        self._blob_path(digest)
        _, headers, _ = self.request("POST", "/v2/%s/blobs/uploads/" % self.repository, body=b"", ok=(202,))
        location = headers.get("location")
        if not location:
            raise RegistryError("the registry gave no upload location")
        target = urllib.parse.urljoin(self.base + "/", location)
        target += ("&" if "?" in target else "?") + "digest=" + urllib.parse.quote(digest)
        size = os.path.getsize(path) if path is not None else len(data or b"")
        put_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if path is not None:
            with open(path, "rb") as handle:
                self.request("PUT", target, headers=put_headers, body=handle, ok=(201,))
        else:
            self.request("PUT", target, headers=put_headers, body=data or b"", ok=(201,))
        return size

    def manifest_digest(self, tag: str) -> Optional[str]:
        """The digest of the manifest `tag` names, or None when there is none."""
        status, headers, _ = self.request(
            "HEAD", "/v2/%s/manifests/%s" % (self.repository, tag), headers={"Accept": MANIFEST_TYPE}, ok=(200, 404)
        )
        return headers.get("docker-content-digest") if status == 200 else None

    def put_manifest(self, tag: str, manifest: bytes) -> None:
        self.request(
            "PUT",
            "/v2/%s/manifests/%s" % (self.repository, tag),
            headers={"Content-Type": MANIFEST_TYPE},
            body=manifest,
            ok=(201,),
        )

    def pull_blob(self, digest: str, dest: str, on_retry: Optional[Callable[[str], None]] = None) -> "Pulled":
        """Download a blob to `dest` (0600), resuming a partial one; refused (deleted) unless
        its sha256 is `digest`."""
        url = self.base + self._blob_path(digest)
        part = dest + ".part"
        got = Pulled()

        def attempt() -> None:
            have = os.path.getsize(part) if os.path.exists(part) else 0
            response, origin = self._open("GET", url, {"Range": "bytes=%d-" % have} if have else {})
            if response.status == 416 and have:  # asked from the very end: it is all here
                response.read()
                return
            if response.status not in (200, 206):
                self._refuse("GET", url, response.status, response.read())
            resume = response.status == 206
            got.resumed = got.resumed or resume
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "ab" if resume else "wb") as out:
                if not resume:
                    out.truncate(0)
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        self._drop(origin)
                        raise _Retry("download cut off: %s" % _why(exc)) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    got.received += len(chunk)
            length = response.getheader("Content-Length")
            if not resume and length is not None and os.path.getsize(part) < int(length):
                self._drop(origin)
                raise _Retry("download cut off after %d of %s bytes" % (os.path.getsize(part), length))

        self._retrying(attempt, on_retry)
        actual = "sha256:" + files.sha256_file(part)
        if actual != digest:
            os.unlink(part)
            raise RegistryError("blob %s from the registry has sha256 %s: refused" % (digest, actual[7:]))
        os.replace(part, dest)
        return got


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _shown(url: str) -> str:
    """A URL as errors show it: its path, without the query (upload state, tokens)."""
    return urllib.parse.urlsplit(url).path


def _errors(data: bytes) -> str:
    """The registry's own error codes and messages, when it sent some."""
    try:
        found = json.loads(data.decode()).get("errors") or []
        said = "; ".join("%s: %s" % (e.get("code"), e.get("message")) for e in found if isinstance(e, dict))
    except (ValueError, AttributeError, UnicodeDecodeError):
        return ""
    return " (%s)" % said[:300] if said else ""


@dataclass
class Pulled:
    """What a pull received: bytes over the network, and whether it resumed a partial file."""

    received: int = 0
    resumed: bool = False


# ------------------------------------------------------------------------- publishing


def build_tag(config: bytes) -> str:
    return "build-" + hashlib.sha256(config).hexdigest()[:24]


def publish(registry: Registry, artifacts_dir: str) -> PushResult:
    """Push a build's packages (those the registry lacks), its package list and its manifest."""
    from flinger.remote.pkgbuild import read_manifest

    packages: Dict[str, BuiltPackage] = read_manifest(artifacts_dir)
    if not packages:
        raise RegistryError("no build in %s: run flinger build package" % artifacts_dir)
    pushed: List[str] = []
    present: List[str] = []
    sent = 0
    layers = []
    for name in sorted(packages):
        info = packages[name]
        digest = "sha256:%s" % info.sha256
        rel = info.file
        path = os.path.join(artifacts_dir, rel)
        if not os.path.isfile(path):
            raise RegistryError("package %s: no tarball at %s" % (name, path))
        if registry.has_blob(digest):
            present.append(name)
        else:
            events.step("push: %s" % name)
            sent += registry.push_blob(digest, path=path)
            pushed.append(name)
        events.line("%s: %s (%s)" % (name, "pushed" if name in pushed else "already in the registry", digest))
        layers.append(
            {
                "mediaType": PACKAGE_TYPE,
                "digest": digest,
                "size": os.path.getsize(path),
                "annotations": {TITLE: os.path.basename(rel), "dev.flinger.package": name},
            }
        )
    config = files.canonical_json(
        {
            "packages": {
                n: {
                    "sha256": packages[n].sha256,
                    "file": packages[n].file,
                    "version": packages[n].version,
                }
                for n in sorted(packages)
            }
        }
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    if not registry.has_blob(config_digest):
        sent += registry.push_blob(config_digest, data=config)
    manifest = files.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": CONFIG_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": layers,
        }
    ).encode()
    tag = build_tag(config)
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    if registry.manifest_digest(tag) != manifest_digest:  # a re-run publishes nothing
        registry.put_manifest(tag, manifest)
        sent += len(manifest)
    return PushResult(
        packages=packages, tag=tag, manifest_digest=manifest_digest, pushed=pushed, present=present, bytes_sent=sent
    )


def push(plan: PushPlan) -> PushResult:
    """The `registry-push` command: publish the build in the plan's artifacts dir."""
    try:
        registry = Registry.of(plan.registry, plan.credential)
    except RegistryError as exc:
        return PushResult(ok=False, step="publish", error="registry: %s" % exc)
    try:
        return publish(registry, os.path.abspath(plan.artifacts_dir))
    except (RegistryError, OSError) as exc:
        return PushResult(ok=False, step="publish", error="registry: %s" % exc)
    finally:
        registry.close()
