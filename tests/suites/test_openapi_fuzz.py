"""schemathesis' CLI with `--checks all` against the served /openapi.json of a real gateway,
with no token, every scope, each operation's own scope and every scope but its own
(tests/suites/openapi_fuzz.py says how). Bounded for CI: every phase with every scope,
fewer with the other plans, a few cases each, one seed; bench/harden runs every phase for
every plan, longer.
"""

from __future__ import annotations

import pytest

from tests.suites.openapi_fuzz import (
    ALL_PHASES,
    STATE_DEPENDENT,
    FuzzRun,
    run_fuzz,
    served_document,
    token_plans,
)
from tests.suites.servers import DataDir, threaded_gateway

EXAMPLES_PER_OPERATION = 2
PHASES = {
    "every-scope": ALL_PHASES,
    "own-scope": ("examples", "fuzzing"),
    "other-scopes": ("fuzzing",),
    "anonymous": ("fuzzing",),
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[FuzzRun, dict[str, object]]:
    data_dir = DataDir.create(tmp_path_factory.mktemp("fuzz") / "data")
    settings = data_dir.settings()
    with threaded_gateway(settings) as url:
        document = served_document(url)
        run = run_fuzz(
            url,
            token_plans(settings, document),
            tmp_path_factory.mktemp("st"),
            max_examples=EXAMPLES_PER_OPERATION,
            phases=PHASES,
        )
    return run, document


def test_every_check_passes_for_every_token(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    run, _ = fuzzed
    assert run.errors == []
    assert run.failures == []
    assert run.runs == dict.fromkeys(PHASES, 0)


def test_no_request_got_a_5xx(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    run, _ = fuzzed
    assert run.requests > 0
    assert run.server_errors == 0, run.statuses


def test_every_served_operation_was_exercised(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    run, document = fuzzed
    paths = document["paths"]
    assert isinstance(paths, dict)
    declared = sum(len(methods) for methods in paths.values())
    assert run.operations == declared
    assert run.requests >= declared * len(run.runs)
    # Tokens reached past authentication and the scope check: not everything was refused.
    assert run.statuses[200] > declared
    assert run.statuses[401] > 0
    assert run.statuses[403] > 0
    # The coverage phase sent undeclared methods and bad input: refused, never served.
    assert run.statuses[405] > 0
    assert run.statuses[422] > 0


def test_the_exceptions_name_served_operations(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    _, document = fuzzed
    paths = document["paths"]
    assert isinstance(paths, dict)
    served = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert set(STATE_DEPENDENT) <= served


def test_healthz_kept_answering_during_the_fuzz(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    assert fuzzed[0].health_worst_ms < 1_000
