"""What the gateway asks Cedar about: the actions (`gateway.pipeline.Action`, one
vocabulary for Cedar, the scope table and the routes), the resource each one is
about, and the Cedar namespace. The default bundle reproduces the scope table exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.pipeline import ACTION_SCOPES, Action

__all__ = ["ACTION_SCOPES", "NAMESPACE", "RESOURCE_IDS", "RESOURCE_OF", "Action"]

NAMESPACE = "Gateway"

# What each action is about: the served model, the audit log, the tenant's subjects.
RESOURCE_OF: Mapping[str, str] = MappingProxyType(
    {
        Action.RANK: "Model",
        Action.INFER: "Model",
        Action.MODEL_READ: "Model",
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
