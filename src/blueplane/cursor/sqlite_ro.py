"""Read-only, interruptible, fingerprinted access to a Cursor database.

Cursor waits only 1000 ms on a busy database before failing its own write, so every read
here is one short transaction on a fresh ``file:…?mode=ro`` connection, interrupted by a
progress handler the moment it passes its deadline. No statement or PRAGMA that writes is
ever run: the file, its journal mode and its ``user_version`` stay exactly as Cursor left them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

T = TypeVar("T")

# The progress handler runs every N virtual-machine steps, and each run takes the GIL from
# the event loop's thread (up to the 5 ms switch interval when it is busy): at 1000 a read
# of a big file ran at about half speed while the first sync published. 100,000 steps are a
# few milliseconds of SQLite work, still far below any timeout.
_PROGRESS_STEPS = 100_000


class CursorDbError(Exception):
    """A database could not be read; ``status`` is the health status it maps to."""

    status = "error"


class DatabaseMissing(CursorDbError):
    status = "missing"


class NotADatabase(CursorDbError):
    status = "not_a_database"


class DatabaseLocked(CursorDbError):
    status = "locked"


class QueryTimeout(CursorDbError):
    status = "timeout"


# The wal-index header at the start of ``-shm``: two 48-byte copies, equal unless being
# written, in the machine's byte order: page size at bytes 14-15 (1 for 64 KiB), committed
# frame count at 16-19, the log's salt at 32-39 (as in the -wal header and in each frame's).
WAL_INDEX_HEADER = 48
WAL_HEADER = 32  # bytes before the first frame of -wal
WAL_FRAME_HEADER = 24  # bytes before each frame's page; its salt at 8-15
# A ``-wal`` written this recently may hold a commit that is not visible yet (``wal_settled``).
WAL_SETTLE_WINDOW_S = 2.0


@dataclass(frozen=True)
class Fingerprint:
    """Size and mtime of the database and its ``-wal``, and the wal-index header in ``-shm``:
    unchanged means nothing to read.

    The header (its change counter and frame count) is what makes a WAL commit visible: the
    writer writes the commit's frames to ``-wal`` (the file events and the size/mtime here),
    syncs them, and only then updates the header, which no file event marks (``-shm`` is
    written through ``mmap``). A read in between sees the old data; with the header in the
    fingerprint, a check after the sync sees that the file changed and reads it again.
    ``wal_pending``: the ``-wal`` held such frames, of this log, past the header's count.
    """

    inode: int
    size: int
    mtime_ns: int
    wal_size: int
    wal_mtime_ns: int
    wal_index: bytes = b""
    wal_pending: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, int]:
        return {
            "inode": self.inode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "wal_size": self.wal_size,
            "wal_mtime_ns": self.wal_mtime_ns,
        }

    def wal_settled(self, now_s: float) -> bool:
        """False while a commit seen in ``-wal`` may not be visible yet (``wal_pending``) and
        the ``-wal`` was written in the last ``WAL_SETTLE_WINDOW_S``: a read of this
        fingerprint missed it, so it is checked again shortly. The window bounds the checks of
        a transaction that wrote frames and never committed them."""
        return not self.wal_pending or now_s - self.wal_mtime_ns / 1e9 >= WAL_SETTLE_WINDOW_S


def _wal_state(path: Path, wal_size: int) -> tuple[bytes, bool]:
    """The wal-index header, and whether ``-wal`` holds frames of this log past its count.

    Plain reads of ``-shm`` and of one frame header of ``-wal``: no lock, nothing written.
    Frames past the count that carry an older salt are left from before the log restarted
    at its start (after a checkpoint): not a commit under way. A header being written (its
    copies differ) or unreadable counts as pending: it is looked at again.
    """
    try:
        both = _read_kept(str(path) + "-shm", 2 * WAL_INDEX_HEADER)
    except OSError:
        return b"", wal_size > WAL_HEADER
    hdr = both[:WAL_INDEX_HEADER]
    if len(both) < 2 * WAL_INDEX_HEADER or hdr != both[WAL_INDEX_HEADER:]:
        return hdr, wal_size > WAL_HEADER
    page = int.from_bytes(hdr[14:16], sys.byteorder)
    page = 65536 if page == 1 else page
    if page < 512:
        return hdr, wal_size > WAL_HEADER  # not initialised yet
    frame = WAL_FRAME_HEADER + page
    max_frame = int.from_bytes(hdr[16:20], sys.byteorder)
    if (wal_size - WAL_HEADER) // frame <= max_frame:
        return hdr, False  # every frame in the file is counted: the commit is visible
    try:
        with open(str(path) + "-wal", "rb", buffering=0) as fh:
            fh.seek(WAL_HEADER + max_frame * frame)
            next_frame = fh.read(WAL_FRAME_HEADER)
    except OSError:
        return hdr, True
    return hdr, next_frame[8:16] == hdr[32:40]


# Closing *any* descriptor of a file drops every POSIX lock this process holds on it, among
# them the locks of a read of that database running in another thread (the global databases
# read workspace databases for their membership): Cursor's writer could then commit, or
# restart its log, under that read (SQLite's "How To Corrupt", 2.2). So ``-shm`` is read
# through descriptors kept open, one per file (``_read_kept``), and the reads of one database
# file (its header peeked at, then the connection) never overlap in this process
# (``_path_lock``). Windows locks belong to a handle: there a plain open and close is safe.
_KEPT_FDS: dict[str, tuple[int, int]] = {}  # path -> (descriptor, inode)
_KEPT_FDS_MAX = 256  # more -shm files than this: the ones gone are closed, else no header
_KEPT_LOCK = threading.Lock()
_PATH_LOCKS: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()


def _path_lock(path: Path) -> threading.Lock:
    with _KEPT_LOCK:
        lock = _PATH_LOCKS.get(str(path))
        if lock is None:
            lock = _PATH_LOCKS[str(path)] = threading.Lock()
        return lock


def _read_kept(path: str, n: int) -> bytes:
    """The first ``n`` bytes of ``path`` through its kept descriptor (see ``_KEPT_FDS``);
    OSError when it cannot be read that way."""
    if not hasattr(os, "pread"):
        with open(path, "rb", buffering=0) as fh:
            return fh.read(n)
    with _KEPT_LOCK:
        kept = _KEPT_FDS.get(path)
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            if kept is not None:  # gone (Cursor's last connection removed it): nothing of
                os.close(_KEPT_FDS.pop(path)[0])  # ours can hold a lock on it any more
            raise
        if kept is not None and kept[1] != ino:
            os.close(_KEPT_FDS.pop(path)[0])  # replaced: the same
            kept = None
        if kept is None:
            if len(_KEPT_FDS) >= _KEPT_FDS_MAX:
                _close_gone()
                if len(_KEPT_FDS) >= _KEPT_FDS_MAX:
                    raise OSError(f"{_KEPT_FDS_MAX} -shm files open already")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            _KEPT_FDS[path] = kept = (fd, os.fstat(fd).st_ino)
        return os.pread(kept[0], n, 0)


def _close_gone() -> None:
    """Close the kept descriptors of files removed or replaced since (under ``_KEPT_LOCK``)."""
    for path, (fd, ino) in list(_KEPT_FDS.items()):
        try:
            same = os.stat(path).st_ino == ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            del _KEPT_FDS[path]


class ChangedDuringRead(CursorDbError):
    """A WAL database was opened by a writer while we read it without its WAL: read again."""

    status = "busy"


def ro_uri(path: Path, *, immutable: bool = False) -> str:
    """The ``file:`` URI that opens ``path`` read-only."""
    uri = "file:" + quote(str(path.absolute())) + "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def is_wal_database(path: Path) -> bool:
    """Bytes 18–19 of the header are 2 for a database in WAL mode."""
    try:
        with path.open("rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return (
        len(header) == 20 and header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"
    )


def fingerprint(path: Path) -> Fingerprint:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise DatabaseMissing(f"database file {path} does not exist") from exc
    try:
        wst = Path(str(path) + "-wal").stat()
    except FileNotFoundError:
        return Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns, -1, -1)
    index, pending = _wal_state(path, wst.st_size)
    return Fingerprint(
        st.st_ino, st.st_size, st.st_mtime_ns, wst.st_size, wst.st_mtime_ns, index, pending
    )


def _classify(exc: sqlite3.Error, path: Path, timeout_s: float) -> CursorDbError:
    text = str(exc)
    low = text.lower()
    if "interrupted" in low:
        return QueryTimeout(f"query interrupted after {timeout_s:g} s (query_timeout_seconds)")
    if "locked" in low or "busy" in low:
        return DatabaseLocked(f"database is locked by a writer: {text}")
    if "not a database" in low or "file is encrypted" in low or "malformed" in low:
        return NotADatabase(f"not a readable SQLite database: {text}")
    if "unable to open" in low and not path.exists():
        return DatabaseMissing(f"database file {path} does not exist")
    return CursorDbError(f"{type(exc).__name__}: {text}")


class ReadOnlyDatabase:
    """One Cursor database, opened only for the duration of one short read."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def fingerprint(self) -> Fingerprint:
        return fingerprint(self.path)

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one read transaction that cannot outlive ``timeout_s``; reads of
        one file in this process one at a time (see ``_path_lock``)."""
        with _path_lock(self.path):
            return self._read_sync(fn)

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self.path.exists():
            raise DatabaseMissing(f"database file {self.path} does not exist")
        # A WAL database that nobody has open has no -wal file; even a read-only open would
        # create -wal and -shm beside it. With no WAL there is nothing it could hide, so read
        # it as immutable and check afterwards that no writer appeared meanwhile.
        wal = Path(str(self.path) + "-wal")
        quiet_wal = is_wal_database(self.path) and not wal.exists()
        before = fingerprint(self.path) if quiet_wal else None
        deadline = time.monotonic() + self.timeout_s
        try:
            conn = sqlite3.connect(
                ro_uri(self.path, immutable=quiet_wal),
                uri=True,
                timeout=self.timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _classify(exc, self.path, self.timeout_s) from exc
        try:
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
            conn.execute("BEGIN")
            # Opens the read transaction without the schema: a fresh connection's first query
            # would otherwise load the schema under a SHARED lock of its own, release it, and
            # lock again to run. One lock instead of two: half the chances to meet a commit,
            # and one snapshot from the schema to the last row.
            conn.execute("PRAGMA schema_version").fetchone()
            try:
                result = fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
            if quiet_wal and (wal.exists() or fingerprint(self.path) != before):
                raise ChangedDuringRead(
                    "a writer opened the database during the read; reading again"
                )
            return result
        except sqlite3.Error as exc:
            raise _classify(exc, self.path, self.timeout_s) from exc
        finally:
            conn.close()

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``read_sync`` in a worker thread, so the event loop never waits on SQLite."""
        return await asyncio.to_thread(self.read_sync, fn)


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def item_value(conn: sqlite3.Connection, key: str, table: str = "ItemTable") -> tuple[int, object]:
    """``(rowid, value)`` of one exact key, or ``(0, None)``; the key's unique index is used."""
    row = conn.execute(f'SELECT rowid, value FROM "{table}" WHERE key = ?', (key,)).fetchone()
    if row is None:
        return 0, None
    return int(row[0]), row[1]


def item_rowid(conn: sqlite3.Connection, key: str, table: str = "ItemTable") -> int:
    """Rowid of one key without loading its value: a rewrite gives a new, higher rowid."""
    row = conn.execute(f'SELECT rowid FROM "{table}" WHERE key = ?', (key,)).fetchone()
    return int(row[0]) if row else 0


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
