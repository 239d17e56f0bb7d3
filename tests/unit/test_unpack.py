"""Safe extraction: malicious archives are refused before anything is written."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from flinger.remote import unpack

REPO = Path(__file__).resolve().parents[2]

Member = tuple[str, bytes | None, Callable[[tarfile.TarInfo], None] | None]


def make_tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data, tweak in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if tweak is not None:
                tweak(info)
            if data is not None and info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def symlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def tweak(info: tarfile.TarInfo) -> None:
        info.type, info.linkname = tarfile.SYMTYPE, target

    return tweak


def hardlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def tweak(info: tarfile.TarInfo) -> None:
        info.type, info.linkname = tarfile.LNKTYPE, target

    return tweak


def directory(info: tarfile.TarInfo) -> None:
    info.type, info.mode = tarfile.DIRTYPE, 0o755


def chardev(info: tarfile.TarInfo) -> None:
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3


def fifo(info: tarfile.TarInfo) -> None:
    info.type = tarfile.FIFOTYPE


GOOD: list[Member] = [("ok.txt", b"fine\n", None)]

MALICIOUS: dict[str, list[Member]] = {
    "absolute": [*GOOD, ("/tmp/flinger-evil", b"x", None)],
    "dotdot": [*GOOD, ("a/../../evil", b"x", None)],
    "symlink-absolute": [*GOOD, ("link", None, symlink("/etc"))],
    "symlink-escape": [*GOOD, ("sub/link", None, symlink("../../outside"))],
    "write-through-symlink": [("d", None, symlink(".")), ("d/x", b"x", None)],
    "symlink-chain": [("d", None, directory), ("d/l", None, symlink("..")), ("esc", None, symlink("d/l/.."))],
    "hardlink-escape": [*GOOD, ("h", None, hardlink("../outside"))],
    "hardlink-absolute": [*GOOD, ("h", None, hardlink("/etc/passwd"))],
    "hardlink-to-nothing": [*GOOD, ("h", None, hardlink("missing"))],
    "device": [*GOOD, ("null", None, chardev)],
    "fifo": [*GOOD, ("pipe", None, fifo)],
    "duplicate": [*GOOD, ("ok.txt", None, symlink("."))],
}


def tree_of(path: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for item in sorted(path.rglob("*")):
        rel = str(item.relative_to(path))
        found[rel] = item.read_bytes() if item.is_file() and not item.is_symlink() else "dir"
    return found


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_own_checks_refuse_every_case(case: str, tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bad.tar.gz", MALICIOUS[case])
    with tarfile.open(archive) as tar, pytest.raises(unpack.UnsafeArchive):
        unpack.check_members(tar.getmembers())


@pytest.mark.parametrize("case", sorted(MALICIOUS))
@pytest.mark.parametrize("without_data_filter", [False, True])
def test_refused_unpack_writes_nothing(
    case: str, without_data_filter: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if without_data_filter and hasattr(tarfile, "data_filter"):
        # what a Python without the data filter does: only our own checks stand
        monkeypatch.delattr(tarfile, "data_filter")
    archive = make_tar(tmp_path / "bad.tar.gz", MALICIOUS[case])
    parent = tmp_path / "install"
    dest = parent / "pkg"
    dest.mkdir(parents=True)
    (dest / "previous").write_text("keep me\n")
    before = tree_of(tmp_path)
    with pytest.raises(unpack.UnsafeArchive):
        unpack.extract(str(archive), str(dest), replace=True)
    with pytest.raises(unpack.UnsafeArchive):
        unpack.extract(str(archive), str(parent / "new"))
    assert tree_of(tmp_path) == before
    assert not Path("/tmp/flinger-evil").exists()


def test_good_archive_extracts_with_modes(tmp_path: Path) -> None:
    def setuid(info: tarfile.TarInfo) -> None:
        info.mode = 0o4777

    archive = make_tar(
        tmp_path / "good.tar.gz",
        [
            ("./", None, directory),
            ("bin", None, directory),
            ("bin/tool", b"#!/bin/sh\n", setuid),
            ("bin/alias", None, symlink("tool")),
            ("etc/conf", b"k=v\n", None),
            ("etc/hard", None, hardlink("etc/conf")),
        ],
    )
    dest = tmp_path / "pkg"
    assert unpack.extract(str(archive), str(dest)) == 5
    assert (dest / "etc" / "conf").read_text() == "k=v\n"
    assert os.readlink(dest / "bin" / "alias") == "tool"
    assert (dest / "bin" / "tool").stat().st_mode & 0o7777 == 0o755  # set-id and o+w dropped
    assert (dest / "etc" / "hard").read_text() == "k=v\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar.gz", "pkg"]


def test_existing_dest_is_kept_unless_replace(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "good.tar.gz", GOOD)
    dest = tmp_path / "pkg"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(FileExistsError):
        unpack.extract(str(archive), str(dest))
    assert (dest / "old").exists()
    unpack.extract(str(archive), str(dest), replace=True)
    assert sorted(p.name for p in dest.iterdir()) == ["ok.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar.gz", "pkg"]
