"""The `build` command (run on the builder): build packages into deterministic tarballs.

Plan: `BuildPlan` (source_dir, artifacts_dir, no_cache, check_only, jobs, and each package's
`PackageSource`: local | prebuilt | composite). Result: `BuildResult`, each package's outcome.

Artifacts: `<artifacts>/packages/<name>.tar.gz`, `<artifacts>/cache/<sha256>` (downloads),
`<artifacts>/manifest.json` = {"packages": {name: {version, sha256, inputs_digest, size, file}}}.

Cache rule (the inputs digest). A package's inputs digest is SHA-256 over its canonical
spec (type, version, build commands, path mappings, url + sha256, member names, extra
files) plus, for a local package, the relative path, mode and content digest of every file
its `paths` and declared `inputs` name, and for a composite the sha256 of each member
tarball. The digest recorded is always the one taken after the build commands ran, so it
describes exactly what was packed.
- A package without build commands, a prebuilt or a composite is skipped outright when its
  digest matches the manifest and the tarball still has its recorded sha256.
- A local package with build commands cannot be judged before building, because nothing
  says which files its commands read (a changed source file changes no `paths` file until
  the build has run). Its commands always run (build tools have their own incremental
  caches) and only the packing is skipped when the result is unchanged. A package that
  declares `inputs` (globs of the files its commands read) is judged before building and
  skipped outright, commands included, when nothing changed.
A stale package deployed as if fresh is the worst outcome of a cache, hence this choice.
"""

import collections
import concurrent.futures
import glob
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.parse
import urllib.request
from typing import Deque, Dict, List, Optional, Set, Tuple

from flinger.protocol import graph, names
from flinger.protocol.codec import ProtocolError, decode, encode
from flinger.protocol.plans import BuildPlan, PackageSource
from flinger.protocol.results import BuildResult, BuiltPackage, PackageOutcome
from flinger.remote import events, files, tarball, unpack

METADATA_FILE = ".flinger-package.json"
_TAIL_LINES = 20
_DOWNLOAD_TIMEOUT = 60


class BuildFailed(Exception):
    """One package failed; carries what the failure event reports."""

    def __init__(
        self,
        message: str,
        command: Optional[str] = None,
        exit_status: Optional[int] = None,
        tail: Optional[List[str]] = None,
    ) -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status
        self.tail = tail or []


# ---------------------------------------------------------------------------- the plan


def _relative(path: str, what: str) -> str:
    """A plan path that must stay inside its root: no absolute path, no '..'."""
    clean = os.path.normpath(path) if path else "."
    if os.path.isabs(clean) or clean == ".." or clean.startswith("../"):
        raise events.PlanError("%s %r must be relative and stay inside its tree" % (what, path))
    return clean


def parse_packages(plan: BuildPlan) -> Dict[str, PackageSource]:
    """The plan's packages, checked (plain names, paths inside their trees, composites of
    packages in the plan, no cycle), by name."""
    packages: Dict[str, PackageSource] = {}
    for spec in plan.packages:
        problem = names.problem(spec.name, "a package name")
        if problem:
            raise events.PlanError(problem)
        if spec.name in packages:
            raise events.PlanError("package %s appears twice" % spec.name)
        if spec.type not in ("local", "prebuilt", "composite"):
            raise events.PlanError("package %s: unknown type %r" % (spec.name, spec.type))
        for mapping in spec.paths:
            mapping.source = _relative(mapping.source, "paths.from")
            mapping.dest = _relative(mapping.dest, "paths.to")
        spec.inputs = [_relative(p, "inputs") for p in spec.inputs]
        spec.sha256 = (spec.sha256 or "").lower() or None
        if spec.type == "prebuilt" and (not spec.url or not spec.sha256):
            raise events.PlanError("prebuilt package %s needs url and sha256" % spec.name)
        packages[spec.name] = spec
    for spec in packages.values():
        for member in spec.packages:
            if member not in packages:
                raise events.PlanError("composite %s: no package named %s" % (spec.name, member))
    try:
        graph.ordered({name: spec.packages for name, spec in packages.items()})
    except graph.Cycle as exc:
        raise events.PlanError("composite packages form a cycle: %s" % exc) from None
    return packages


# ------------------------------------------------------------------------ the inputs


def _matches(source_dir: str, pattern: str) -> List[str]:
    found = sorted(glob.glob(os.path.join(source_dir, pattern), recursive=True))
    root = os.path.realpath(source_dir)
    inside = [f for f in found if os.path.realpath(f) == root or os.path.realpath(f).startswith(root + os.sep)]
    return inside


