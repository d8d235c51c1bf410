"""The outcome-event store on PostgreSQL (`experiments.postgres_dsn`): several gateways
behind a load balancer share one schema. Every call is bounded and the connection comes
back by itself after an outage, as the consent store's (gateway.pg_session).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gateway.pg_session import BoundedPostgres, Connection
from models.experiments.store import EventStore, EventStoreError

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcome_events (
    request_id TEXT NOT NULL, item_id TEXT NOT NULL, kind TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    tenant TEXT, subject TEXT NOT NULL, owner BYTEA NOT NULL, ts_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, item_id, kind));
CREATE INDEX IF NOT EXISTS outcome_events_owner ON outcome_events (owner);
CREATE INDEX IF NOT EXISTS outcome_events_model ON outcome_events (model, ts_ms);
CREATE TABLE IF NOT EXISTS arm_health (
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    served BIGINT NOT NULL, errors BIGINT NOT NULL, flagged BIGINT NOT NULL,
    latency TEXT NOT NULL, PRIMARY KEY (model, version, variant));
CREATE TABLE IF NOT EXISTS arm_health_cursor (model TEXT PRIMARY KEY, next_index BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS arm_stops (
    model TEXT NOT NULL, version TEXT NOT NULL, variant TEXT NOT NULL,
    reason TEXT NOT NULL, ts_ms BIGINT NOT NULL, PRIMARY KEY (model, version));
"""
# Any constant of the schema creators' advisory lock, distinct from the consent store's.
_SCHEMA_LOCK = 7261737


class PostgresEventStore(EventStore):
    kind = "postgres"

    def __init__(self, dsn: str, schema: str, *, timeout_s: float = 2.0) -> None:
        def create(conn: Connection) -> None:
            conn.execute(_PG_SCHEMA.encode())  # in the schema: the search path is set

        self._db = BoundedPostgres(
            dsn,
            schema,
            timeout_s=timeout_s,
            label="event store",
            error=EventStoreError,
            create=create,
            schema_lock=_SCHEMA_LOCK,
        )

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.query(statement, params)

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[int]:
        return self._db.write(statements)

    def close(self) -> None:
        self._db.close()
