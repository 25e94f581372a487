"""Team scale: producers on a shared Redis, ``blueplane consume`` processes in one group, a real
PostgreSQL store. Every process is the real command in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis as sync_redis

from tests.conftest import BlueplaneEnv, ServerProcess, wait_until
from tests.fixtures.cursor_db import UserDir
from tests.integration.reliability_support import OwnRedis, own_env, project
from tests.pg_support import PgCluster, free_port, pg_bin, row_count

pytestmark = pytest.mark.integration
STREAM = "telemetry:events"
GROUP = "blueplane-fast-path"


class ConsumeProcess:
    """``blueplane consume`` in a child process, its output in a log file."""

    def __init__(self, env: BlueplaneEnv, name: str, **extra: str) -> None:
        self.env = env
        self.name = name
        self.extra = {"BLUEPLANE_FAST_PATH__CONSUMER": name, **extra}
        self.log_path = env.home / f"consume-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ConsumeProcess:
        self.env.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "blueplane.cli", "consume"],
                env={**self.env.env(), **self.extra}, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.env.home,
            )  # fmt: skip
        if wait:
            wait_until(self.running, timeout=20, what=f"consumer {self.name} running")
        return self

    def running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"consume exited ({self.proc.returncode}):\n{self.log()}")
        path = self.env.home / f"consume-{self.name}.json"
        try:
            return json.loads(path.read_text())["server"]["state"] == "running"
        except (OSError, ValueError, KeyError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def consumers() -> list[ConsumeProcess]:
    started: list[ConsumeProcess] = []
    yield started
    for c in started:
        c.stop()


def trace_entry(i: int, machine: str = "m-1") -> dict[str, str]:
    return {
        "version": "0.1.0",
        "event_type": "database_trace",
        "hook_type": "DatabaseTrace",
        "platform": "cursor",
        "event_id": f"ev-{i}",
        "session_id": "s-1",
        "timestamp": "2026-11-27T04:00:00Z",
        "metadata": json.dumps(
            {"workspace_hash": "0123456789abcdef", "machine_id": machine, "user": "u"}
        ),
        "payload": json.dumps(
            {"trace_type": "generation", "generation_id": f"g-{i}", "text": "x" * 300}
        ),
    }


def _consume_env(bp_env: BlueplaneEnv, pg_url: str) -> BlueplaneEnv:
    bp_env.extra.update(
        BLUEPLANE_STORE_URL=pg_url,
        BLUEPLANE_FAST_PATH__BATCH_SIZE="200",
        BLUEPLANE_FAST_PATH__CLAIM_IDLE_MS="1000",
    )
    return bp_env


def test_two_consumers_share_one_group_and_a_killed_one_loses_nothing(
    bp_env: BlueplaneEnv, pg_url: str, redis_client: sync_redis.Redis,
    consumers: list[ConsumeProcess],
) -> None:  # fmt: skip
    env = _consume_env(bp_env, pg_url)
    n = 30_000
    pipe = redis_client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, trace_entry(i))
    pipe.execute()
    a = ConsumeProcess(env, "team-a")
    b = ConsumeProcess(env, "team-b")
    consumers += [a, b]
    a.start(wait=False)
    b.start(wait=False)
    wait_until(lambda: row_count(pg_url) >= 3000, timeout=60, what="the consumers to store")
    # mid-batch: SIGKILL while it holds entries it has read but not acknowledged
    wait_until(
        lambda: any(
            c["name"] == "team-a" and c["pending"] > 0
            for c in redis_client.xinfo_consumers(STREAM, GROUP)
        ),
        timeout=30,
        what="team-a to hold pending entries",
    )
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait(timeout=5)
    left = {c["name"]: c["pending"] for c in redis_client.xinfo_consumers(STREAM, GROUP)}
    wait_until(lambda: row_count(pg_url) == n, timeout=120, what=f"all {n} stored")
    wait_until(
        lambda: redis_client.xinfo_groups(STREAM)[0]["pending"] == 0,
        timeout=30,
        what="nothing pending in the group",
    )
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT event_id), count(DISTINCT stream_id)"
                            " FROM events").fetchone()  # fmt: skip
    assert rows == (n, n, n)
    stored_by_b = "claimed" in b.log() or left.get("team-a", 0) == 0
    assert stored_by_b, f"team-a left {left}; team-b log:\n{b.log()[-2000:]}"
    # both did share the work: each acknowledged some
    status = env.cli_json("status")
    names = {c["name"] for c in status["stream"]["consumers"]}
    assert {"team-a", "team-b"} <= names
    assert status["stream"]["pending"] == 0
    assert status["store"]["counts"] == {"generation": n}
    procs = status["consume_processes"]
    assert procs["team-b"]["running"] is True and procs["team-a"]["running"] is False

    def b_counted_its_stores() -> bool:
        # a consume process writes its status file every couple of seconds: wait for it
        b_status = env.cli_json("status")["consume_processes"]["team-b"]
        return b_status["components"]["fast_path_consumer"]["counters"].get("stored", 0) > 0

    wait_until(b_counted_its_stores, timeout=15, what="team-b's status to count what it stored")
    assert b.stop() == 0


def test_an_unreachable_postgres_at_start_is_one_line_naming_the_host_then_retries(
    bp_env: BlueplaneEnv, consumers: list[ConsumeProcess]
) -> None:
    port = free_port()
    bp_env.extra["BLUEPLANE_STORE_URL"] = f"postgresql://bp:s3cretpw@127.0.0.1:{port}/team"
    c = ConsumeProcess(bp_env, "lonely")
    consumers.append(c)
    c.start(wait=False)
    wait_until(lambda: "does not answer" in c.log(), timeout=20, what="the unreachable line")
    status_file = bp_env.home / "consume-lonely.json"

    def attempts() -> int:
        if not status_file.exists():
            return 0
        store = json.loads(status_file.read_text())["components"].get("store", {})
        return int(store.get("counters", {}).get("connect_attempts", 0))

    # several retries (1 s, 2 s backoff) must not repeat the line
    wait_until(lambda: attempts() >= 3, timeout=30, what="three failed connection attempts")
    assert c.proc is not None and c.proc.poll() is None, c.log()
    lines = [line for line in c.log().splitlines() if "does not answer" in line]
    assert len(lines) == 1, c.log()
    assert f"127.0.0.1:{port}/team" in lines[0]
    assert "s3cretpw" not in c.log()
    status = json.loads((bp_env.home / "consume-lonely.json").read_text())
    assert "s3cretpw" not in json.dumps(status)
    assert c.stop() == 0


@pytest.fixture(scope="module")
def password_cluster(tmp_path_factory: pytest.TempPathFactory) -> PgCluster:
    if not pg_bin("initdb"):
        pytest.skip("initdb not installed (apt-get install postgresql)")
    cluster = PgCluster(password="right-pw").start()
    yield cluster
    cluster.stop()


def test_a_wrong_postgres_password_is_a_clear_error(
    bp_env: BlueplaneEnv, password_cluster: PgCluster
) -> None:
    bp_env.home.mkdir(parents=True)
    url = f"postgresql://postgres:wrong-pw-123@127.0.0.1:{password_cluster.port}/postgres"
    bp_env.extra["BLUEPLANE_STORE_URL"] = url
    proc = subprocess.run(
        [sys.executable, "-m", "blueplane.cli", "consume"], env=bp_env.env(),
        capture_output=True, text=True, timeout=60, cwd=bp_env.home,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "refused the credentials" in proc.stderr
    assert f"127.0.0.1:{password_cluster.port}/postgres" in proc.stderr
    assert "wrong-pw-123" not in proc.stderr + proc.stdout
    # and with the right password the same store works
    bp_env.extra["BLUEPLANE_STORE_URL"] = url.replace("wrong-pw-123", "right-pw")
    assert bp_env.cli_json("traces") == []


def test_producer_on_a_shared_redis_with_a_password_tags_and_masks(
    tmp_path: Path, own_redis: OwnRedis, pg_url: str, consumers: list[ConsumeProcess]
) -> None:
    admin = own_redis.client()
    admin.acl_setuser(
        "laptop", enabled=True, passwords=["+Sh4redPw"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    url = f"redis://laptop:Sh4redPw@127.0.0.1:{own_redis.port}/0"
    producer = own_env(tmp_path / "laptop", url)
    producer.extra.update(
        BLUEPLANE_FAST_PATH__ENABLED="false",
        BLUEPLANE_IDENTITY__HASH_USER_NAME="true",
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.1",
    )
    central = own_env(tmp_path / "central", url)
    central.extra.update(BLUEPLANE_STORE_URL=pg_url)
    ws = UserDir(producer.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    gens = ws.db.append_generations(5)
    sp = ServerProcess(producer).start()
    producer.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    c = ConsumeProcess(central, "central-1")
    consumers.append(c)
    c.start()
    gen_count = "SELECT count(*) FROM events WHERE trace_type='generation'"
    wait_until(lambda: row_count(pg_url, gen_count) == 5, timeout=30, what="5 stored")
    mid = (producer.home / "machine_id").read_text().strip()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT machine_id, user_name FROM events WHERE event_type='database_trace'"
        ).fetchall()
        session = conn.execute(
            "SELECT metadata FROM events WHERE event_type='session_start'"
        ).fetchone()
    assert len(rows) == 1 and rows[0][0] == mid
    assert len(rows[0][1]) == 16 and rows[0][1] != os.environ.get("USER")  # hashed
    assert session is not None and json.loads(session[0])["machine_id"] == mid
    assert not (producer.home / "telemetry.db").exists()  # a producer keeps no store
    status_text = producer.cli("status").stdout + json.dumps(producer.cli_json("status"))
    central_status = central.cli("status").stdout + json.dumps(central.cli_json("status"))
    for text in (sp.log(), c.log(), status_text, central_status,
                 (producer.home / "status.json").read_text()):  # fmt: skip
        assert "Sh4redPw" not in text
    assert "laptop:***@" in status_text
    assert "central-1" in central_status
    assert sp.stop() == 0
    assert [g["generationUUID"] for g in gens]


@pytest.mark.slow
def test_a_long_redis_outage_on_a_laptop_loses_nothing_and_catches_up(
    tmp_path: Path, own_redis: OwnRedis, pg_url: str, consumers: list[ConsumeProcess]
) -> None:
    outage_s = float(os.environ.get("BLUEPLANE_TEAM_OUTAGE_SECONDS", "20"))
    producer = own_env(tmp_path / "laptop", own_redis.url)
    producer.extra.update(
        BLUEPLANE_FAST_PATH__ENABLED="false",
        BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.1",
        BLUEPLANE_REDIS__RECONNECT_BACKOFF_SECONDS="0.2",
    )
    central = own_env(tmp_path / "central", own_redis.url)
    central.extra.update(BLUEPLANE_STORE_URL=pg_url)
    ws = UserDir(producer.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
    before = [g["generationUUID"] for g in ws.db.append_generations(3)]
    sp = ServerProcess(producer).start()
    producer.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s-1")
    c = ConsumeProcess(central, "central-1")
    consumers.append(c)
    c.start()
    gen_count = "SELECT count(*) FROM events WHERE trace_type='generation'"
    wait_until(lambda: row_count(pg_url, gen_count) == 3, timeout=30, what="3 stored")
    watermarks_before = {
        k: own_redis.client().hgetall(k) for k in own_redis.client().keys("blueplane:watermarks:*")
    }
    own_redis.stop()  # the laptop goes offline (the train)
    during: list[str] = []
    deadline = time.monotonic() + outage_s
    while time.monotonic() < deadline:  # the developer keeps working meanwhile
        during += [g["generationUUID"] for g in ws.db.append_generations(2)]
        time.sleep(outage_s / 5)
    status = producer.cli_json("status")
    assert status["running"] is True and status["stream"]["reachable"] is False
    own_redis.start()
    own_redis.wait_loaded()
    total = 3 + len(during)
    wait_until(lambda: row_count(pg_url, gen_count) == total, timeout=60, what="the catch-up")
    with psycopg.connect(pg_url) as conn:
        got = [r[0] for r in conn.execute("SELECT generation_id FROM events WHERE "
                                          "trace_type='generation'").fetchall()]  # fmt: skip
    assert sorted(got) == sorted(before + during)  # each exactly once
    # the watermarks stayed where they were while Redis was away (the AOF kept them) and
    # moved on only with the catch-up
    after = {k: own_redis.client().hgetall(k) for k in watermarks_before}
    assert after != watermarks_before
    assert sp.stop() == 0


def test_consume_trims_without_a_session_position_but_never_past_pending(
    bp_env: BlueplaneEnv, pg_url: str, redis_client: sync_redis.Redis,
    consumers: list[ConsumeProcess],
) -> None:  # fmt: skip
    env = _consume_env(bp_env, pg_url)
    env.extra.update(
        BLUEPLANE_FAST_PATH__MAX_STREAM_LENGTH="100",
        BLUEPLANE_FAST_PATH__TRIM_INTERVAL_SECONDS="0.2",
    )
    redis_client.xgroup_create(STREAM, "other-team-tool", id="0", mkstream=True)
    ids = [redis_client.xadd(STREAM, trace_entry(i)) for i in range(1000)]
    # another group read 600 and acknowledged only the first 300
    redis_client.xreadgroup("other-team-tool", "x", {STREAM: ">"}, count=600)
    redis_client.xack(STREAM, "other-team-tool", *ids[:300])
    c = ConsumeProcess(env, "trimmer")
    consumers.append(c)
    c.start()
    wait_until(lambda: row_count(pg_url) == 1000, timeout=60, what="all stored")
    wait_until(lambda: redis_client.xlen(STREAM) <= 700, timeout=30, what="trimmed")
    status_file = bp_env.home / "consume-trimmer.json"

    def held_back() -> int:
        comps = json.loads(status_file.read_text())["components"]
        return int(comps["stream_trimmer"].get("counters", {}).get("held_back", 0))

    # a few more trim rounds, each stopped by the other group's pending entries
    seen = held_back()
    wait_until(lambda: held_back() >= seen + 3, timeout=30, what="3 more held-back trim rounds")
    first = redis_client.xrange(STREAM, count=1)[0][0]
    assert first == ids[300]


@pytest.fixture
def own_pg() -> PgCluster:
    """A PostgreSQL of the test's own (trust), which it may restart."""
    if not pg_bin("initdb"):
        pytest.skip("initdb not installed (apt-get install postgresql)")
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


