"""The extension's name of a workspace: the hash of its normalised folder path."""

from __future__ import annotations

import hashlib
import os


def workspace_hash(workspace_path: str) -> str:
    """The extension's workspace id: ``sha256(path)[:16]`` in hex."""
    return hashlib.sha256(workspace_path.encode("utf-8")).hexdigest()[:16]


def normalise_workspace_path(path: str) -> str:
    """Absolute, ``~`` expanded, no trailing separator: the form the extension hashes."""
    p = os.path.abspath(os.path.expanduser(path))
    return p.rstrip("/\\") or p
