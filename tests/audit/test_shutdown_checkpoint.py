"""The gateway signs a checkpoint over its last records when it shuts down, and its
checkpoint task never calls the store on the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from audit.sqlite_store import SqliteAuditStore
from gateway.app import create_app
from gateway.settings import Settings

JSON = {"Content-Type": "application/json"}


def test_shutdown_signs_the_last_records(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    path = tmp_path / "audit.db"
    # A publisher interval far longer than the test: only the shutdown can sign.
    settings = make_settings(audit={"sqlite_path": str(path), "checkpoint_interval_s": 3600})
    with TestClient(create_app(settings)) as client:
        for n in range(3):
            body = {"user_id": f"u{n}", "item_ids": ["i1", "i2"]}
            assert client.post("/v1/rank", json=body, headers={**auth(), **JSON}).status_code == 200
    store = SqliteAuditStore(path)
    try:
        latest = store.latest_checkpoint()
        assert latest is not None
        assert latest.size == store.size() >= 3
    finally:
        store.close()


def test_the_checkpoint_task_reads_the_store_off_the_event_loop(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    settings = make_settings(
        audit={"sqlite_path": str(tmp_path / "audit.db"), "checkpoint_interval_s": 0.05}
    )
    with TestClient(create_app(settings)) as client:
        store = client.app.state.components.audit.store  # type: ignore[attr-defined]
        loop_threads: set[int] = set()
        calls: list[int] = []
        real = store.latest_checkpoint

        def watched(*args: Any, **kwargs: Any) -> Any:
            calls.append(threading.get_ident())
            return real(*args, **kwargs)

        store.latest_checkpoint = watched
        loop_threads.add(client.portal.call(threading.get_ident))  # type: ignore[union-attr]
        body = {"user_id": "u1", "item_ids": ["i1"]}
        assert client.post("/v1/rank", json=body, headers={**auth(), **JSON}).status_code == 200
        for _ in range(100):
            if calls:
                break
            client.portal.call(_sleep)  # type: ignore[union-attr]
        assert calls, "the checkpoint task never ran"
        assert not loop_threads & set(calls)


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.02)
