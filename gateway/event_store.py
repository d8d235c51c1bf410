"""Builds the outcome-event store from the settings (the gateway and the CLI)."""

from __future__ import annotations

from gateway.errors import ConfigurationError
from gateway.settings import Settings
from models.experiments import EventStore, EventStoreError, SqliteEventStore


def open_event_store(settings: Settings) -> EventStore:
    cfg = settings.experiments
    try:
        if cfg.postgres_dsn is not None:
            from models.experiments.postgres_store import PostgresEventStore

            return PostgresEventStore(
                cfg.postgres_dsn.get_secret_value(),
                cfg.postgres_schema,
                timeout_s=settings.limits.store_timeout_s,
            )
        return SqliteEventStore(settings.resolve(cfg.sqlite_path))
    except EventStoreError as exc:
        raise ConfigurationError(f"event store: {exc}") from exc
