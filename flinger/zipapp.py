"""Build `flinger-remote.pyz`: the remote tool as one deterministic zipapp.

It holds `flinger/__init__.py`, `flinger/protocol/*.py` (the typed contract both sides
speak), `flinger/remote/*.py` and a `__main__.py` that calls `flinger.remote.__main__.main`,
nothing else, so it runs on any host with python3 (3.9+)
and no site-packages. Entries are sorted and timestamped 1980-01-01, so the same source
always gives the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import flinger

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


def build_remote_zipapp(dest: Path) -> str:
    """Write the zipapp to `dest` (0755, atomically) and return its sha256."""
    buffer = io.BytesIO()
    buffer.write(f"#!{INTERPRETER}\n".encode())
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(zipapp_sources().items()):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the building host is
            archive.writestr(info, content)
    data = buffer.getvalue()
    dest = Path(dest)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}")
    partial.write_bytes(data)
    partial.chmod(0o755)
    os.replace(partial, dest)
    return hashlib.sha256(data).hexdigest()
