"""Deterministic package tarballs: the same tree always gives byte-identical `.tar.gz` files.

Entries are sorted, owners are root with empty names, mtimes are fixed (0, or
SOURCE_DATE_EPOCH when set), modes are normalised (0755 for directories and executables,
0644 otherwise) and the gzip header carries neither a timestamp nor a file name.
"""

import gzip
import os
import tarfile
from typing import List, Tuple

# zlib level 6: most of level 9's size at a fraction of its time
_COMPRESS_LEVEL = 6


class PackError(Exception):
    """The tree cannot be packed (e.g. a symlink that leaves the package)."""


def fixed_mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else 0


def _entries(root: str) -> List[Tuple[str, str]]:
    """(archive name, full path) of every entry under root, sorted by archive name."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    found.sort()
    return found


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



def pack_tree(root: str, dest: str) -> None:
    """Write the tree under `root` as a deterministic gzip tarball at `dest`."""
    mtime = fixed_mtime()
    with open(dest, "wb") as raw:
        # filename="" keeps the temp file's name out of the gzip header
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_COMPRESS_LEVEL
        ) as zipped:
            with tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, full in _entries(root):
                    info = tarfile.TarInfo(name)
                    info.mtime = mtime
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    st = os.lstat(full)
                    if os.path.islink(full):
                        target = os.readlink(full)
                        if not _link_stays_inside(name, target):
                            raise PackError("symlink %s -> %s leaves the package" % (name, target))
                        info.type = tarfile.SYMTYPE
                        info.linkname = target
                        info.mode = 0o777
                        tar.addfile(info)
                    elif os.path.isdir(full):
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                    elif os.path.isfile(full):
                        info.type = tarfile.REGTYPE
                        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                        info.size = st.st_size
                        with open(full, "rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        raise PackError("%s is not a file, directory or symlink" % name)
