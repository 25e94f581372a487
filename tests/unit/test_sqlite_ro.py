"""ReadOnlyDatabase never makes Cursor's writes wait longer than ``query_timeout_seconds``.

Real SQLite files, a real writer thread with Cursor's 1000 ms-style busy timeout: a slow
query is interrupted at its deadline and the writer commits right after; no transaction is
left open after a read; nothing is created beside the database; locks are classified.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blueplane.cursor.sqlite_ro import (
    DatabaseLocked,
    DatabaseMissing,
    NotADatabase,
    QueryTimeout,
    ReadOnlyDatabase,
    fingerprint,
    ro_uri,
)
from tests.fixtures.cursor_db import CursorDb, hold_lock, snapshot_files

# A query that would run for minutes: counts to 10^9 through a recursive CTE.
SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
    "SELECT count(*) FROM c, ItemTable"
)


def _db(tmp_path: Path, mode: str = "delete") -> CursorDb:
    db = CursorDb(tmp_path / "state.vscdb", journal_mode=mode, persistent=False)  # type: ignore[arg-type]
    db.append_generations(3)
    return db


class _Writer(threading.Thread):
    """Cursor's side: one write transaction with a busy timeout, timed to its commit."""

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.committed_at: float | None = None
        self.error: BaseException | None = None
        self.began = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO ItemTable VALUES ('k', 'v')")
            self.began.set()
            conn.execute("COMMIT")  # needs EXCLUSIVE: waits for the reader's SHARED lock
            self.committed_at = time.monotonic()
        except sqlite3.Error as exc:
            self.error = exc
            self.began.set()
        finally:
            conn.close()


def test_slow_query_is_interrupted_and_the_writer_commits_right_after(tmp_path: Path) -> None:
    db = _db(tmp_path, "delete")
    timeout_s = 0.4
    ro = ReadOnlyDatabase(db.path, timeout_s)
    writer = _Writer(db.path, busy_timeout_s=5.0)
    reader_started = threading.Event()

    def slow(conn: sqlite3.Connection) -> object:
        conn.execute("SELECT count(*) FROM ItemTable").fetchone()  # SHARED lock taken
        reader_started.set()
        return conn.execute(SLOW_SQL).fetchone()

    result: dict[str, object] = {}

    def read() -> None:
        t0 = time.monotonic()
        try:
            ro.read_sync(slow)
        except QueryTimeout as exc:
            result["error"] = exc
        result["ended_at"] = time.monotonic()
        result["took"] = result["ended_at"] - t0  # type: ignore[operator]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert reader_started.wait(5)
    writer.start()
    assert writer.began.wait(5)
    reader.join(10)
    writer.join(10)
    assert isinstance(result.get("error"), QueryTimeout), result
    assert timeout_s <= float(result["took"]) < timeout_s + 0.5  # type: ignore[arg-type]
    assert writer.error is None, writer.error
    assert writer.committed_at is not None
    # The writer was blocked by the reader and committed as soon as the read was interrupted.
    lag = writer.committed_at - float(result["ended_at"])  # type: ignore[arg-type]
    assert lag < 0.25, f"writer committed {lag:.3f} s after the interrupt"
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT value FROM ItemTable WHERE key='k'").fetchone() == ("v",)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_no_transaction_is_left_open_after_a_read(tmp_path: Path, mode: str) -> None:
    db = _db(tmp_path, mode)
    ro = ReadOnlyDatabase(db.path, 1.0)
    for _ in range(3):
        assert ro.read_sync(lambda c: c.execute("SELECT count(*) FROM ItemTable").fetchone())
    # A writer with a tiny busy timeout commits at once: no lock of ours remains.
    conn = sqlite3.connect(db.path, timeout=0.01, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("INSERT INTO ItemTable VALUES ('after', '1')")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_rollback_read_locks_once_from_its_schema_to_its_last_row(tmp_path: Path) -> None:
    """A fresh connection loads the schema under a SHARED lock of its own and lets it go before
    the query locks again: two chances to meet Cursor's commit per read instead of one. Checked
    while the first query of the read is compiled (schema loaded, nothing run yet): Cursor's
    writer cannot take its EXCLUSIVE lock then, because the read already holds SHARED."""
    db = _db(tmp_path, "delete")
    ro = ReadOnlyDatabase(db.path, 1.0)
    writer_could_commit: list[bool] = []

    def probe() -> None:
        writer = sqlite3.connect(db.path, timeout=0, isolation_level=None)
        try:
            writer.execute("BEGIN EXCLUSIVE")
            writer.execute("ROLLBACK")
            writer_could_commit.append(True)
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            writer_could_commit.append(False)
        finally:
            writer.close()

    def fn(conn: sqlite3.Connection) -> object:
        def authorizer(*_args: object) -> int:
            if not writer_could_commit:
                probe()  # the schema is loaded (names resolved); the query has not run
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)
        return conn.execute("SELECT count(*) FROM ItemTable").fetchone()

    assert ro.read_sync(fn) is not None
    assert writer_could_commit == [False]