def _files_under(path: str) -> List[str]:
    if os.path.isdir(path) and not os.path.islink(path):
        out: List[str] = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
            out.extend(os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        return out
    return [path]


def _describe_files(source_dir: str, patterns: List[str]) -> List[str]:
    """'relpath mode digest' of every file the patterns name (missing ones marked)."""
    lines = []
    for pattern in patterns:
        found = _matches(source_dir, pattern)
        if not found:
            lines.append("missing %s" % pattern)
        for match in found:
            for path in _files_under(match):
                rel = os.path.relpath(path, source_dir)
                if os.path.islink(path):
                    lines.append("link %s %s" % (rel, os.readlink(path)))
                else:
                    mode = os.stat(path).st_mode & 0o777
                    lines.append("file %s %o %s" % (rel, mode, files.sha256_file(path)))
    return lines


def inputs_digest(spec: PackageSource, source_dir: str, member_digests: List[str]) -> str:
    """The cache key of a package (see the module docstring). The spec is described as the
    tool has always described it, so an upgrade of flinger alone rebuilds nothing."""
    digest = hashlib.sha256()
    described: Dict[str, object] = {
        "name": spec.name,
        "version": spec.version,
        "type": spec.type,
        "build": spec.build,
        "paths": [{"from": p.source, "to": p.dest} for p in spec.paths],
        "inputs": spec.inputs,
        "url": spec.url,
        "sha256": spec.sha256,
        "to": spec.to,
        "packages": spec.packages,
        "files": {},  # extra files of a package: once in the plan, kept so digests stay as they were
    }
    digest.update(files.canonical_json(described).encode())
    if spec.type == "local":
        patterns = [p.source for p in spec.paths] + spec.inputs
        for line in _describe_files(source_dir, patterns):
            digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    for member in member_digests:
        digest.update(("member %s\n" % member).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------- the builder


class Builder:
    """Builds the packages of one plan, sharing the artifacts manifest between threads."""

    def __init__(self, plan: BuildPlan) -> None:
        self.source_dir = os.path.abspath(plan.source_dir)
        self.artifacts_dir = os.path.abspath(plan.artifacts_dir)
        self.no_cache = plan.no_cache
        self.check_only = plan.check_only
        self.jobs = max(1, plan.jobs)
        self.packages = parse_packages(plan)
        self.packages_dir = os.path.join(self.artifacts_dir, "packages")
        self.cache_dir = os.path.join(self.artifacts_dir, "cache")
        self.manifest_path = os.path.join(self.artifacts_dir, "manifest.json")
        self._lock = threading.Lock()
        self.manifest: Dict[str, BuiltPackage] = read_manifest(self.artifacts_dir)
        self.outcomes: Dict[str, PackageOutcome] = {}

    # -- one package

    def build_one(self, name: str) -> PackageOutcome:
        """Build (or reuse) one package."""
        spec = self.packages[name]
        if self.check_only:
            self._run_commands(spec)
            return PackageOutcome("checked")
        members = [self.manifest[m].sha256 for m in spec.packages]
        judged_early = spec.type != "local" or not spec.build or bool(spec.inputs)
        digest = inputs_digest(spec, self.source_dir, members) if judged_early else ""
        if judged_early and self._is_cached(name, digest):
            return PackageOutcome("cached", sha256=self.manifest[name].sha256, size=self.manifest[name].size)
        if spec.build:
            self._run_commands(spec)
            # the recorded digest describes the tree after the commands ran
            digest = inputs_digest(spec, self.source_dir, members)
        if not judged_early and self._is_cached(name, digest):
            return PackageOutcome("cached", sha256=self.manifest[name].sha256, size=self.manifest[name].size)
        sha, size = self._pack(spec, digest)
        return PackageOutcome("built", sha256=sha, size=size)

    def _is_cached(self, name: str, digest: str) -> bool:
        if self.no_cache:
            return False
        with self._lock:
            entry = self.manifest.get(name)
        if entry is None or entry.inputs_digest != digest:
            return False
        path = os.path.join(self.artifacts_dir, entry.file)
        return os.path.isfile(path) and files.sha256_file(path) == entry.sha256

    def _run_commands(self, spec: PackageSource) -> None:
        for command in spec.build:
            events.step(command, subject=spec.name)
            tail: Deque[str] = collections.deque(maxlen=_TAIL_LINES)
            process = subprocess.Popen(
                ["sh", "-c", command],
                cwd=self.source_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                events.line(line, subject=spec.name)
            status = process.wait()
            if status != 0:
                raise BuildFailed("command failed", command=command, exit_status=status, tail=list(tail))

    def _pack(self, spec: PackageSource, digest: str) -> Tuple[str, int]:
        events.step("pack", subject=spec.name)
        os.makedirs(self.packages_dir, exist_ok=True)
        scratch = tempfile.mkdtemp(dir=self.artifacts_dir, prefix=".staging-%s-" % spec.name)
        try:
            entries: tarball.Entries = {}
            if spec.type == "local":
                self._map_paths(spec, entries)
            elif spec.type == "prebuilt":
                self._map_prebuilt(spec, entries, scratch)
            else:
                self._map_members(spec, entries, scratch)
            metadata = {"name": spec.name, "version": spec.version, "inputs_digest": digest}
            entries[METADATA_FILE] = tarball.Entry("data", data=(files.canonical_json(metadata) + "\n").encode())
            relfile = "packages/%s.tar.gz" % spec.name
            partial = os.path.join(scratch, "package.tar.gz")
            try:
                tarball.pack_entries(entries, partial)
            except tarball.PackError as exc:
                raise BuildFailed(str(exc)) from None
            sha = files.sha256_file(partial)
            size = os.path.getsize(partial)
            os.replace(partial, os.path.join(self.artifacts_dir, relfile))
            with self._lock:
                self.manifest[spec.name] = BuiltPackage(sha, relfile, spec.version, digest, size)
                self._write_manifest()
            return sha, size
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _map_paths(self, spec: PackageSource, entries: tarball.Entries) -> None:
        """Entries for the `paths` mappings, read straight from the source tree."""
        for mapping in spec.paths:
            found = _matches(self.source_dir, mapping.source)
            if not found:
                raise BuildFailed("paths: %r matches nothing in the source tree" % mapping.source)
            dest = mapping.dest.strip("/")
            dest = "" if dest == "." else dest
            many = glob.has_magic(mapping.source) or mapping.dest.endswith("/")
            for match in found:
                name = (dest + "/" + os.path.basename(match)).lstrip("/") if many else dest
                if os.path.isdir(match) and not os.path.islink(match):
                    tarball.add_tree(entries, match, name)
                elif not name:
                    raise BuildFailed("paths: %r is a file; give it a `to` name" % mapping.source)
                else:
                    tarball.add_parents(entries, name)
                    entries[name] = tarball.entry_for(match)

    def _download(self, spec: PackageSource) -> str:
        """The prebuilt file in the download cache, fetched when absent or corrupt."""
        assert spec.url is not None and spec.sha256 is not None
        os.makedirs(self.cache_dir, exist_ok=True)
        cached = os.path.join(self.cache_dir, spec.sha256)
        if os.path.isfile(cached) and files.sha256_file(cached) == spec.sha256:
            events.line("download of %s: the cached copy" % spec.url, subject=spec.name)
            return cached
        scheme = urllib.parse.urlparse(spec.url).scheme
        if scheme not in ("http", "https", "file"):
            raise BuildFailed("url scheme %r is not supported" % scheme)
        events.step("download", subject=spec.name)
        fd, partial = tempfile.mkstemp(dir=self.cache_dir, prefix=".download-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                with urllib.request.urlopen(spec.url, timeout=_DOWNLOAD_TIMEOUT) as response:  # noqa: S310 (scheme checked)
                    while True:
                        chunk = response.read(1 << 20)
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
            if digest.hexdigest() != spec.sha256:
                raise BuildFailed(
                    "download of %s has sha256 %s, expected %s" % (spec.url, digest.hexdigest(), spec.sha256)
                )
            os.replace(partial, cached)
        except OSError as exc:
            raise BuildFailed("cannot download %s: %s" % (spec.url, exc)) from None
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return cached

    def _map_prebuilt(self, spec: PackageSource, entries: tarball.Entries, scratch: str) -> None:
        cached = self._download(spec)
        path = urllib.parse.urlparse(spec.url or "").path
        if path.endswith((".tar.gz", ".tgz")):
            tree = os.path.join(scratch, "tree")
            try:
                unpack.extract(cached, tree)
            except (unpack.UnsafeArchive, OSError, tarfile.TarError) as exc:
                raise BuildFailed("cannot unpack %s: %s" % (spec.url, exc)) from None
            tarball.add_tree(entries, tree, "")
            return
        to = spec.to or (spec.paths[0].dest if spec.paths else "")
        rel = _relative(to or os.path.basename(path) or spec.name, "to")
        with open(cached, "rb") as handle:
            magic = handle.read(4)
        tarball.add_parents(entries, rel)
        # downloaded programs must stay runnable: executables by their magic number
        entries[rel] = tarball.Entry("file", source=cached, executable=magic == b"\x7fELF" or magic[:2] == b"#!")

    def _map_members(self, spec: PackageSource, entries: tarball.Entries, scratch: str) -> None:
        """The union of the member packages' trees; members must agree on shared paths."""
        for member in spec.packages:
            extracted = os.path.join(scratch, "members", member)
            unpack.extract(os.path.join(self.artifacts_dir, self.manifest[member].file), extracted)
            found: tarball.Entries = {}
            tarball.add_tree(found, extracted, "")
            for rel, entry in found.items():
                if rel == METADATA_FILE:
                    continue
                known = entries.get(rel)
                if known is not None and not _same_entry(known, entry):
                    raise BuildFailed("members of %s disagree about %s" % (spec.name, rel))
                entries[rel] = entry

    def _write_manifest(self) -> None:
        os.makedirs(self.artifacts_dir, exist_ok=True)
        files.write_json_atomic(self.manifest_path, {"packages": {n: encode(p) for n, p in self.manifest.items()}})

    # -- all packages

    def run(self) -> Dict[str, PackageOutcome]:
        """Build every package, members before composites, independent ones in parallel."""
        os.makedirs(self.artifacts_dir, exist_ok=True)
        order = graph.scheduler({name: spec.packages for name, spec in self.packages.items()})
        bad: Set[str] = set()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            running: Dict["concurrent.futures.Future[PackageOutcome]", str] = {}
            while order.is_active():
                for name in sorted(order.get_ready()):
                    if any(m in bad for m in self.packages[name].packages):
                        self._finish(name, PackageOutcome("skipped", error="a member failed"))
                        bad.add(name)
                        order.done(name)
                    else:
                        events.emit("started", subject=name)
                        running[pool.submit(self.build_one, name)] = name
                if not running:
                    continue
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    outcome = self._outcome(future)
                    if outcome.state == "failed":
                        bad.add(name)
                    self._finish(name, outcome)
                    order.done(name)
        return self.outcomes

    def _outcome(self, future: "concurrent.futures.Future[PackageOutcome]") -> PackageOutcome:
        try:
            return future.result()
        except BuildFailed as exc:
            return PackageOutcome("failed", command=exc.command, exit_status=exc.exit_status, tail=exc.tail,
                                  error=str(exc))  # fmt: skip
        except (OSError, ValueError) as exc:
            return PackageOutcome("failed", error=str(exc))

    def _finish(self, name: str, outcome: PackageOutcome) -> None:
        self.outcomes[name] = outcome
        events.step(outcome.state, subject=name)
        events.emit("finished", "failed" if outcome.state in ("failed", "skipped") else "ok", subject=name)


def read_manifest(artifacts_dir: str) -> Dict[str, BuiltPackage]:
    """The packages a build recorded in `<artifacts_dir>/manifest.json` (none when absent)."""
    path = os.path.join(artifacts_dir, "manifest.json")
    recorded = files.read_json(path, {}) or {}
    packages = recorded.get("packages") if isinstance(recorded, dict) else None
    if not isinstance(packages, dict):
        return {}
    try:
        return {str(name): decode(BuiltPackage, entry, "%s: %s" % (path, name), strict=False)
                for name, entry in packages.items()}  # fmt: skip
    except ProtocolError as exc:
        raise events.PlanError("the build manifest is damaged: %s" % exc) from None


def _same_entry(first: tarball.Entry, second: tarball.Entry) -> bool:
    if first.kind != second.kind:
        return False
    if first.kind == "link":
        return first.target == second.target
    if first.kind == "file":
        assert first.source is not None and second.source is not None
        return first.executable == second.executable and files.sha256_file(first.source) == files.sha256_file(
            second.source
        )
    return first.kind == "dir" or first.data == second.data


def build(plan: BuildPlan) -> BuildResult:
    """The `build` command."""
    builder = Builder(plan)
    outcomes = builder.run()
    ok = all(o.state in ("built", "cached", "checked") for o in outcomes.values())
    return BuildResult(ok=ok, packages=outcomes, manifest=builder.manifest_path)
