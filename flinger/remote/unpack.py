"""Safe tarball extraction: what the install (and a composite build) unpacks with.

Every member is checked before anything is written: no absolute paths, no `..`, no symlink
or hard link whose target leaves the tree, no path that goes through a symlink of the same
archive (links could otherwise be chained out of the tree), no devices or fifos. The
archive is extracted into a temporary directory next to DEST and renamed into place, so a
refused or failed unpack leaves DEST as it was and no temporary directory behind. Python's
own "data" filter is applied on top where the interpreter has it (3.12+, and 3.9.17+ etc.).
"""

import copy
import os
import shutil
import tarfile
import tempfile
from typing import Dict, List, Optional, Set


class UnsafeArchive(Exception):
    """The archive holds a member that could write outside DEST or create a device."""


def _normalise(name: str) -> str:
    """The member name as a clean relative path, or raise if it is absolute or climbs out."""
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive("absolute path %r" % name)
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeArchive("path with '..': %r" % name)
        parts.append(part)
    return "/".join(parts)


def _resolve_link(member_path: str, target: str, symlinks: Set[str]) -> str:
    """Where a symlink at member_path pointing to target lands, relative to the root; refuse
    a target that leaves the tree or walks through another symlink of the archive (a
    lexical check is only sound when no component on the way is itself a link)."""
    if target.startswith("/"):
        raise UnsafeArchive("symlink %r points to the absolute path %r" % (member_path, target))
    parts = member_path.split("/")[:-1]
    steps = [p for p in target.split("/") if p not in ("", ".")]
    for index, part in enumerate(steps):
        if part == "..":
            if not parts:
                raise UnsafeArchive("symlink %r -> %r leaves the tree" % (member_path, target))
            parts.pop()
        else:
            parts.append(part)
        current = "/".join(parts)
        if index < len(steps) - 1 and current in symlinks:
            raise UnsafeArchive("symlink %r -> %r goes through the symlink %r" % (member_path, target, current))
    return "/".join(parts)


def _through_symlink(path: str, symlinks: Set[str]) -> Optional[str]:
    """The first proper prefix of `path` that is a symlink member, if any."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        prefix = "/".join(parts[:end])
        if prefix in symlinks:
            return prefix
    return None


def _check_kind(member: tarfile.TarInfo) -> None:
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchive("device or fifo node %r" % member.name)
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive("unsupported member type %r" % member.name)


def _check_link(member: tarfile.TarInfo, clean: tarfile.TarInfo, symlinks: Set[str], regular: Set[str]) -> None:
    """A symlink must resolve inside the tree; a hard link must name a file of the archive."""
    if member.issym():
        _resolve_link(clean.name, member.linkname, symlinks)
    elif member.islnk():
        target = _normalise(member.linkname)
        if target not in regular:
            raise UnsafeArchive("hard link %r -> %r is not to a file of the archive" % (member.name, member.linkname))
        clean.linkname = target


def check_members(members: List[tarfile.TarInfo]) -> List[tarfile.TarInfo]:
    """Validate every member and return sanitised copies (clean names, no set-id bits,
    root ownership); raise UnsafeArchive on the first unsafe one."""
    names = [_normalise(m.name) for m in members]
    symlinks = {names[i] for i in range(len(members)) if members[i].issym()}
    regular: Set[str] = set()
    seen: Set[str] = set()
    safe = []
    for index, member in enumerate(members):
        name = names[index]
        if not name:
            continue  # the archive's own root entry ("./")
        _check_kind(member)
        via = _through_symlink(name, symlinks)
        if via is not None:
            raise UnsafeArchive("%r goes through the symlink %r" % (member.name, via))
        clean = copy.copy(member)
        clean.name = name
        if not member.isdir():
            if name in seen:
                raise UnsafeArchive("%r appears twice" % member.name)
            seen.add(name)
        _check_link(member, clean, symlinks, regular)
        if member.isfile():
            regular.add(name)
        clean.mode = member.mode & 0o755 if not member.isdir() else (member.mode & 0o755) | 0o700
        if member.isfile():
            clean.mode |= 0o600
        clean.uid = clean.gid = 0
        clean.uname = clean.gname = "root"
        safe.append(clean)
    return safe


def extract(tarball: str, dest: str, replace: bool = False) -> int:
    """Extract `tarball` into the new directory `dest` (or over an existing one with
    `replace`) through a temporary sibling directory; return the number of members."""
    dest = os.path.abspath(dest.rstrip("/"))
    if os.path.lexists(dest) and not replace:
        raise FileExistsError("%s already exists" % dest)
    parent = os.path.dirname(dest)
    with tarfile.open(tarball, "r:*") as tar:
        members = check_members(tar.getmembers())
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(dest) + ".unpack-")
        try:
            # packages hold programs that service users (not only root) must read and run
            os.chmod(tmp, 0o755)  # noqa: S103
            kwargs: Dict[str, object] = {}
            if hasattr(tarfile, "data_filter"):
                kwargs["filter"] = "data"
            tar.extractall(tmp, members=members, **kwargs)  # type: ignore[arg-type]  # noqa: S202
            if os.path.lexists(dest):
                old = tmp + ".old"
                os.rename(dest, old)
                os.rename(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return len(members)
