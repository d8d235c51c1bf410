"""``policy test``: run a bundle's own test cases against its Cedar engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policies.cedar_engine import CedarEngine, Decision
from policies.test_cases import LoadedCase


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
class TestReport:
    __test__ = False  # a result type, not a pytest class

    bundle: str
    total: int
    failures: tuple[CaseFailure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def render(self) -> str:
        lines = [f.render() for f in self.failures]
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


def run_tests(bundle: BundleUnderTest) -> TestReport:
    failures = [f for c in bundle.tests if (f := check_case(bundle, c)) is not None]
    return TestReport(
        bundle=f"{bundle.name}@{bundle.version}", total=len(bundle.tests), failures=tuple(failures)
    )
