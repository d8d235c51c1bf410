"""What changes when one bundle replaces another: test outcomes and sampled decisions.

Test cases of both bundles run against both engines (a case present in only one
bundle still tells us something about the other). The sample is every action the
schemas know, times a few scope sets (none, each needed scope alone, all of them), times each
resource the action applies to (every model either data policy names, with its
attributes, plus the audit log and one subject), times tenant (none, "default").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.pipeline import ACTION_SCOPES
from policies.bundle import PolicyBundle
from policies.cedar_engine import AttrValue, AuthzRequest, Decision
from policies.test_cases import LoadedCase


@dataclass(frozen=True, slots=True)
class TestChange:
    __test__ = False

    name: str
    old: Decision
    new: Decision


@dataclass(frozen=True, slots=True)
class DecisionChange:
    request: AuthzRequest
    old: Decision
    new: Decision

    def render(self) -> str:
        r = self.request

        def verdict(d: Decision) -> str:
            return ("allow" if d.allowed else "deny") + f" {list(d.policy_ids)}"

        return (
            f"{r.action} {r.resource_type}::{r.resource_id} scopes={sorted(r.scopes)} "
            f"tenant={r.tenant}: {verdict(self.old)} -> {verdict(self.new)}"
        )


@dataclass(frozen=True, slots=True)
class DiffReport:
    old: str
    new: str
    test_changes: tuple[TestChange, ...]
    decision_changes: tuple[DecisionChange, ...]
    sampled: int

    @property
    def changed(self) -> bool:
        return bool(self.test_changes or self.decision_changes)

    def render(self) -> str:
        lines = [f"{self.old} -> {self.new}"]
        lines += [
            f"test {t.name}: {'allow' if t.old.allowed else 'deny'} -> "
            f"{'allow' if t.new.allowed else 'deny'}"
            for t in self.test_changes
        ]
        lines += [d.render() for d in self.decision_changes]
        lines.append(f"{len(self.decision_changes)} of {self.sampled} sampled decisions differ")
        return "\n".join(lines)


def _outcome(d: Decision) -> tuple[bool, tuple[str, ...]]:
    return d.allowed, d.policy_ids


def sample_requests(
    old: PolicyBundle, new: PolicyBundle
) -> Iterator[tuple[AuthzRequest, AuthzRequest]]:
    """The same question put to each bundle; model attributes come from each one's data."""
    applies = {**old.engine.action_resource_types, **new.engine.action_resource_types}
    scopes = sorted(set(ACTION_SCOPES.values()))
    scope_sets = [frozenset(), *(frozenset({s}) for s in scopes), frozenset(scopes)]
    resource_ids = {
        "Model": sorted(set(old.data.models) | set(new.data.models)),
        "AuditLog": ["log"],
        "Subject": ["subject-1"],
    }

    def attrs(bundle: PolicyBundle, rtype: str, rid: str) -> dict[str, AttrValue]:
        return bundle.model_attrs(rid) if rtype == "Model" else {}

    for action in sorted(applies):
        for rtype in applies[action]:
            for rid in resource_ids.get(rtype, []):
                for scope_set in scope_sets:
                    for tenant in (None, "default"):
                        old_req, new_req = (
                            AuthzRequest(
                                client_id="diff-client",
                                scopes=scope_set,
                                tenant=tenant,
                                action=action,
                                resource_type=rtype,
                                resource_id=rid,
                                resource_attrs=attrs(bundle, rtype, rid),
                            )
                            for bundle in (old, new)
                        )
                        yield old_req, new_req


def diff_bundles(old: PolicyBundle, new: PolicyBundle) -> DiffReport:
    cases: dict[str, LoadedCase] = {c.case.name: c for c in (*old.tests, *new.tests)}
    test_changes = []
    for name in sorted(cases):
        request = cases[name].case.authz_request()
        before, after = old.engine.decide(request), new.engine.decide(request)
        if _outcome(before) != _outcome(after):
            test_changes.append(TestChange(name, before, after))
    decision_changes = []
    sampled = 0
    for old_request, new_request in sample_requests(old, new):
        sampled += 1
        before, after = old.engine.decide(old_request), new.engine.decide(new_request)
        if _outcome(before) != _outcome(after):
            decision_changes.append(DecisionChange(new_request, before, after))
    return DiffReport(
        old=f"{old.name}@{old.version}",
        new=f"{new.name}@{new.version}",
        test_changes=tuple(test_changes),
        decision_changes=tuple(decision_changes),
        sampled=sampled,
    )
