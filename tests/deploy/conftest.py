"""Deployment tests: a skip for want of nginx, PostgreSQL or Redis is said in the summary too.

A green run must never hide that the replica topology went untested: scripts/test.sh
installs nginx where it can, so on CI these tests run.
"""

from __future__ import annotations

import pytest

_SKIPPED = pytest.StashKey[list[str]]()


def remember_skip(config: pytest.Config, reason: str) -> None:
    reasons = config.stash.setdefault(_SKIPPED, [])
    if reason not in reasons:
        reasons.append(reason)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for reason in config.stash.get(_SKIPPED, []):
        terminalreporter.write_line(f"WARNING: {reason}", red=True, bold=True)
