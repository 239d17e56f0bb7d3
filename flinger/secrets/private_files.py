"""Private files on the client: 0700 directories, 0600 files, written atomically
(a temporary file in the same directory, fsync, then os.replace)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
TEMP_SUFFIX = ".flinger-tmp"


def private_dir(path: Path) -> None:
    """Make `path` (and any missing parents) a 0700 directory."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        os.chmod(d, DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(str(path))
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def write_private(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (mode 0600) atomically; False (and nothing touched) when the
    file already holds exactly `data` with mode 0600."""
    private_dir(path.parent)
    try:
        st = path.lstat()
        if (
            path.is_file()
            and not path.is_symlink()
            and (st.st_mode & 0o777) == FILE_MODE
            and st.st_size == len(data)
            and path.read_bytes() == data
        ):
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return True


def remove_path(path: Path) -> None:
    """Remove a file or a whole directory tree, if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
