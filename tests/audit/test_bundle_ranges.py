"""Compact ranges against independent oracles: pymerkle, and RFC 6962 written out here.

`audit.merkle.range_nodes` / `compact_range` / `Frontier.append_subtree` are what a
bundle's completeness proof rests on: the hashes left of a range, its leaves and
the hashes right of it must rebuild the tree's root for every split. The roots
are checked against pymerkle (a separate RFC 6962 implementation, test-only), the
subtree hashes against the RFC's own recursion as written below (not the one in
`audit.merkle`), and a real bundle's range.json against both.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from audit.bundle import verify_bundle
from audit.checkpoint import NoteSigner
from audit.export import ExportFilter, write_bundle
from audit.log import AuditLog
from audit.merkle import Frontier, MemoryTree, compact_range, range_nodes
from audit.record import event_record
from audit.sqlite_store import SqliteAuditStore
from audit.subjects import SubjectKeys

pymerkle = pytest.importorskip(
    "pymerkle",
    reason="pymerkle (test-only RFC 6962 oracle) not installed: range cross-check NOT RUN",
)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, MTH over leaf hashes, straight from the text."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _oracle(entries: list[bytes]) -> Any:
    tree = pymerkle.InmemoryTree(algorithm="sha256")  # RFC 6962 prefixes (security on)
    for entry in entries:
        tree.append_entry(entry)
    return tree


def _rebuild(
    left: list[bytes], start: int, middle: list[bytes], end: int, size: int, right: list[bytes]
) -> bytes:
    tree = Frontier(start, left)
    tree.extend(middle)
    for (level, _), subtree in zip(range_nodes(end, size), right, strict=True):
        tree.append_subtree(level, subtree)
    assert tree.size == size
    return tree.root()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 7, 8, 9, 16, 31, 33])
def test_every_split_rebuilds_pymerkles_root(size: int) -> None:
    entries = [os.urandom(12) for _ in range(size)]
    oracle = _oracle(entries)
    theirs = oracle.get_root(size) if size else hashlib.sha256(b"").digest()
    mine = MemoryTree()
    for entry in entries:
        mine.append(entry)
    leaves = [mine.get(0, i) for i in range(size)]
    assert _mth(leaves) == theirs
    for start in range(size + 1):
        for end in range(start, size + 1):
            left, right = compact_range(0, start, mine.get), compact_range(end, size, mine.get)
            assert _rebuild(left, start, leaves[start:end], end, size, right) == theirs, (
                start,
                end,
            )


@pytest.mark.parametrize(
    ("start", "end"), [(0, 0), (0, 1), (3, 3), (5, 29), (6, 64), (1, 100), (64, 200)]
)
def test_compact_ranges_tile_the_range_with_perfect_subtrees(start: int, end: int) -> None:
    entries = [os.urandom(8) for _ in range(end)]
    mine = MemoryTree()
    for entry in entries:
        mine.append(entry)
    leaves = [mine.get(0, i) for i in range(end)]
    at = start
    nodes = range_nodes(start, end)
    for (level, index), value in zip(nodes, compact_range(start, end, mine.get), strict=True):
        first, width = index << level, 1 << level
        assert first == at  # left to right, no gap, no overlap
        assert first % width == 0  # a node of the tree, not just any slice
        assert value == _mth(leaves[first : first + width])
        at += width
    assert at == end
    assert len(nodes) <= 2 * max(1, (end - start).bit_length())  # O(log n) hashes


def test_append_subtree_refuses_a_misaligned_subtree() -> None:
    tree = Frontier()
    tree.extend([hashlib.sha256(b"x").digest()] * 3)
    with pytest.raises(ValueError, match="cannot start at 3"):
        tree.append_subtree(1, hashlib.sha256(b"y").digest())


def test_extend_is_append_without_the_report_and_refuses_a_short_hash() -> None:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(37)]
    one_by_one, at_once = Frontier(), Frontier()
    for leaf in leaves:
        one_by_one.append(leaf)
    at_once.extend(leaves)
    assert at_once == one_by_one
    with pytest.raises(ValueError, match="31 bytes"):
        at_once.extend([leaves[0], b"\x00" * 31])
    one_by_one.append(leaves[0])
    assert at_once == one_by_one  # the good leaf before the bad one stays appended


def test_a_real_bundles_compact_ranges_agree_with_pymerkle(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    clock = [1_800_000_000.0]
    audit_log = AuditLog(
        store,
        signer=NoteSigner.generate("ranges.test/audit"),
        subject_keys=SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32)),
        clock=lambda: clock[0],
    )
    payloads = []

    async def fill() -> None:
        for i in range(77):
            clock[0] = 1_800_000_000.0 + i
            record = event_record("policy-reload", int(clock[0] * 1000), n=i)
            await audit_log.append(record)
        await audit_log.close()

    asyncio.run(fill())
    for i in range(77):
        payload = store.leaf(i).payload
        assert payload is not None
        payloads.append(payload)
    oracle = _oracle(payloads)
    path = tmp_path / "b.zip"
    write_bundle(audit_log, ExportFilter(1_800_000_021_000, 1_800_000_050_000), path)
    verify_bundle(path, pubkey=audit_log.verifier.verifier_key())
    with zipfile.ZipFile(path) as archive:
        span = json.loads(archive.read("range.json"))
        rows = [json.loads(line) for line in archive.read("records.jsonl").splitlines()]
        note = archive.read("checkpoint.note").decode()
    assert (span["start"], span["end"], span["size"]) == (21, 50, 77)
    leaves = [hashlib.sha256(b"\x00" + p).digest() for p in payloads]
    left = [base64.b64decode(h) for h in span["left"]]
    right = [base64.b64decode(h) for h in span["right"]]
    # Each carried hash is the RFC's hash of the slice of the log it claims to stand for.
    for (level, index), value in zip(
        range_nodes(0, 21) + range_nodes(50, 77), left + right, strict=True
    ):
        assert value == _mth(leaves[index << level : (index + 1) << level])
    middle = [base64.b64decode(r["leaf_hash"]) for r in rows]
    assert [r["index"] for r in rows] == list(range(21, 50))
    root = _rebuild(left, 21, middle, 50, 77, right)
    assert root == oracle.get_root(77)
    assert base64.b64encode(root).decode() in note  # the signed root, as pymerkle computes it
    store.close()
