"""Stores on one data directory opened at the same moment by several processes (two
gateways, or workers) all start: switching a new file to WAL is retried, not failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPEN_ALL = """
import sys
from pathlib import Path
from gateway.derivation import DerivedKeys
from models.experiments.store import SqliteEventStore
from privacy.consent_store import SqliteConsentStore
from audit.sqlite_store import SqliteAuditStore
root = Path(sys.argv[1])
sys.stdin.readline()  # every process waits here, then all open at once
stores = [
    SqliteEventStore(root / "events.db"),
    SqliteConsentStore(root / "consent.db", DerivedKeys(b"k" * 32)),
    SqliteAuditStore(root / "audit.db"),
]
for store in stores:
    store.close()
print("ok")
"""


@pytest.mark.parametrize("round_", range(3))
def test_several_processes_create_the_same_stores_at_once(tmp_path: Path, round_: int) -> None:
    root = tmp_path / f"data-{round_}"
    root.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_ALL, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(6)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [out.strip() for out, _ in results] == ["ok"] * 6, [err for _, err in results]
