"""The store's one schema definition, its versions, and the SQL dialects it is written in.

Both stores (SQLite: ``store.py``, PostgreSQL: ``store_pg.py``) create their tables from
``TABLES`` and migrate with ``MIGRATIONS``; a ``Dialect`` turns them into DDL and adapts the few
places where the two SQLs differ (placeholders, ``INSERT OR IGNORE`` / ``ON CONFLICT``,
``IS ?``, JSON access). Queries are written once, in the SQLite spelling with ``?``
placeholders, and ``Dialect.sql`` rewrites them for PostgreSQL.

The schema version is recorded in ``store_meta``. A store is migrated forward at start (under
the store's write lock, so concurrent starts agree); a program that finds a *newer* version
than it knows refuses to use the store (``StoreSchemaTooNew``) instead of writing rows a newer
reader would misread.

To add a table: append a ``Table`` to ``TABLES`` (it is created on the next start of either
store, ``CREATE TABLE IF NOT EXISTS``) and bump ``SCHEMA_VERSION`` with a ``Migration`` that
needs no statements. To add columns to an existing table: add them to its ``Table`` and to a
new ``Migration``'s ``add_columns``.

Queries: write them once, on ``self.conn.execute(sql, params)`` in the SQLite spelling with
``?``; on PostgreSQL ``store_pg._PgConn`` runs them through ``POSTGRES.sql``. Keep to SQL both
engines know (``COALESCE``, ``GROUP BY``, ``LIMIT``, ``INSERT … ON CONFLICT (k) DO UPDATE``
rather than ``INSERT OR REPLACE``; a subquery in FROM gets an alias; a ``SUM`` comes back as a
``Decimal`` from PostgreSQL: ``int()`` it); reach into JSON with ``self.dialect.json_text`` /
``json_number``; ask whether a table exists with ``store.has_table`` (``Dialect.table_exists``,
never ``sqlite_master``). The engine-specific rest is a ``Dialect`` method each: the full-text
index (``search_table`` / ``search_match`` / ``search_query`` / ``search_text``: FTS5 vs a
``tsvector`` column with a GIN index), ``same`` (``IS`` vs ``IS NOT DISTINCT FROM``).
Rows a writer maintains in the batch's transaction are written inside
``TraceStore.write_batch`` (SQLite) and ``PgTraceStore.write_batch`` (after the move from
``_bp_batch``, same transaction, under the advisory write lock).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Generic column types: each dialect maps them (``json`` is JSON text in both).
TEXT, INT, JSON = "text", "int", "json"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool = False
    default: str | None = None  # SQL literal


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    # the dialects that create it (``Dialect.create_table``)
    dialects: tuple[str, ...] = ("sqlite", "postgres")


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()
    # SQLite: one B-tree keyed by the primary key (no rowid table beside it); ignored elsewhere.
    without_rowid: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Migration:
    """What turns version ``version - 1`` into ``version`` (new tables/indexes need nothing:
    every start creates whatever of ``TABLES`` is missing)."""

    version: int
    add_columns: tuple[tuple[str, Column], ...] = ()
    note: str = ""


EVENTS = Table(
    "events",
    (
        Column("event_id", TEXT, not_null=True),
        Column("stream_id", TEXT, not_null=True),
        Column("event_type", TEXT, not_null=True),
        Column("hook_type", TEXT),
        Column("platform", TEXT),
        Column("trace_type", TEXT),
        Column("session_id", TEXT),
        Column("workspace_hash", TEXT),
        Column("generation_id", TEXT),
        Column("item_key", TEXT),
        Column("revision", INT, not_null=True, default="0"),
        Column("timestamp", TEXT),
        Column("timestamp_ms", INT),
        Column("received_at_ms", INT, not_null=True),
        Column("payload", JSON),
        Column("metadata", JSON),
        # v2: who produced the event (metadata.machine_id / metadata.user), for team stores
        Column("machine_id", TEXT),
        Column("user_name", TEXT),
    ),
    primary_key=("event_id",),
    indexes=(
        Index("events_by_time", ("timestamp_ms",)),
        Index("events_by_workspace", ("workspace_hash", "timestamp_ms")),
        Index(
            "events_by_trace",
            ("session_id", "trace_type", "item_key", "revision", "received_at_ms"),
        ),
        # No query reads it; PostgreSQL's writers, which many producers feed, do not keep it
        # (one index of five on every event: ~3 µs of the server's CPU per event). A store that
        # has it loses it at the next start (``store_pg``).
        Index("events_by_machine", ("machine_id", "timestamp_ms"), dialects=("sqlite",)),
    ),
)

STORE_META = Table(
    "store_meta", (Column("key", TEXT, not_null=True), Column("value", TEXT)), ("key",)
)

# Which monitors reported each generation (``trace_sources.py``): one row per
# (workspace_hash, generation_id, source); ``seq`` orders the reports of one generation.
TRACE_SOURCES = Table(
    "trace_sources",
    (
        Column("workspace_hash", TEXT, not_null=True),
        Column("generation_id", TEXT, not_null=True),
        Column("source", TEXT, not_null=True),
        Column("seq", INT, not_null=True),
        Column("event_id", TEXT, not_null=True),
        Column("stream_id", TEXT, not_null=True),
        Column("session_id", TEXT),
        Column("received_at_ms", INT, not_null=True),
        Column("timestamp_ms", INT),
        Column("generation_ms", INT),
        Column("generation_type", TEXT),
        Column("description", TEXT),
    ),
    primary_key=("workspace_hash", "generation_id", "source"),
    without_rowid=True,
)

# The reconciled conversations (``conversation_index.py``), kept by the store's writer in each
# batch's transaction; the reading side is ``conversations.py``.
CONV_CONVERSATIONS = Table(
    "conv_conversations",
    (
        Column("conversation_id", TEXT),
        Column("workspace_hash", TEXT),
        Column("workspace_path", TEXT),
        Column("title", TEXT),
        Column("parent_conversation_id", TEXT),
        Column("first_ms", INT),
        Column("last_ms", INT),
    ),
    primary_key=("conversation_id",),
    indexes=(
        Index("conv_by_last", ("last_ms",)),
        Index("conv_by_workspace", ("workspace_hash", "last_ms")),
    ),
)
CONV_TURNS = Table(
    "conv_turns",
    (
        Column("conversation_id", TEXT, not_null=True),
        Column("turn_key", TEXT, not_null=True),
        Column("generation_id", TEXT),
        Column("ordinal", INT, not_null=True),
        Column("tx_ordinal", INT),
        Column("model", TEXT),
        Column("input_tokens", INT),
        Column("output_tokens", INT),
        Column("cache_read_tokens", INT),
        Column("cache_write_tokens", INT),
        Column("token_source", TEXT),
        Column("started_ms", INT),
        Column("started_day", INT),
        Column("ended_ms", INT),
    ),
    primary_key=("conversation_id", "turn_key"),
    indexes=(
        Index("conv_turns_by_gen", ("conversation_id", "generation_id")),
        # covering, in day order: token totals per day are one streaming pass over the index
        Index(
            "conv_turns_by_day",
            (
                "started_day",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
            ),
        ),
    ),
)
CONV_TOKENS = Table(
    "conv_tokens",
    (
        Column("conversation_id", TEXT, not_null=True),
        Column("token_key", TEXT, not_null=True),
        Column("turn_key", TEXT, not_null=True),
        Column("kind", TEXT, not_null=True),
        Column("input_tokens", INT),
        Column("output_tokens", INT),
        Column("cache_read_tokens", INT),
        Column("cache_write_tokens", INT),
    ),
    primary_key=("conversation_id", "token_key"),
    indexes=(Index("conv_tokens_by_turn", ("conversation_id", "turn_key")),),
)
# The text itself stays in the event's payload (``event_id``, field ``text_field``).
CONV_PARTS = Table(
    "conv_parts",
    (
        Column("conversation_id", TEXT, not_null=True),
        Column("source", TEXT, not_null=True),
        Column("part_key", TEXT, not_null=True),
        Column("turn_key", TEXT),
        Column("role", TEXT, not_null=True),
        Column("at_ms", INT),
        Column("seq", INT),
        Column("has_text", INT, not_null=True),
        Column("event_id", TEXT, not_null=True),
        Column("text_field", TEXT, not_null=True),
    ),
    primary_key=("conversation_id", "source", "part_key"),
)
CONV_TOOLS = Table(
    "conv_tools",
    (
        Column("conversation_id", TEXT, not_null=True),
        Column("tool_key", TEXT, not_null=True),
        Column("turn_key", TEXT, not_null=True),
        Column("name", TEXT),
        Column("duration_ms", INT),
        Column("ok", INT),
        Column("at_ms", INT),
    ),
    primary_key=("conversation_id", "tool_key"),
)
CONV_SOURCES = Table(
    "conv_sources",
    (
        Column("conversation_id", TEXT, not_null=True),
        Column("turn_key", TEXT, not_null=True),
        Column("source", TEXT, not_null=True),
    ),
    primary_key=("conversation_id", "turn_key", "source"),
)
CONVERSATION_TABLES = (
    CONV_CONVERSATIONS, CONV_TURNS, CONV_TOKENS, CONV_PARTS, CONV_TOOLS, CONV_SOURCES,
)  # fmt: skip


def _activity(name: str, bucket: str) -> Table:
    """Per ``bucket`` (hour or day, in ms), workspace, trace type and model: traces stored,
    assistant turns, tokens (``derived.py`` keeps them; '' stands for none)."""
    return Table(
        name,
        (
            Column(bucket, INT, not_null=True),
            Column("workspace_hash", TEXT, not_null=True),
            Column("trace_type", TEXT, not_null=True),
            Column("model", TEXT, not_null=True),
            Column("traces", INT, not_null=True),
            Column("turns", INT, not_null=True),
            Column("input_tokens", INT, not_null=True),
            Column("output_tokens", INT, not_null=True),
        ),
        primary_key=(bucket, "workspace_hash", "trace_type", "model"),
    )


# The page's aggregates (derived.py); the search index ``trace_text`` is engine-specific
# (FTS5 / tsvector): ``Dialect.search_table``.
ACTIVITY_HOURLY = _activity("activity_hourly", "hour_ms")
ACTIVITY_DAILY = _activity("activity_daily", "day_ms")
SEARCH_TABLE = "trace_text"

TABLES: tuple[Table, ...] = (
    EVENTS, STORE_META, TRACE_SOURCES, *CONVERSATION_TABLES, ACTIVITY_HOURLY, ACTIVITY_DAILY,
)  # fmt: skip

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        add_columns=(("events", Column("machine_id", TEXT)), ("events", Column("user_name", TEXT))),
        note="events.machine_id and events.user_name (team stores)",
    ),
    Migration(3, note="trace_sources: every monitor that reported a generation (migration)"),
    Migration(
        4,
        note="conv_* (reconciled conversations) join the shared definition; on PostgreSQL "
        "they are created and the stored events indexed once",
    ),
    Migration(
        5,
        note="activity_hourly/activity_daily join the shared definition and, with the search "
        "index (trace_text), are kept on PostgreSQL too (built once from the stored events)",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version if MIGRATIONS else 1


class StoreSchemaTooNew(RuntimeError):
    """The store was written by a newer Blueplane: this one must not touch it."""


class StoreUrlError(ValueError):
    """``store.url`` names a scheme or path this program cannot use."""


def too_new_message(where: str, found: int) -> str:
    return (
        f"store {where} has schema version {found}, newer than the {SCHEMA_VERSION} this "
        "Blueplane knows: it was written by a newer version; upgrade Blueplane (the store is "
        "left untouched)"
    )


# ----------------------------------------------------------------------------- dialects
_IS_PARAM = re.compile(r"\bIS \?")
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)


@dataclass(frozen=True)
class Dialect:
    name: str
    types: dict[str, str] = field(default_factory=dict)
    param: str = "?"

    def column_ddl(self, c: Column) -> str:
        text = f"{c.name} {self.types[c.type]}"
        if c.not_null:
            text += " NOT NULL"
        if c.default is not None:
            text += f" DEFAULT {c.default}"
        return text

    def create_table(self, t: Table) -> list[str]:
        cols = ",\n    ".join(self.column_ddl(c) for c in t.columns)
        out = [
            f"CREATE TABLE IF NOT EXISTS {t.name} (\n    {cols},\n"
            f"    PRIMARY KEY ({', '.join(t.primary_key)})\n)"
            + (" WITHOUT ROWID" if t.without_rowid and self.name == "sqlite" else "")
        ]
        out += [
            f"CREATE INDEX IF NOT EXISTS {i.name} ON {t.name} ({', '.join(i.columns)})"
            for i in t.indexes
            if self.name in i.dialects
        ]
        return out

    def add_column(self, table: str, c: Column) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {self.column_ddl(c)}"

    def sql(self, query: str) -> str:
        """A query written in the SQLite spelling, for this dialect."""
        if self.name == "sqlite":
            return query
        query = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", query)
        ignore = bool(_INSERT_OR_IGNORE.match(query))
        if ignore:
            query = _INSERT_OR_IGNORE.sub("INSERT INTO", query, count=1)
        # psycopg placeholders; a literal % must be doubled
        query = query.replace("%", "%%").replace("?", "%s")
        if ignore:
            query = query.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
        return query

    def table_exists(self, name: str) -> tuple[str, tuple[str, ...]]:
        """A query (and its parameters) giving a row when table ``name`` exists."""
        if self.name == "sqlite":
            return "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        return "SELECT 1 WHERE to_regclass(?) IS NOT NULL", (name,)

    def search_table(self) -> list[str]:
        """DDL of the full-text index ``trace_text`` (text, conversation_id, event_id; newest
        by ``rowid``): FTS5 on SQLite; on PostgreSQL a ``tsvector`` column with a GIN index,
        made from the words ``search_text`` gives (PostgreSQL's own text parser costs more
        than the rest of the write: 60 µs per 1 KB trace on this machine)."""
        if self.name == "sqlite":
            return [
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {SEARCH_TABLE} USING fts5("
                " text, conversation_id UNINDEXED, event_id UNINDEXED,"
                " tokenize = 'unicode61 remove_diacritics 2', detail = none, columnsize = 0)"
            ]
        return [
            f"CREATE TABLE IF NOT EXISTS {SEARCH_TABLE} (rowid BIGSERIAL PRIMARY KEY, text TEXT,"
            " conversation_id TEXT, event_id TEXT, tsv tsvector GENERATED ALWAYS AS"
            " (array_to_tsvector(string_to_array(coalesce(text, ''), ' '))) STORED)",
            f"CREATE INDEX IF NOT EXISTS {SEARCH_TABLE}_tsv ON {SEARCH_TABLE} USING GIN (tsv)",
        ]

    def search_match(self) -> str:
        """The condition on ``trace_text`` that one parameter, ``search_query(words)``, fills."""
        if self.name == "sqlite":
            return f"{SEARCH_TABLE} MATCH ?"
        return "tsv @@ CAST(? AS tsquery)"

    def search_query(self, words: list[str]) -> str:
        """Every word must match: whole words, the last one as a prefix (being typed)."""
        if self.name == "sqlite":
            return " ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])
        terms = [f"'{t}'" for w in words for t in lexemes(w)]
        if terms:
            terms[-1] += ":*"
        return " & ".join(terms)

    def search_text(self, text: str) -> str:
        """What the index is given of a text: as is for FTS5 (it tokenizes and folds itself);
        for PostgreSQL its distinct words, lower case, without diacritics, as FTS5's
        ``unicode61 remove_diacritics`` splits them (letters and digits)."""
        return text if self.name == "sqlite" else " ".join(dict.fromkeys(lexemes(text)))

    def same(self, a: str, b: str) -> str:
        """``a`` equals ``b``, NULL equal to NULL."""
        return f"{a} IS {b}" if self.name == "sqlite" else f"{a} IS NOT DISTINCT FROM {b}"

    def json_number(self, column: str, key: str) -> str:
        """The number at top-level ``key`` of a JSON column (NULL when it is not a number)."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{key}')"
        return (
            f"(CASE WHEN jsonb_typeof({column}::jsonb -> '{key}') = 'number'"
            f" THEN ({column}::jsonb ->> '{key}')::numeric END)"
        )

    def json_text(self, column: str, key: str) -> str:
        """The text at top-level ``key`` of a JSON column."""
        if self.name == "sqlite":
            return f"json_extract({column}, '$.{key}')"
        return f"({column}::jsonb ->> '{key}')"


