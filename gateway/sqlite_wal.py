"""Switching a SQLite database to WAL, when other processes may open it at the same time.

Switching a brand-new file to WAL needs an exclusive lock and does not wait on the busy
timeout: two processes creating the same database at once (two gateways, or workers, on
one data directory) must retry, or one of them fails to start with "database is locked".
"""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, *, attempts: int = 50, pause_s: float = 0.05) -> None:
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