def test_a_postgres_restart_mid_burst_loses_and_duplicates_nothing(
    bp_env: BlueplaneEnv, own_pg: PgCluster, redis_client: sync_redis.Redis,
    consumers: list[ConsumeProcess],
) -> None:  # fmt: skip
    from tests.pg_support import create_database

    url = create_database(own_pg.url)
    env = _consume_env(bp_env, url)
    env.extra["BLUEPLANE_FAST_PATH__STORE_RETRY_INITIAL_SECONDS"] = "0.2"
    env.extra["BLUEPLANE_FAST_PATH__STORE_RETRY_MAX_SECONDS"] = "1"
    n = 20_000
    c = ConsumeProcess(env, "central-1")
    consumers.append(c)
    c.start()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, trace_entry(i))
    pipe.execute()
    wait_until(lambda: row_count(url) >= 2000, timeout=60, what="the burst to be stored")
    own_pg.pg_ctl("restart")  # mid-burst: connections cut, transactions rolled back
    wait_until(lambda: row_count(url) == n, timeout=120, what=f"all {n} after the restart")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(DISTINCT event_id) FROM events").fetchone() == (n,)
    wait_until(lambda: redis_client.xinfo_groups(STREAM)[0]["pending"] == 0, what="all acked")
    assert "cannot write the store" in c.log() or "writable again" in c.log(), c.log()[-3000:]
    assert c.stop() == 0


