"""File-system helpers shared by the remote commands: digests, atomic writes, tracked mkdir."""

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, List, Optional

_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename,
    so readers see either the old or the new content, never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, value: Any, mode: int = 0o644) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of `path`, or `default` when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def make_dirs(path: str, created: Optional[List[str]] = None, mode: int = 0o755) -> None:
    """mkdir -p that appends every directory it actually creates to `created` (outermost
    first), so an uninstall can remove exactly those and nothing that was there before."""
    path = os.path.abspath(path)
    missing = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        if created is not None:
            created.append(directory)


def remove_path(path: str) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def tree_digest(root: str) -> str:
    """SHA-256 over every entry under `root`: relative path, type, mode and content."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                entry = "L %s %s" % (rel, os.readlink(full))
            elif os.path.isdir(full):
                entry = "D %s %o" % (rel, st.st_mode & 0o7777)
            else:
                entry = "F %s %o %s" % (rel, st.st_mode & 0o7777, sha256_file(full))
            digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()
