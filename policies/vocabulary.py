"""What the gateway asks Cedar about: the actions (`gateway.pipeline.Action`, one
vocabulary for Cedar, the scope table and the routes), the resource each one is
about, and the Cedar namespace. The default bundle reproduces the scope table exactly.

Audit records belong to the tenant of the caller whose request they record. An audit
request reads its caller's own tenant's records (a caller without a tenant: the
records of no tenant, the gateway operator's own). Stage 2 also asks whether it may
read every tenant's records: the same action on the `AuditLog` with the attribute
`all_tenants = true`. What the bundle answers is the request's `AuditReach`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.pipeline import ACTION_SCOPES, Action

__all__ = [
    "ACTION_SCOPES",
    "ALL_TENANTS",
    "AUDIT_RECORD_ACTIONS",
    "NAMESPACE",
    "RESOURCE_IDS",
    "RESOURCE_OF",
    "Action",
    "AuditReach",
]

NAMESPACE = "Gateway"

# What each action is about: the served model, the audit log, the tenant's subjects.
RESOURCE_OF: Mapping[str, str] = MappingProxyType(
    {
        Action.RANK: "Model",
        Action.INFER: "Model",
        Action.INFER_RAW: "Model",
        Action.MODEL_READ: "Model",
        Action.EVENTS: "Model",
        Action.AUDIT_READ: "AuditLog",
        Action.AUDIT_EXPORT: "AuditLog",
        Action.ADMIN: "AuditLog",
        Action.CONSENT_WRITE: "Subject",
        Action.CONSENT_READ: "Subject",
        Action.SUBJECT_READ: "Subject",
        Action.SUBJECT_ERASE: "Subject",
    }
)
# Subject actions are decided per tenant, not per subject id (the id is personal data).
RESOURCE_IDS: Mapping[str, str] = MappingProxyType({"AuditLog": "log", "Subject": "subjects"})

# The actions that reveal audit records (checkpoints and consistency proofs carry none,
# but share audit.read: the routes apply the reach to records only).
AUDIT_RECORD_ACTIONS = frozenset({Action.AUDIT_READ, Action.AUDIT_EXPORT})
# The AuditLog attribute of stage 2's second question: "records of every tenant".
ALL_TENANTS = "all_tenants"


@dataclass(frozen=True, slots=True)
class AuditReach:
    """Whose audit records one request may see, as stage 2 decided it.

    `tenant` is the caller's own (None: the records of no tenant, the operator's);
    `all_tenants` is the bundle's answer to reading every tenant's records.
    """

    tenant: str | None
    all_tenants: bool = False

    def sees(self, record_tenant: str | None) -> bool:
        """Whether a record of `record_tenant` is within reach (a record without the
        field predates tenants in records and counts as the operator's)."""
        return self.all_tenants or record_tenant == self.tenant
