"""Settings: a YAML file plus environment variables, with the proposal's keys and defaults.

Precedence, highest first: the documented variables (``BLUEPLANE_HOME``,
``BLUEPLANE_REDIS_URL``, ``BLUEPLANE_CURSOR_DIRS``), nested variables such as
``BLUEPLANE_CURSOR_DATABASE_MONITOR__POLL_INTERVAL_SECONDS=5``, the config file, defaults.
The file is read by pydantic-settings' ``YamlConfigSettingsSource``; this module only adds the
one-line errors that name the file and the cause.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from blueplane.keys import (
    DEAD_LETTER_STREAM,
    FAST_PATH_GROUP,
    MACHINE_NAMESPACE,
    OTLP_GROUP,
    STREAM,
    Keys,
    check_namespace,
)
from blueplane.machine import machine_id
from blueplane.urls import mask_url

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
STORE_SCHEMES = ("sqlite", "postgresql", "postgres")
DEFAULT_CONFIG_FILE = Path("config/blueplane.yaml")

# The file ``load_settings`` chose, for ``Settings.settings_customise_sources`` (a classmethod,
# so the path cannot be passed as an argument). None: no file, defaults and environment only.
_yaml_file: ContextVar[Path | None] = ContextVar("blueplane_config_file", default=None)


# A blocking stream read must end before the Redis client's socket timeout (10 s, broker.py).
MAX_BLOCK_MS = 9000


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CursorDatabaseMonitorConfig(_Section):
    enabled: bool = True
    poll_interval_seconds: float = Field(30.0, gt=0)
    sync_window_hours: float = Field(24.0, gt=0)
    query_timeout_seconds: float = Field(1.5, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_backoff_seconds: float = Field(2.0, ge=0)
    dedup_window_hours: float = Field(24.0, gt=0)
    max_concurrent_workspaces: int = Field(10, ge=1)
    # Change detection: file events (watchfiles) on each database's folder drive reads at once;
    # the timed poll above is only the safety net for missed events. False: poll only.
    watch_files: bool = True
    # A burst of writes within this window costs one read, not one per write.
    watch_debounce_ms: int = Field(50, ge=1, le=1000)
    # Linux: read the inotify queue every watch_debounce_ms instead of waiting on it, so that
    # Cursor's writes wake no thread of ours (a wake-up costs Cursor's commit), and read right
    # after Cursor's commit. Elsewhere (or false) watchfiles. See bench/zero_impact.py.
    watch_quietly: bool = True
    # Poll interval for databases whose folder cannot be watched (watch limit, network mounts).
    fallback_poll_seconds: float = Field(1.0, gt=0)
    # Full prompt/response text in traces (the proposal sends it). False keeps lengths and hashes.
    capture_content: bool = True
    # Global-database composers that cannot be tied to a workspace: kept out unless true.
    include_unattributed: bool = False


class RedisConfig(_Section):
    # None: use redis://localhost:6379/0 if it answers, else start the bundled server.
    # A shared Redis: redis://user:pass@host:6379/0, or rediss://… for TLS (the password is
    # never logged nor shown in status).
    url: str | None = None
    # TLS (rediss:// URLs): CA bundle to verify the server, client certificate and key for
    # mutual TLS, "required" | "optional" | "none", and whether the host name must match.
    ssl_ca_certs: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True
    stream: str = STREAM
    # Per-install namespace of the producer-private keys (watermarks, dedup, revision memory,
    # sessions, lock, spool): "" keeps today's names (one machine); "machine" = this install's
    # machine_id; any other value (A-Z a-z 0-9 _ . -) is used as given. Set it on every laptop
    # of a team's shared Redis: identical paths on two machines would otherwise share keys.
    key_namespace: str = ""
    # Seconds between reconnection attempts while Redis is unreachable (doubles up to 30 s).
    reconnect_backoff_seconds: float = Field(1.0, gt=0)

    @field_validator("key_namespace", mode="after")
    @classmethod
    def _namespace(cls, value: str) -> str:
        value = value.strip()
        if value != MACHINE_NAMESPACE:
            check_namespace(value)  # InvalidNamespace is a ValueError: a validation error
        return value


class FastPathConfig(_Section):
    enabled: bool = True
    group: str = FAST_PATH_GROUP
    consumer: str = "fast-path-1"
    # Entries read, stored (one transaction) and acknowledged (one XACK) at a time.
    batch_size: int = Field(2000, ge=1)
    # One blocking read's wait while caught up: an entry ends it at once and a stop does not
    # wait for it, so it sets only the idle round-trips. At most 9 s: a longer block would run
    # into the Redis client's 10 s socket timeout and read as Redis being away.
    block_ms: int = Field(5000, ge=1, le=MAX_BLOCK_MS)
    # Entries kept on the stream once acknowledged; never trims an entry some consumer group
    # has not acknowledged or the session monitor has not read. Applies with enabled: false too.
    max_stream_length: int = Field(100_000, ge=100)
    trim_interval_seconds: float = Field(10.0, gt=0)
    dead_letter_stream: str = DEAD_LETTER_STREAM
    # Cap of the dead-letter stream (approximate MAXLEN: the oldest dead letters go first).
    dead_letter_max_length: int = Field(10_000, ge=1)
    # A store that cannot be written: retry the batch (kept pending) after this, doubling...
    store_retry_initial_seconds: float = Field(1.0, gt=0)
    # ...up to this.
    store_retry_max_seconds: float = Field(30.0, gt=0)
    # Entries redelivered more often than this go to the dead-letter stream.
    max_deliveries: int = Field(5, ge=1)
    claim_idle_ms: int = Field(60_000, ge=1000)


class StoreConfig(_Section):
    # sqlite:///path/telemetry.db (default: BLUEPLANE_HOME/telemetry.db) or
    # postgresql://user:pass@host:5432/db (a team's central store). Also BLUEPLANE_STORE_URL.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in STORE_SCHEMES:
            raise ValueError(
                f"unknown store URL scheme {scheme or '(none)'!r}: use sqlite:///path or "
                "postgresql://user@host:5432/db"
            )
        if scheme == "sqlite" and not value[len("sqlite://") :].strip("/"):
            raise ValueError("sqlite URL without a path: use sqlite:///path/to/telemetry.db")
        return value


class IdentityConfig(_Section):
    # Events carry metadata.user (the login name) and metadata.machine_id; true sends the
    # user name's SHA-256 prefix instead of the name.
    hash_user_name: bool = False


class SessionMonitorConfig(_Section):
    # How often the session-file fallback folder is rescanned.
    session_file_poll_seconds: float = Field(10.0, gt=0)
    # A session whose workspace showed no activity (session start, database change, hook
    # event) for this long expires: a crashed window is not polled for ever. 0 disables.
    session_idle_expiry_hours: float = Field(12.0, ge=0)
    # Learn sessions from the stream's session events. False: from session files only, for a
    # laptop publishing to a team's shared Redis (whose stream is mostly other machines'
    # traces, which every producer would otherwise scan).
    read_stream: bool = True


class OtlpConfig(_Section):
    """OTLP export of assistant turns as OpenTelemetry GenAI spans (and token metrics)."""

    # None: on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    enabled: bool | None = None
    # Base URL of the collector (http://host:4318): /v1/traces and /v1/metrics are appended.
    # None: the standard OTEL_EXPORTER_OTLP_* variables (else http://localhost:4318).
    endpoint: str | None = None
    # Extra request headers (e.g. an API key). Empty: OTEL_EXPORTER_OTLP_HEADERS.
    headers: dict[str, str] = Field(default_factory=dict)
    # Prompt and answer text as gen_ai.input.messages / gen_ai.output.messages.
    capture_content: bool = False
    group: str = OTLP_GROUP
    consumer: str = "otlp-1"
    batch_size: int = Field(500, ge=1)
    block_ms: int = Field(1000, ge=1, le=MAX_BLOCK_MS)
    # A turn is sent once no event of it (database message, hook event) came for this long.
    settle_seconds: float = Field(10.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    # A collector that does not answer 2xx: retry after this, doubling up to the max.
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    metrics: bool = True

    def active(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )


class FeatureFlagsConfig(_Section):
    """The migration from the TypeScript monitor (rules in ``blueplane.rollout``)."""

    # The master switch: false publishes nothing for any workspace (each is still tracked).
    python_db_monitor_enabled: bool = True
    # Share of workspaces (by a stable hash bucket) whose databases the Python monitor publishes.
    python_db_monitor_rollout_percent: int = Field(100, ge=0, le=100)
    # Workspace hashes or folder paths always in / always out of the rollout; exclude wins.
    # From the environment: a JSON list, or entries separated by commas.
    python_db_monitor_include: Annotated[list[str], NoDecode] = Field(default_factory=list)
    python_db_monitor_exclude: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("python_db_monitor_include", "python_db_monitor_exclude", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list: {exc.msg}") from exc
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


class HooksConfig(_Section):
    # Text of hook events and transcripts (prompts, answers, tool input/output). None: follow
    # cursor_database_monitor.capture_content. False keeps lengths and sha256 hashes only.
    capture_content: bool | None = None
    # Secrets (API keys, tokens, private keys, .env assignments) become [REDACTED] in captured
    # hook and transcript text before it leaves the process.
    redact_secrets: bool = True
    # Follow Cursor's agent transcripts (~/.cursor/projects/*/agent-transcripts).
    transcripts: bool = True
    # Where Cursor keeps them (default ~/.cursor/projects).
    transcripts_dir: Path | None = None
    # How often the spool of hook events that could not be sent is checked for replay.
    spool_replay_seconds: float = Field(2.0, gt=0)


def _default_home() -> Path:
    return Path("~/.blueplane").expanduser()


def _split_dirs(value: Any) -> Any:
    if isinstance(value, str):
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BLUEPLANE_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=_default_home)
    cursor_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    # ``blueplane run`` yields to Cursor: nice 10 and the lowest best-effort I/O level for the
    # whole process (see blueplane.priority). False: normal priority.
    background_priority: bool = True
    redis: RedisConfig = Field(default_factory=RedisConfig)
    cursor_database_monitor: CursorDatabaseMonitorConfig = Field(
        default_factory=CursorDatabaseMonitorConfig
    )
    session_monitor: SessionMonitorConfig = Field(default_factory=SessionMonitorConfig)
    fast_path: FastPathConfig = Field(default_factory=FastPathConfig)
    otlp: OtlpConfig = Field(default_factory=OtlpConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    feature_flags: FeatureFlagsConfig = Field(default_factory=FeatureFlagsConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)

    _config_file: Path | None = None

    @field_validator("cursor_dirs", mode="before")
    @classmethod
    def _dirs(cls, value: Any) -> Any:
        return _split_dirs(value)

    @field_validator("home", mode="after")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides keyword overrides, which override the file.
        return (env_settings, init_settings, _YamlFile(settings_cls, _yaml_file.get()))

    # ----------------------------------------------------------------- derived paths
    def keys(self) -> Keys:
        """This install's key names: ``redis.key_namespace`` resolved (``machine`` → machine_id)."""
        ns = self.redis.key_namespace
        return Keys(machine_id(self.home) if ns == MACHINE_NAMESPACE else ns)

    @property
    def redis_url_explicit(self) -> bool:
        return self.redis.url is not None

    @property
    def redis_url(self) -> str:
        return self.redis.url or DEFAULT_REDIS_URL

    @property
    def store_url(self) -> str:
        """The store's URL: ``store.url``, else the SQLite file under the home."""
        return self.store.url or f"sqlite://{self.home / 'telemetry.db'}"

    @property
    def store_path(self) -> Path:
        """The SQLite store's file (the default store; see ``store_url``)."""
        url = self.store_url
        if url.lower().startswith("sqlite://"):
            return Path(url[len("sqlite://") :]).expanduser()
        return self.home / "telemetry.db"

    @property
    def session_dir(self) -> Path:
        return self.home / "cursor-session"

    @property
    def status_path(self) -> Path:
        return self.home / "status.json"

    @property
    def workspace_cache_path(self) -> Path:
        return self.home / "workspace_db_cache.json"

    @property
    def otlp_state_path(self) -> Path:
        return self.home / "otlp_exported.db"

    @property
    def bundled_redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def hooks_capture_content(self) -> bool:
        c = self.hooks.capture_content
        return self.cursor_database_monitor.capture_content if c is None else c

    @property
    def transcripts_dir(self) -> Path:
        return (self.hooks.transcripts_dir or Path("~/.cursor/projects")).expanduser()

    @property
    def config_file(self) -> Path | None:
        return self._config_file


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    given = err.get("input")
    if isinstance(given, str):
        given = mask_url(given)
    given_text = "" if isinstance(given, dict) else f" (got {given!r})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: key '{key}': {err['msg']}{given_text}{more}"