def _make_tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {k: folder / f"{k}.pem" for k in ("ca", "ca-key", "server", "server-key", "csr")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bp-test-ca",
        "-keyout", str(f["ca-key"]), "-out", str(f["ca"]))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(f["server-key"]), "-out", str(f["csr"]))  # fmt: skip
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(f["csr"]), "-CA", str(f["ca"]), "-CAkey",
        str(f["ca-key"]), "-CAcreateserial", "-days", "2", "-extfile", str(ext),
        "-out", str(f["server"]))  # fmt: skip
    return f


def test_a_producer_publishes_over_tls_with_a_user_and_password(
    tmp_path: Path, pg_url: str, consumers: list[ConsumeProcess]
) -> None:
    import shutil

    binary = shutil.which("redis-server")
    if not binary or not shutil.which("openssl"):
        pytest.skip("needs redis-server and openssl")
    tls = _make_tls_files(tmp_path / "tls")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls["server"]), "--tls-key-file", str(tls["server-key"]),
         "--tls-ca-cert-file", str(tls["ca"]), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        admin = sync_redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(tls["ca"]))
        wait_until(lambda: _pings(admin), timeout=15, what="the TLS Redis")
        if server.poll() is not None:
            pytest.skip("redis-server without TLS support")
        admin.acl_setuser("dev", enabled=True, passwords=["+Tl5Secret"], keys=["*"],
                          channels=["*"], commands=["+@all"])  # fmt: skip
        url = f"rediss://dev:Tl5Secret@127.0.0.1:{port}/0"
        producer = own_env(tmp_path / "laptop", url)
        producer.extra.update(
            BLUEPLANE_FAST_PATH__ENABLED="false",
            BLUEPLANE_REDIS__SSL_CA_CERTS=str(tls["ca"]),
            BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS="0.1",
        )
        central = own_env(tmp_path / "central", url)
        central.extra.update(
            BLUEPLANE_STORE_URL=pg_url, BLUEPLANE_REDIS__SSL_CA_CERTS=str(tls["ca"])
        )
        ws = UserDir(producer.cursor_dirs[0]).add_workspace(project(tmp_path, "p"))
        ws.db.append_generations(4)
        sp = ServerProcess(producer).start()
        producer.cli("session", "start", "--workspace", str(ws.folder_path), "--session-id", "s")
        c = ConsumeProcess(central, "tls-1")
        consumers.append(c)
        c.start()
        gen_count = "SELECT count(*) FROM events WHERE trace_type='generation'"
        wait_until(lambda: row_count(pg_url, gen_count) == 4, timeout=30, what="4 over TLS")
        status = producer.cli_json("status")
        assert status["stream"]["reachable"] is True
        assert status["stream"]["url"] == f"rediss://dev:***@127.0.0.1:{port}/0"
        assert "Tl5Secret" not in sp.log() + c.log() + json.dumps(status)
        # without the CA the server's certificate is refused: reachable false, said so
        producer.extra.pop("BLUEPLANE_REDIS__SSL_CA_CERTS")
        bad = producer.cli_json("status")["stream"]
        assert bad["reachable"] is False and "certificate" in bad["error"].lower()
        assert sp.stop() == 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def _pings(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (sync_redis.ConnectionError, OSError):
        return False
