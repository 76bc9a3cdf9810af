"""One frozen settings object, filled from arguments, then environment, then defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

ENV_PREFIX = "FUTURECALLS_"
# The NOTIFY channel is "future_calls.<schema>", and a channel name has at most 63 bytes.
MAX_SCHEMA_BYTES = 50


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime settings of a :class:`~fastapi_futurecalls.FutureCalls`.

    Each field can be set by an environment variable ``FUTURECALLS_<FIELD>`` (upper case);
    the DSN also falls back to ``DATABASE_URL``. Durations are in seconds.
    """

    dsn: str | None = None
    concurrency_limit: int = 10
    execution_enabled: bool = True
    poll_interval: float = 10.0
    shutdown_grace: float = 20.0
    liveness_grace: float = 20.0
    unknown_name_grace: float = 600.0
    retention: float = 14 * 86400.0
    statement_timeout: float = 10.0
    connect_timeout: float = 10.0
    pool_size: int = 10
    statement_cache_size: int = 100
    max_payload_bytes: int = 1_048_576
    schema: str | None = None
    lock_namespace: int | None = None
    tracing: bool = True  # OpenTelemetry spans, when opentelemetry-api is installed

    def __post_init__(self) -> None:
        _require(self.concurrency_limit >= 1, "concurrency_limit must be at least 1")
        _require(self.pool_size >= 1, "pool_size must be at least 1")
        _require(self.statement_cache_size >= 0, "statement_cache_size must not be negative")
        _require(self.poll_interval > 0, "poll_interval must be positive")
        _require(self.shutdown_grace >= 0, "shutdown_grace must not be negative")
        _require(self.liveness_grace >= 0, "liveness_grace must not be negative")
        _require(self.unknown_name_grace >= 0, "unknown_name_grace must not be negative")
        _require(
            self.retention >= 0 and self.retention == self.retention,
            "retention must be a number of seconds >= 0 (0 keeps parked calls forever)",
        )
        _require(self.statement_timeout > 0, "statement_timeout must be positive")
        _require(self.connect_timeout > 0, "connect_timeout must be positive")
        _require(self.max_payload_bytes >= 1, "max_payload_bytes must be at least 1")
        _require(
            self.lock_namespace is None or 0 <= self.lock_namespace < 0x7FFFFFFF,
            "lock_namespace must be from 0 to 2**31 - 2",
        )
        if self.schema is not None:
            _require(
                isinstance(self.schema, str)
                and 1 <= len(self.schema.encode()) <= MAX_SCHEMA_BYTES
                and "\x00" not in self.schema,
                f"schema must be a name of 1 to {MAX_SCHEMA_BYTES} bytes without NUL "
                f"characters, got {self.schema!r}",
            )
            _require(
                not self.schema.startswith("pg_"),
                f"schema {self.schema!r}: names starting with pg_ are reserved by PostgreSQL",
            )

    def __repr__(self) -> str:
        """The dataclass repr with the DSN's password masked (user, hosts, database and
        options stay visible): settings end up in logs and tracebacks."""
        from urllib.parse import urlsplit, urlunsplit

        dsn = self.dsn
        if dsn is not None:
            try:
                parts = urlsplit(dsn)
                if not parts.netloc:
                    raise ValueError("not a URL: nothing to tell the password from")
                userinfo, at, hosts = parts.netloc.rpartition("@")
                if at and ":" in userinfo:
                    parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hosts}")
                query = "&".join(
                    "password=***" if option.startswith("password=") else option
                    for option in parts.query.split("&")
                )
                dsn = urlunsplit(parts._replace(query=query))
            except ValueError:
                dsn = "***"
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        values["dsn"] = dsn
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Explicit ``overrides`` (None values ignored) win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None and field.name == "dsn":
                raw = env.get("DATABASE_URL")
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, field.type, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)


def _parse(name: str, type_name: object, raw: str) -> Any:
    type_name = str(type_name).removesuffix(" | None")
    try:
        if type_name == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw, 0)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type_name}"
        ) from None
    return raw


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)