_LEXEME = re.compile(r"[^\W_]+")


def fold(word: str) -> str:
    """A word without its diacritics (résumé → resume), as FTS5's ``remove_diacritics``."""
    if word.isascii():
        return word
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def lexemes(text: str) -> list[str]:
    """The words of ``text`` as the PostgreSQL search index keeps them."""
    low = text.lower()
    words = _LEXEME.findall(low)
    return words if low.isascii() else [fold(w) for w in words]


def is_missing_table(exc: BaseException) -> bool:
    """The engine said a table is not there (SQLite's or PostgreSQL's words): a store written
    by an older version."""
    return "no such table" in str(exc) or type(exc).__name__ == "UndefinedTable"


SQLITE = Dialect("sqlite", {TEXT: "TEXT", INT: "INTEGER", JSON: "TEXT"}, "?")
# JSON kept as text in PostgreSQL too: no per-row jsonb parse on the hot write path; queries
# cast (``json_text``) where they look inside.
POSTGRES = Dialect("postgres", {TEXT: "TEXT", INT: "BIGINT", JSON: "TEXT"}, "%s")


def schema_ddl(dialect: Dialect) -> list[str]:
    out: list[str] = []
    for t in TABLES:
        out += dialect.create_table(t)
    return out


def pending_migrations(found: int) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version > found]
