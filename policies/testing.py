"""``policy test``: run a bundle's own test cases against its Cedar engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policies.cedar_engine import CedarEngine, Decision
from policies.data_policy import ConsentPolicy, ConsentSource, DataPolicy
from policies.test_cases import LoadedCase, LoadedConsentCase


class BundleUnderTest(Protocol):
    """What the test runner reads of a bundle (policies.bundle.PolicyBundle); a protocol,
    so the loader can run a bundle's tests without the two modules importing each other."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def engine(self) -> CedarEngine: ...

    @property
    def tests(self) -> Sequence[LoadedCase]: ...

    @property
    def data(self) -> DataPolicy: ...

    @property
    def consent_tests(self) -> Sequence[LoadedConsentCase]: ...


@dataclass(frozen=True, slots=True)
class CaseFailure:
    name: str
    file: str
    line: int | None
    expected: str
    expected_policies: tuple[str, ...] | None
    got: Decision

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        got = "allow" if self.got.allowed else "deny"
        deciding = ", ".join(self.got.policy_ids) or "no policy (default deny)"
        want = self.expected
        if self.expected_policies is not None:
            want += f" by [{', '.join(self.expected_policies)}]"
        errors = f"; errors: {'; '.join(self.got.errors)}" if self.got.errors else ""
        return f"{where}: {self.name}: expected {want}, got {got} by {deciding}{errors}"


@dataclass(frozen=True, slots=True)
class ConsentFailure:
    name: str
    file: str
    line: int | None
    expected: str
    got: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.name}: expected {self.expected}, got {self.got}"


@dataclass(frozen=True, slots=True)
class TestReport:
    __test__ = False  # a result type, not a pytest class

    bundle: str
    total: int
    failures: tuple[CaseFailure, ...]
    consent_failures: tuple[ConsentFailure, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures and not self.consent_failures

    def render(self) -> str:
        lines = [f.render() for f in self.failures]
        lines += [f.render() for f in self.consent_failures]
        lines.append(f"{self.bundle}: {self.total - len(self.failures)}/{self.total} passed")
        return "\n".join(lines)


def check_case(bundle: BundleUnderTest, loaded: LoadedCase) -> CaseFailure | None:
    """The failure of one case, or None when the decision matches the expectation."""
    case = loaded.case
    got = bundle.engine.decide_uncached(case.authz_request())
    want_allow = case.expect.decision == "allow"
    ok = got.allowed == want_allow
    if ok and case.expect.policies is not None:
        ok = tuple(sorted(case.expect.policies)) == got.policy_ids
    if ok:
        return None
    return CaseFailure(
        name=case.name,
        file=loaded.file,
        line=loaded.line,
        expected=case.expect.decision,
        expected_policies=case.expect.policies,
        got=got,
    )


def check_consent_case(policy: ConsentPolicy, loaded: LoadedConsentCase) -> ConsentFailure | None:
    """The failure of one consent case under `policy` (or the case's what-if override)."""
    case = loaded.case
    if case.policy is not None:
        override = case.policy.model_dump(exclude_none=True)
        policy = ConsentPolicy.model_validate({**policy.model_dump(), **override})
    s = case.signals
    opinions: dict[ConsentSource, bool | None] = {
        "gpc": False if s.gpc and s.purpose in policy.gpc_opt_out else None,
        "tcf": s.tcf == "grant" if s.tcf and s.purpose in policy.tcf_purposes else None,
        "store": s.store == "grant" if s.store else None,
    }
    source, granted = policy.resolve(s.purpose, opinions)
    got = f"{'grant' if granted else 'deny'} by {source}"
    expected = f"{case.expect.decision} by {case.expect.source}"
    if got == expected:
        return None
    return ConsentFailure(case.name, loaded.file, loaded.line, expected, got)


def run_tests(bundle: BundleUnderTest) -> TestReport:
    failures = [f for c in bundle.tests if (f := check_case(bundle, c)) is not None]
    consent = bundle.data.consent
    refused = [r for c in bundle.consent_tests if (r := check_consent_case(consent, c))]
    return TestReport(
        bundle=f"{bundle.name}@{bundle.version}",
        total=len(bundle.tests) + len(bundle.consent_tests),
        failures=tuple(failures),
        consent_failures=tuple(refused),
    )
