"""Several processes, one log: concurrent appenders get one sequence, no gaps, no forks.

Each worker is a real OS process (multiprocessing, "spawn": nothing shared but
the database) that opens its own store, waits at a barrier so that all of them
append at once, and appends its records in random batch sizes. Two workers also
sign checkpoints while the others append.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import queue
import random
import time
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from audit.checkpoint import NoteSigner, verify_checkpoint
from audit.log import AuditLog, CheckpointRefused
from audit.merkle import consistency_proof, leaf_hash, verify_consistency
from audit.postgres_store import PostgresAuditStore
from audit.sqlite_store import SqliteAuditStore
from audit.store import AuditStore, PendingRecord, StoreError
from audit.subjects import SubjectKeys
from audit.verify import verify_store
from tests.audit.conftest import Backend, make_backend

PER_WORKER = 200
SPAWN = multiprocessing.get_context("spawn")


def _open(location: tuple[str, ...]) -> AuditStore:
    if location[0] == "sqlite":
        return SqliteAuditStore(Path(location[1]))
    return PostgresAuditStore(location[1], schema=location[2])


def _record(worker: int, n: int) -> PendingRecord:
    payload = b'{"n":%d,"v":1,"worker":%d}' % (n, worker)
    return PendingRecord(payload, leaf_hash(payload), f"w{worker}-{n}", n)


def _publish(store: AuditStore, signer_key: str) -> int:
    audit_log = AuditLog(
        store,
        signer=NoteSigner.from_signer_key(signer_key),
        subject_keys=SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32)),
    )
    try:
        # Another process may sign the same size first, or a larger one between our
        # reads of the head and of the last checkpoint: read again and retry.
        for _ in range(50):
            try:
                return audit_log.publish_checkpoint().size
            except (StoreError, CheckpointRefused):
                time.sleep(0.01)
        raise AssertionError("no checkpoint published in 50 tries")
    finally:
        asyncio.run(audit_log.close())


def append_worker(
    location: tuple[str, ...],
    worker: int,
    barrier: Barrier,
    signer_key: str | None,
    results: Any,
) -> None:
    """Runs in a child process: append PER_WORKER records, maybe sign a checkpoint midway."""
    barrier.wait(timeout=20)  # every worker opens its store at once: concurrent schema setup
    store = _open(location)
    try:
        barrier.wait(timeout=20)  # and then all append at once
        rng = random.Random(worker)  # noqa: S311 - batch sizes and pacing, reproducible
        n = 0
        while n < PER_WORKER:
            # A short pause between batches, as between requests: SQLite's lock is not
            # fair, and a process that never pauses would append all its records first.
            time.sleep(rng.random() * 0.004)
            size = min(rng.randint(1, 25), PER_WORKER - n)
            first = store.append_batch([_record(worker, n + i) for i in range(size)])
            results.put(("batch", worker, n, first, size))
            n += size
            if signer_key is not None and n >= PER_WORKER // (2 + worker):
                results.put(("checkpoint", worker, _publish(store, signer_key)))
                signer_key = None
    finally:
        store.close()


def run_workers(
    location: tuple[str, ...], workers: int, signer: NoteSigner | None
) -> list[tuple[Any, ...]]:
    barrier = SPAWN.Barrier(workers)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=append_worker,
            args=(
                location,
                worker,
                barrier,
                signer.signer_key() if signer is not None and worker < 2 else None,
                results,
            ),
        )
        for worker in range(workers)
    ]
    for proc in procs:
        proc.start()
    messages: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 30
    while any(proc.is_alive() for proc in procs) or not results.empty():
        try:
            messages.append(results.get(timeout=0.1))
        except queue.Empty:
            if time.monotonic() > deadline:
                break
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    results.close()
    results.join_thread()
    assert [proc.exitcode for proc in procs] == [0] * workers
    return messages


def check_one_sequence(store: AuditStore, workers: int, messages: list[tuple[Any, ...]]) -> None:
    total = workers * PER_WORKER
    assert store.size() == total
    leaves = list(store.iter_leaves())
    assert [leaf.index for leaf in leaves] == list(range(total))
    seen = Counter(leaf.request_id for leaf in leaves)
    assert seen == Counter(f"w{w}-{n}" for w in range(workers) for n in range(PER_WORKER))
    # Each batch landed where its append said, contiguous, in the worker's order.
    batches = [m for m in messages if m[0] == "batch"]
    assert sum(m[4] for m in batches) == total
    for _, worker, n, first, size in batches:
        for i in range(size):
            assert leaves[first + i].request_id == f"w{worker}-{n + i}"
    # The workers really did append at the same time (else this proves little).
    owners = [m[1] for m in sorted(batches, key=lambda m: m[3])]
    switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
    assert switches >= workers


def test_postgres_processes_append_one_sequence(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg: Backend = make_backend("postgres", tmp_path, request)
    signer = NoteSigner.generate("test.example/concurrent")
    messages = run_workers(pg.location, 4, signer)
    store = pg.open_store()
    try:
        check_one_sequence(store, 4, messages)
        published = {m[1]: m[2] for m in messages if m[0] == "checkpoint"}
        assert sorted(published) == [0, 1]
        report = verify_store(store, signer.verifier())
        assert report.size == 4 * PER_WORKER
        assert report.checkpoints >= 2
        # The two processes' checkpoints describe one log: the later extends the earlier.
        by_size = {cp.size: cp for cp in store.checkpoints()}
        old, new = sorted((by_size[size] for size in published.values()), key=lambda cp: cp.size)
        for cp in (old, new):
            verify_checkpoint(cp.note, signer.verifier(), origin=signer.name)
        if old.size < new.size:
            proof = consistency_proof(old.size, new.size, store.node)
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        else:
            assert old.root == new.root
    finally:
        store.close()


def test_sqlite_processes_append_one_sequence(tmp_path: Path) -> None:
    location = ("sqlite", str(tmp_path / "shared.sqlite3"))
    # Created (and switched to WAL) first: two processes creating a fresh file at the
    # same instant fail in PRAGMA journal_mode=WAL, which ignores the busy timeout.
    _open(location).close()
    messages = run_workers(location, 2, None)
    store = _open(location)
    try:
        check_one_sequence(store, 2, messages)
        assert verify_store(store, NoteSigner.generate("unused").verifier()).size == 400
    finally:
        store.close()
