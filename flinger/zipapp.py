"""Build `flinger-remote.pyz`: the remote tool as one deterministic zipapp.

It holds `flinger/__init__.py`, `flinger/protocol/*.py` (the typed contract both sides
speak), `flinger/remote/*.py` and a `__main__.py` that calls `flinger.remote.__main__.main`,
nothing else, so it runs on any host with python3 (3.9+)
and no site-packages. Entries are sorted and timestamped 1980-01-01, so the same source
always gives the same bytes and the same sha256.

Beside each module it carries that module's bytecode as this client's Python compiles it
(`x.pyc` beside `x.py`, where zipimport looks), checked against the source by hash: a host
whose python3 is the same minor version skips compiling the tool's sources on each of its
starts; any other python3 refuses that bytecode (another magic number) and compiles the
source, as before. A .pyc whose source changed is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import py_compile
import tempfile
import zipfile
from pathlib import Path

import flinger
from flinger.remote import files

INTERPRETER = "/usr/bin/env python3"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_MAIN = (
    '"""Run the flinger remote tool."""\nimport sys\n\nfrom flinger.remote.__main__ import main\n\nsys.exit(main())\n'
)


def zipapp_sources() -> dict[str, bytes]:
    """Archive name -> content of every module the zipapp carries."""
    package = Path(flinger.__file__).parent
    sources = {"flinger/__init__.py": (package / "__init__.py").read_bytes()}
    for part in ("protocol", "remote"):
        for module in sorted((package / part).glob("*.py")):
            sources[f"flinger/{part}/{module.name}"] = module.read_bytes()
    sources["__main__.py"] = _MAIN.encode()
    return sources


def with_bytecode(sources: dict[str, bytes]) -> dict[str, bytes]:
    """`sources` and, beside each module, its hash-checked bytecode from this Python."""
    entries = dict(sources)
    with tempfile.TemporaryDirectory(prefix="flinger-pyc-") as tmp:
        for name, content in sources.items():
            source, compiled = Path(tmp, "source.py"), Path(tmp, "compiled.pyc")
            source.write_bytes(content)
            py_compile.compile(
                str(source), cfile=str(compiled), dfile=name, doraise=True, optimize=0,
                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
            )  # fmt: skip
            entries[name[: -len(".py")] + ".pyc"] = compiled.read_bytes()
    return entries


def build_remote_zipapp(dest: Path) -> str:
    """Write the zipapp to `dest` (0755, atomically) and return its sha256; a `dest` this
    function made from the same sources with the same Python is kept (compiling takes a
    tenth of a second, which every server of a run would wait for)."""
    dest = Path(dest)
    sources = zipapp_sources()
    made = dest.with_name(dest.name + ".made")
    key = _sources_key(sources)
    try:
        recorded = made.read_text().split()
        data = dest.read_bytes()
        if recorded == [key, hashlib.sha256(data).hexdigest()]:
            return recorded[1]
    except OSError:
        pass
    digest = _write_zipapp(dest, sources)
    files.write_atomic(str(made), f"{key} {digest}\n".encode(), 0o644)
    return digest


def _sources_key(sources: dict[str, bytes]) -> str:
    """What the zipapp is made from: the sources, and the bytecode's Python (magic number)."""
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    for name, content in sorted(sources.items()):
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def _write_zipapp(dest: Path, sources: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    buffer.write(f"#!{INTERPRETER}\n".encode())
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(with_bytecode(sources).items()):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the building host is
            archive.writestr(info, content)
    data = buffer.getvalue()
    files.write_atomic(str(dest), data, 0o755)
    return hashlib.sha256(data).hexdigest()
