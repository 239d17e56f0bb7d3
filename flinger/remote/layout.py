"""Paths of an install directory owned by the remote tool, and who created it.

`<install_dir>/.flinger/` (0700) holds the receipt (`state.json`), one receipt per kept
release (`releases/<release>.json`), the deploy lock and
`created-dirs.json`: the directories flinger itself created for the install dir, so an
uninstall can leave the server exactly as before the first install.
"""

import os
from typing import List

from flinger.remote import files

STATE_DIR = ".flinger"


def state_dir(install_dir: str) -> str:
    return os.path.join(install_dir, STATE_DIR)


def events_log(install_dir: str) -> str:
    """Where a command says what it does once its client is gone (events.survive_lost_client)."""
    return os.path.join(state_dir(install_dir), "events.log")


def state_file(install_dir: str) -> str:
    return os.path.join(state_dir(install_dir), "state.json")


def lock_file(install_dir: str) -> str:
    return os.path.join(state_dir(install_dir), "lock")


def receipts_dir(install_dir: str) -> str:
    return os.path.join(state_dir(install_dir), "releases")


def receipt_file(install_dir: str, release: str) -> str:
    """The receipt of one kept release (what `rollback` switches back to)."""
    return os.path.join(receipts_dir(install_dir), release + ".json")


def _created_file(install_dir: str) -> str:
    return os.path.join(state_dir(install_dir), "created-dirs.json")


def ensure_install_dir(install_dir: str) -> None:
    """Create the install dir and its `.flinger/`, remembering the directories made here."""
    created: List[str] = []
    files.make_dirs(install_dir, created)
    files.make_dirs(state_dir(install_dir))
    os.chmod(state_dir(install_dir), 0o700)
    if created:
        known = created_dirs(install_dir)
        files.write_json_atomic(_created_file(install_dir), known + created, mode=0o600)


def created_dirs(install_dir: str) -> List[str]:
    """Directories (outermost first) that flinger created to make the install dir."""
    return list(files.read_json(_created_file(install_dir), []) or [])
