"""The actions the gateway asks Cedar about, and the scope each one needed before Cedar.

The default bundle reproduces this table exactly; ``diff`` and tests use it to build
requests. Keeping it here (not in the gateway) lets the bundle tooling run alone.
"""

from __future__ import annotations

from types import MappingProxyType

ACTION_SCOPES = MappingProxyType(
    {
        "rank": "rank",
        "infer": "infer",
        "model.read": "infer",
        "audit.read": "audit:read",
        "audit.export": "audit:export",
        "consent.write": "consent:write",
        "consent.read": "consent:read",
        "subject.read": "subject:read",
        "subject.erase": "subject:erase",
        "admin": "admin",
    }
)

ACTIONS: tuple[str, ...] = tuple(ACTION_SCOPES)
RESOURCE_TYPES: tuple[str, ...] = ("Model", "AuditLog", "Subject")
NAMESPACE = "Gateway"
