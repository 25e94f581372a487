"""The shared schema's dialect layer and URL masking (pure functions)."""

from __future__ import annotations

import pytest

from blueplane.config import ConfigError, load_settings
from blueplane.store_schema import POSTGRES, SQLITE, TABLES, schema_ddl
from blueplane.urls import describe_pg, mask_url


def test_one_query_text_serves_both_dialects() -> None:
    q = "INSERT OR IGNORE INTO t SELECT ?, ? WHERE a IS ? AND b LIKE '50%'"
    assert SQLITE.sql(q) == q
    assert POSTGRES.sql(q) == (
        "INSERT INTO t SELECT %s, %s WHERE a IS NOT DISTINCT FROM %s AND b LIKE '50%%'"
        " ON CONFLICT DO NOTHING"
    )
    assert SQLITE.json_text("payload", "model") == "json_extract(payload, '$.model')"
    assert POSTGRES.json_text("payload", "model") == "(payload::jsonb ->> 'model')"


def test_both_ddls_come_from_the_one_definition() -> None:
    lite, pg = schema_ddl(SQLITE), schema_ddl(POSTGRES)
    assert len(lite) == sum(1 + len(t.indexes) for t in TABLES)
    # an index no query reads is not kept on PostgreSQL
    assert len(pg) == len(lite) - 1
    assert not any("events_by_machine" in stmt for stmt in pg)
    assert "revision INTEGER NOT NULL DEFAULT 0" in lite[0]
    assert "revision BIGINT NOT NULL DEFAULT 0" in pg[0]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://alice:s3cret@host:6380/0", "rediss://alice:***@host:6380/0"),
        ("redis://:s3cret@host/0", "redis://:***@host/0"),
        ("postgresql://bp:p%40ss@db:5432/team", "postgresql://bp:***@db:5432/team"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
)
def test_passwords_are_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_describe_pg_names_host_port_and_database_only() -> None:
    assert describe_pg("postgresql://bp:pw@db.example:6543/team") == "db.example:6543/team"
    assert describe_pg("postgresql://bp@db/") == "db:5432/bp"


def test_store_url_scheme_is_checked_and_the_password_not_echoed(monkeypatch) -> None:
    monkeypatch.setenv("BLUEPLANE_STORE_URL", "mongodb://u:topsecret@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "unknown store URL scheme 'mongodb'" in str(info.value)
    assert "topsecret" not in str(info.value)
    monkeypatch.setenv("BLUEPLANE_STORE_URL", "postgresql://u@h/db")
    assert load_settings().store_url == "postgresql://u@h/db"
    monkeypatch.delenv("BLUEPLANE_STORE_URL")
    settings = load_settings(home="/tmp/x")
    assert settings.store_url == "sqlite:///tmp/x/telemetry.db"
    assert str(settings.store_path) == "/tmp/x/telemetry.db"
