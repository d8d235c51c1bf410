"""The bundle's own test cases (``tests/*.yaml``): a request and the expected decision.

Each file holds ``cases: [...]``. A case names its request the way the gateway builds
one, and expects ``allow`` or ``deny`` and, optionally, exactly which policies decide.
``consent_cases: [...]`` give consent signals that may disagree and expect the decision
and the deciding source under the data policy's ``consent`` rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


Verdict = Literal["grant", "deny"]


class ConsentSignals(_Strict):
    """What each source says of one purpose: `gpc` is a `Sec-GPC: 1` request (a denial
    for the purposes in `consent.gpc_opt_out`), `tcf` the TC string's verdict (counted for
    the purposes in `consent.tcf_purposes`), `store` the subject's stored choice."""

    purpose: str = "personalization"
    gpc: bool = False
    tcf: Verdict | None = None
    store: Verdict | None = None


class ConsentOverride(_Strict):
    """A what-if: the case runs with these `consent` settings instead of the bundle's."""

    combine: Literal["most_restrictive", "precedence"] | None = None
    precedence: tuple[Literal["gpc", "tcf", "store"], ...] | None = None


class ConsentExpectation(_Strict):
    decision: Verdict
    source: Literal["gpc", "tcf", "store", "default"]


class ConsentCase(_Strict):
    """Consent signals that may disagree, and which one the bundle's rules let win."""

    name: str = Field(min_length=1)
    signals: ConsentSignals
    policy: ConsentOverride | None = None
    expect: ConsentExpectation


class CaseFile(_Strict):
    cases: tuple[PolicyCase, ...] = ()
    consent_cases: tuple[ConsentCase, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> CaseFile:
        if not self.cases and not self.consent_cases:
            raise ValueError("a test file needs cases or consent_cases")
        return self


@dataclass(frozen=True, slots=True)
class LoadedCase:
    """A case plus where it was written, so failures point at the file and line."""

    case: PolicyCase
    file: str
    line: int | None


@dataclass(frozen=True, slots=True)
class LoadedConsentCase:
    case: ConsentCase
    file: str
    line: int | None
