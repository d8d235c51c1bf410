"""Tamper-evident audit log: an RFC 6962 Merkle tree of one record per request and per
change of running state, C2SP signed checkpoints, export bundles an auditor verifies
offline, and per-subject keys whose destruction erases a subject (crypto-shredding).

The names below are the package's interface to the other concern packages.
"""

from audit.appender import AppendFailed
from audit.export import subject_pseudonym
from audit.log import AuditLog
from audit.record import KIND_CONSENT, RecordError, parse
from audit.store import StoreError
from audit.subjects import SubjectKeyError

__all__ = [
    "KIND_CONSENT",
    "AppendFailed",
    "AuditLog",
    "RecordError",
    "StoreError",
    "SubjectKeyError",
    "parse",
    "subject_pseudonym",
]
