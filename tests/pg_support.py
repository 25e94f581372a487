"""A real PostgreSQL for the tests: the machine's on 127.0.0.1:5432 (trust, user postgres) when
it answers, else a throwaway cluster made with ``initdb`` and run with ``pg_ctl``.

``PgCluster`` is also how a test gets a cluster of its own (password authentication, or one it
may restart). Each test session creates its own database and drops it at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

MACHINE_PG = os.environ.get("BLUEPLANE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, timeout: int = 2) -> bool:
    try:
        with psycopg.connect(f"{url}/postgres", connect_timeout=timeout):
            return True
    except psycopg.Error:
        return False


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PgCluster:
    """``initdb`` + ``pg_ctl`` on a free loopback port under ``data_dir`` (as user ``postgres``
    when the tests run as root: PostgreSQL refuses to run as root)."""

    def __init__(self, data_dir: Path | None = None, *, password: str | None = None) -> None:
        # Not under pytest's basetemp: user postgres must be able to reach the folder.
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="bp-pg-"))
        self.data_dir.chmod(0o755)
        self.password = password
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError: no postgres user to run it as
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        auth = f"postgres:{self.password}@" if self.password else "postgres@"
        return f"postgresql://{auth}127.0.0.1:{self.port}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PgCluster:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("no initdb/pg_ctl: install PostgreSQL (apt-get install postgresql)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.data_dir, "postgres", "postgres")
        args = [initdb, "-D", str(self.data_dir / "data"), "-U", "postgres", "--no-sync"]
        if self.password:
            pwfile = self.data_dir / "pw"
            pwfile.write_text(self.password)
            if self._as:
                shutil.chown(pwfile, "postgres", "postgres")
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth=trust"]
        self._run(*args)
        self.pg_ctl("start")
        return self

    def pg_ctl(self, action: str) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        self._run(
            pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data_dir / "data"), "-o", opts,
            "-l", str(self.data_dir / "log"), "-w", "-m", "fast", action,
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.pg_ctl("stop")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def create_database(server_url: str, prefix: str = "bp_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return f"{server_url}/{name}"


def drop_database(url: str) -> None:
    server_url, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def reset_tables(url: str) -> None:
    """An empty database for the next test: every table of the store dropped."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def row_count(url: str, sql: str = "SELECT count(*) FROM events") -> int:
    deadline = time.monotonic() + 5
    while True:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
                return int(row[0]) if row else 0
        except psycopg.errors.UndefinedTable:
            return 0
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