class _YamlFile(YamlConfigSettingsSource):
    """The library's YAML source; a file it cannot use becomes one ConfigError line."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        if path is not None and not path.is_file():
            # The library skips a missing file silently; a named one must exist.
            cause = "not a file" if path.exists() else "no such file"
            raise ConfigError(f"config file {path}: cannot be read: {cause}")
        super().__init__(settings_cls, yaml_file=path, yaml_file_encoding="utf-8")

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except OSError as exc:
            raise ConfigError(f"config file {file_path}: cannot be read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {file_path}: not valid YAML{where}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path}: top level must be a mapping of keys")
        return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings; raise ConfigError (one line naming the key) when they are unusable."""
    env_file = os.environ.get("BLUEPLANE_CONFIG")
    path = config_file or (Path(env_file) if env_file else None)
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = dict(overrides)
    redis_env = os.environ.get("BLUEPLANE_REDIS_URL")
    if redis_env:
        # Deep-merged over the file's ``redis`` section by pydantic-settings.
        section = data.get("redis")
        data["redis"] = {**(section if isinstance(section, dict) else {}), "url": redis_env}
    store_env = os.environ.get("BLUEPLANE_STORE_URL")
    if store_env:
        section = data.get("store")
        data["store"] = {**(section if isinstance(section, dict) else {}), "url": store_env}
    source = f"config file {path}" if path else "configuration"
    token = _yaml_file.set(path)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    except SettingsError as exc:  # an environment variable that cannot be decoded
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"environment: {exc}{cause}") from exc
    finally:
        _yaml_file.reset(token)
    settings._config_file = path
    return settings