def test_quiet_wal_database_gets_no_wal_or_shm_files(tmp_path: Path) -> None:
    db = _db(tmp_path, "wal")  # not persistent: last close checkpointed and removed -wal
    before = snapshot_files(tmp_path)
    assert not Path(str(db.path) + "-wal").exists()
    ro = ReadOnlyDatabase(db.path, 1.0)
    rows = ro.read_sync(lambda c: c.execute("SELECT key FROM ItemTable").fetchall())
    assert rows
    assert snapshot_files(tmp_path) == before
    assert db.path.read_bytes()[18:20] == b"\x02\x02"


def test_wal_database_with_a_live_writer_sees_uncheckpointed_data(tmp_path: Path) -> None:
    db = CursorDb(tmp_path / "state.vscdb", journal_mode="wal", persistent=True)
    gens = db.append_generations(2)
    assert Path(str(db.path) + "-wal").exists()
    ro = ReadOnlyDatabase(db.path, 1.0)
    value = ro.read_sync(
        lambda c: c.execute(
            "SELECT value FROM ItemTable WHERE key='aiService.generations'"
        ).fetchone()[0]
    )
    assert gens[-1]["generationUUID"] in value
    db.close()


def test_exclusive_lock_longer_than_the_timeout_is_reported_as_locked(tmp_path: Path) -> None:
    db = _db(tmp_path, "delete")
    ro = ReadOnlyDatabase(db.path, 0.2)
    with hold_lock(db.path, 5.0, "exclusive"):
        t0 = time.monotonic()
        with pytest.raises(DatabaseLocked):
            ro.read_sync(lambda c: c.execute("SELECT count(*) FROM ItemTable").fetchone())
        assert time.monotonic() - t0 < 1.5
    assert ro.read_sync(lambda c: c.execute("SELECT count(*) FROM ItemTable").fetchone())


def test_missing_and_junk_files_are_classified(tmp_path: Path) -> None:
    with pytest.raises(DatabaseMissing):
        ReadOnlyDatabase(tmp_path / "nope.vscdb", 0.5).read_sync(lambda c: None)
    junk = tmp_path / "junk.vscdb"
    junk.write_bytes(b"not a database" * 200)
    with pytest.raises(NotADatabase):
        ReadOnlyDatabase(junk, 0.5).read_sync(
            lambda c: c.execute("SELECT * FROM sqlite_master").fetchall()
        )
    assert not (tmp_path / "nope.vscdb").exists()


def test_writes_through_the_connection_are_refused(tmp_path: Path) -> None:
    db = _db(tmp_path, "delete")
    before = snapshot_files(tmp_path)
    ro = ReadOnlyDatabase(db.path, 0.5)
    with pytest.raises(Exception, match=r"readonly|read-only|attempt to write"):
        ro.read_sync(lambda c: c.execute("INSERT INTO ItemTable VALUES ('x', 'y')"))
    with pytest.raises(Exception, match=r"readonly|read-only|attempt to write|cannot change"):
        ro.read_sync(lambda c: c.execute("PRAGMA user_version = 7"))
    assert snapshot_files(tmp_path) == before


