"""Stage 2's `AuditReach`: whose audit records a request may see, as the bundle decides.

Real bundles (the shipped default, and a copy edited as an older bundle would be),
the real stage; no app. The reach fails closed: a bundle that cannot answer the
cross-tenant question, or a swap between the two questions, leaves the caller its own
tenant's records only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.pipeline import Action, RequestContext
from policies.bundle import PolicyBundle, load_bundle, rehash
from policies.cedar_engine import AuthzRequest, Decision
from policies.stage import PolicyAuthorizeStage
from policies.vocabulary import AuditReach
from tests.stage_context import principal, stage_context

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "bundles" / "default"


class OneBundle:
    """The `Decider` the gateway's PolicyManager is, over one loaded bundle."""

    def __init__(self, *bundles: PolicyBundle) -> None:
        self._bundles = list(bundles)

    def decide(
        self, request: AuthzRequest, model: tuple[str, str] | None = None
    ) -> tuple[Decision, PolicyBundle]:
        # With several bundles, each call takes the next: a swap between two questions.
        bundle = self._bundles.pop(0) if len(self._bundles) > 1 else self._bundles[0]
        return bundle.engine.decide(request), bundle


async def reach_of(decider: OneBundle, action: Action, *scopes: str, tenant: str | None) -> object:
    stage = PolicyAuthorizeStage(decider, model_name="demo-ranker", model_version="1")
    ctx: RequestContext = await stage(
        stage_context(action, caller=principal("c", scopes=scopes, tenant=tenant))
    )
    return ctx.payload


@pytest.fixture(scope="module")
def default() -> PolicyBundle:
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture
def older(tmp_path: Path) -> PolicyBundle:
    """A bundle written before records had tenants: no `all_tenants`, no forbid for it."""
    path = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "older"))
    schema = path / "schema.cedarschema.json"
    text = schema.read_text()
    start, end = text.index('"AuditLog": {'), text.index('"Subject": {}')
    schema.write_text(text[:start] + '"AuditLog": {},\n      ' + text[end:])
    cedar = path / "policies.cedar"
    text = cedar.read_text()
    start = text.index('@id("forbid-audit-all-tenants")')
    end = text.index("// Clients of a suspended tenant")
    cedar.write_text(text[:start] + text[end:])
    (path / "tests" / "tenants.yaml").unlink()
    rehash(path)
    return load_bundle(path)


@pytest.mark.asyncio
@pytest.mark.parametrize("action", [Action.AUDIT_READ, Action.AUDIT_EXPORT])
async def test_the_default_bundle_gives_each_caller_its_own_tenant(
    default: PolicyBundle, action: Action
) -> None:
    scope = action.scope
    decider = OneBundle(default)
    assert await reach_of(decider, action, scope, tenant="t1") == AuditReach("t1", False)
    assert await reach_of(decider, action, scope, tenant=None) == AuditReach(None, False)
    # Every tenant's records: only with the dedicated scope, tenant or not.
    wide = (scope, "audit:all-tenants")
    assert await reach_of(decider, action, *wide, tenant="ops") == AuditReach("ops", True)
    assert await reach_of(decider, action, *wide, tenant=None) == AuditReach(None, True)


@pytest.mark.asyncio
async def test_only_record_revealing_actions_get_a_reach(default: PolicyBundle) -> None:
    decider = OneBundle(default)
    for action in (Action.ADMIN, Action.RANK):
        assert await reach_of(decider, action, action.scope, tenant="t1") is None


@pytest.mark.asyncio
async def test_a_bundle_that_cannot_answer_leaves_the_callers_own(older: PolicyBundle) -> None:
    """The older schema refuses the attribute: an error, so no (fail closed), while the
    request itself is still allowed by its scope."""
    reach = await reach_of(
        OneBundle(older), Action.AUDIT_READ, "audit:read", "audit:all-tenants", tenant="t1"
    )
    assert reach == AuditReach("t1", False)


@pytest.mark.asyncio
async def test_a_swap_between_the_two_questions_keeps_the_narrower_reach(
    default: PolicyBundle, tmp_path: Path
) -> None:
    other = load_bundle(Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "other")))
    reach = await reach_of(
        OneBundle(default, other), Action.AUDIT_READ, "audit:read", "audit:all-tenants", tenant=None
    )
    assert reach == AuditReach(None, False)


def test_reach_sees_its_own_tenant_or_every_tenant() -> None:
    assert AuditReach("t1").sees("t1")
    assert not AuditReach("t1").sees("t2")
    assert not AuditReach("t1").sees(None)
    assert AuditReach(None).sees(None)
    assert not AuditReach(None).sees("t1")
    assert AuditReach("t1", all_tenants=True).sees("t2")
    assert AuditReach(None, all_tenants=True).sees(None)
