"""Deterministic package tarballs: the same content always gives byte-identical `.tar.gz`.

Entries are sorted, owners are root with empty names, mtimes are fixed (0, or
SOURCE_DATE_EPOCH when set), modes are normalised (0755 for directories and executables,
0644 otherwise) and the gzip header carries neither a timestamp nor a file name.

A package is described as a mapping archive name -> Entry (a file on disk, bytes, a
directory or a symlink), so files are packed straight from the source tree without being
copied into a staging directory first.
"""

import gzip
import io
import os
import tarfile
from typing import Dict, Optional

# zlib level 6: most of level 9's size at a fraction of its time
_COMPRESS_LEVEL = 6


class PackError(Exception):
    """The content cannot be packed (e.g. a symlink that leaves the package)."""


class Entry:
    """One member of a package: kind is "dir", "file" (source is a path), "data" (bytes)
    or "link" (target)."""

    __slots__ = ("data", "executable", "kind", "source", "target")

    def __init__(
        self,
        kind: str,
        source: Optional[str] = None,
        data: Optional[bytes] = None,
        target: Optional[str] = None,
        executable: bool = False,
    ) -> None:
        self.kind = kind
        self.source = source
        self.data = data
        self.target = target
        self.executable = executable


Entries = Dict[str, Entry]


def fixed_mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else 0


def entry_for(path: str) -> Entry:
    """The entry for one file-system object (not following a symlink)."""
    if os.path.islink(path):
        return Entry("link", target=os.readlink(path))
    if os.path.isdir(path):
        return Entry("dir")
    if os.path.isfile(path):
        return Entry("file", source=path, executable=bool(os.stat(path).st_mode & 0o111))
    raise PackError("%s is not a file, directory or symlink" % path)


def add_tree(entries: Entries, root: str, prefix: str) -> None:
    """Add `root` and everything under it as `prefix/...` (prefix "" is the package root)."""
    if prefix:
        add_parents(entries, prefix)
        entries[prefix] = Entry("dir")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            entries[prefix + "/" + rel if prefix else rel] = entry_for(full)


def add_parents(entries: Entries, name: str) -> None:
    """Directory entries for every ancestor of `name`."""
    parts = name.split("/")[:-1]
    for end in range(1, len(parts) + 1):
        parent = "/".join(parts[:end])
        if parent not in entries or entries[parent].kind != "dir":
            entries[parent] = Entry("dir")


def _link_stays_inside(name: str, target: str) -> bool:
    if os.path.isabs(target):
        return False
    parts = name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return True


def pack_entries(entries: Entries, dest: str) -> None:
    """Write the entries as a deterministic gzip tarball at `dest`."""
    mtime = fixed_mtime()
    with open(dest, "wb") as raw:
        # filename="" keeps the temp file's name out of the gzip header
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_COMPRESS_LEVEL) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name in sorted(entries):
                    _add(tar, name, entries[name], mtime)


def _add(tar: tarfile.TarFile, name: str, entry: Entry, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif entry.kind == "link":
        target = entry.target or ""
        if not _link_stays_inside(name, target):
            raise PackError("symlink %s -> %s leaves the package" % (name, target))
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(info)
    elif entry.kind == "data":
        data = entry.data or b""
        info.mode = 0o755 if entry.executable else 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        assert entry.source is not None
        with open(entry.source, "rb") as handle:
            info.size = os.fstat(handle.fileno()).st_size
            info.mode = 0o755 if entry.executable else 0o644
            tar.addfile(info, handle)


def pack_tree(root: str, dest: str) -> None:
    """Write the tree under `root` as a deterministic gzip tarball at `dest`."""
    entries: Entries = {}
    add_tree(entries, root, "")
    pack_entries(entries, dest)
