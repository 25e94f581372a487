"""Who produced an event: a stable ``machine_id`` per install and the user's name.

A central store (issue 13) receives events from many laptops and must tell them apart. The id
is a random UUID kept in ``BLUEPLANE_HOME/machine_id``: stable across restarts, never derived
from hardware serials (those are personal data and differ in containers), and shared by every
process of one install (server, hook command) because they read the same file.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import uuid
from pathlib import Path

MACHINE_ID_FILE = "machine_id"


def machine_id(home: Path) -> str:
    """The install's id, created on first use; a concurrent first use agrees on one id."""
    path = home / MACHINE_ID_FILE
    try:
        existing = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{MACHINE_ID_FILE}.{os.getpid()}.tmp"
    tmp.write_text(uuid.uuid4().hex + "\n", encoding="ascii")
    try:
        # link() fails if another process created the file first: then theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


def user_name(*, hashed: bool = False) -> str:
    """The login name, or its SHA-256 prefix when the install hides user names."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        name = f"uid-{os.getuid()}"
    return hashlib.sha256(name.encode()).hexdigest()[:16] if hashed else name
