"""ruff's bandit rules (S) stay on for the shipped packages: selected, never ignored
globally, ignored per file only in tests and benchmarks (and only the rules listed here,
each for its reason), and never silenced by a blanket `# noqa` or `# ruff: noqa`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "security", "privacy", "models", "policies", "audit", "scripts")

# Rule -> why tests and benchmarks may break it.
ALLOWED_OUTSIDE_PACKAGES = {
    "S101": "assert is how pytest checks",
    "S105": "test secrets are literals on purpose",
    "S106": "test secrets are literals on purpose",
    "S311": "load generators pick inputs with random, not for secrets",
    "S603": "tests run the gateway's own CLI with sys.executable",
    "S607": "tests run the gateway's own CLI",
}
BLANKET = re.compile(r"#\s*(noqa(?!\s*:)|ruff\s*:\s*noqa)", re.IGNORECASE)


def _lint() -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lint: dict[str, object] = config["tool"]["ruff"]["lint"]
    return lint


def _s_rules(codes: object) -> set[str]:
    assert isinstance(codes, list)
    return {code for code in codes if isinstance(code, str) and code.startswith("S")}


def test_bandit_rules_are_selected_and_never_ignored_globally() -> None:
    lint = _lint()
    assert "S" in lint["select"]  # type: ignore[operator]
    for key in ("ignore", "extend-ignore", "unfixable"):
        assert _s_rules(lint.get(key, [])) == set(), key


def test_only_tests_and_benchmarks_ignore_bandit_rules_and_only_the_listed_ones() -> None:
    per_file = _lint().get("per-file-ignores", {})
    assert isinstance(per_file, dict)
    for pattern, codes in per_file.items():
        ignored = _s_rules(codes)
        if not ignored:
            continue
        assert pattern in ("tests/**", "bench/**"), pattern
        assert ignored <= set(ALLOWED_OUTSIDE_PACKAGES), (pattern, ignored)


def test_no_blanket_noqa_in_the_shipped_packages() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BLANKET.search(line)
    ]
    assert found == []
