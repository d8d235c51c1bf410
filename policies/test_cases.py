"""The bundle's own test cases (``tests/*.yaml``): a request and the expected decision.

Each file holds ``cases: [...]``. A case names its request the way the gateway builds
one, and expects ``allow`` or ``deny`` and, optionally, exactly which policies decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.cedar_engine import AuthzRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseResource(_Strict):
    type: Literal["Model", "AuditLog", "Subject"]
    id: str = Field(min_length=1)
    attrs: dict[str, str | int | bool | list[str]] = Field(default_factory=dict)


class CaseRequest(_Strict):
    client_id: str = Field(min_length=1)
    scopes: tuple[str, ...] = ()
    tenant: str | None = None
    subject: str | None = None
    action: str = Field(min_length=1)
    resource: CaseResource


class CaseExpectation(_Strict):
    decision: Literal["allow", "deny"]
    policies: tuple[str, ...] | None = None


class PolicyCase(_Strict):
    name: str = Field(min_length=1)
    request: CaseRequest
    expect: CaseExpectation

    def authz_request(self) -> AuthzRequest:
        r = self.request
        return AuthzRequest(
            client_id=r.client_id,
            scopes=frozenset(r.scopes),
            tenant=r.tenant,
            subject=r.subject,
            action=r.action,
            resource_type=r.resource.type,
            resource_id=r.resource.id,
            resource_attrs={
                k: frozenset(v) if isinstance(v, list) else v for k, v in r.resource.attrs.items()
            },
        )


class CaseFile(_Strict):
    cases: tuple[PolicyCase, ...] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LoadedCase:
    """A case plus where it was written, so failures point at the file and line."""

    case: PolicyCase
    file: str
    line: int | None