def test_a_wal_commit_not_yet_visible_is_told_apart_from_a_restarted_log(tmp_path: Path) -> None:
    """The fingerprint says a ``-wal`` holds a commit that is not visible yet (frames of this
    log past the wal-index header's count: its sync under way) only then: not after a commit,
    not for the leftover frames of a log restarted after a checkpoint."""
    db = CursorDb(tmp_path / "state.vscdb", "wal")
    shm = Path(str(db.path) + "-shm")
    now = time.time()
    for i in range(3):
        db.put(f"k{i}", "x" * 6000)
        fp = fingerprint(db.path)
        assert not fp.wal_pending and fp.wal_settled(now)
    with db._connection() as conn:  # the writer's own checkpoint, as Cursor's
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    db.put("k0", "y")  # the log restarts at its start: the later frames are the old ones
    restarted = fingerprint(db.path)
    assert restarted.wal_size > 32 + 4096 + 24  # frames past the count, left over
    assert not restarted.wal_pending and restarted.wal_settled(time.time())
    old = shm.read_bytes()[:96]
    db.put("k1", "z" * 6000)
    new = shm.read_bytes()[:96]
    with shm.open("r+b", buffering=0) as fh:  # the header as it is until the sync ends
        fh.write(old)
    pending = fingerprint(db.path)
    assert pending.wal_pending and not pending.wal_settled(time.time())
    assert pending.wal_settled(time.time() + 5)  # bounded: not checked again forever
    with shm.open("r+b", buffering=0) as fh:
        fh.write(new)
    visible = fingerprint(db.path)
    assert not visible.wal_pending and visible != pending  # only the header differs
    assert (visible.wal_size, visible.wal_mtime_ns) == (pending.wal_size, pending.wal_mtime_ns)
    db.close()


def test_reading_the_wal_index_keeps_a_running_reads_lock(tmp_path: Path) -> None:
    """The fingerprint reads ``-shm`` while a read of the same database may run in another
    thread (the global databases read workspace databases). Closing a descriptor of ``-shm``
    would drop that read's lock: Cursor's writer could then truncate the log under it."""
    db = CursorDb(tmp_path / "state.vscdb", "wal")
    for i in range(3):
        db.put(f"k{i}", "x" * 5000)
    reader = sqlite3.connect(ro_uri(db.path), uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM ItemTable").fetchone()  # holds its read mark
        db.put("k3", "y")
        fingerprint(db.path)
        fingerprint(db.path)
        other = subprocess.run(  # Cursor's process: a checkpoint that empties the log
            [sys.executable, "-c", CHECKPOINT_TRUNCATE, str(db.path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        busy = int(other.stdout.split()[0])
        assert busy == 1, other.stdout  # the read's lock held: the log could not be emptied
    finally:
        reader.close()
        db.close()


CHECKPOINT_TRUNCATE = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
    "print(*c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone())"
)


def test_a_second_read_of_a_file_waits_and_keeps_the_first_reads_lock(tmp_path: Path) -> None:
    """Two reads of one rollback-journal database in this process (a workspace's read and the
    global databases' membership read): the second one's header peek would close a descriptor
    of the file and drop the first one's SHARED lock, letting Cursor commit under that read.
    The second waits for the first instead, and Cursor's writer stays locked out meanwhile."""
    db = CursorDb(tmp_path / "state.vscdb", "delete")
    db.put("k", "v")
    inside, go, second_done = threading.Event(), threading.Event(), threading.Event()

    def first(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT count(*) FROM ItemTable").fetchone()
        inside.set()
        go.wait(10)

    reads = [
        threading.Thread(target=ReadOnlyDatabase(db.path, 5.0).read_sync, args=(first,)),
        threading.Thread(
            target=lambda: (
                ReadOnlyDatabase(db.path, 5.0).read_sync(lambda c: None),
                second_done.set(),
            )
        ),
    ]
    reads[0].start()
    try:
        assert inside.wait(5)
        reads[1].start()
        writer = subprocess.run(  # Cursor, with no busy wait at all
            [sys.executable, "-c", TRY_COMMIT, str(db.path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert writer.stdout.strip() == "locked", writer.stdout
        assert not second_done.is_set()
    finally:
        go.set()
        for t in reads:
            t.join(10)
    assert second_done.is_set()  # and then it ran
    db.close()


TRY_COMMIT = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO ItemTable VALUES ('w', 'x')")
    c.execute("COMMIT")
    print("committed")
except sqlite3.OperationalError:
    print("locked")
"""
