"""schemathesis against the served /openapi.json of a real gateway, with a token of every
scope and none (tests/suites/openapi_fuzz.py says which checks and why). Bounded: a few
cases per operation, the same every run; bench/harden runs many more, seeded."""

from __future__ import annotations

import pytest

from tests.suites.openapi_fuzz import FuzzRun, run_fuzz, served_document, tokens_by_scope
from tests.suites.servers import DataDir, threaded_gateway

EXAMPLES_PER_OPERATION = 6


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[FuzzRun, dict[str, object]]:
    data_dir = DataDir.create(tmp_path_factory.mktemp("fuzz") / "data")
    settings = data_dir.settings()
    with threaded_gateway(settings) as url:
        run = run_fuzz(url, tokens_by_scope(settings), max_examples=EXAMPLES_PER_OPERATION)
        document = served_document(url)
    return run, document


def test_no_input_gets_a_5xx_or_breaks_a_declared_response_schema(
    fuzzed: tuple[FuzzRun, dict[str, object]],
) -> None:
    run, _ = fuzzed
    assert run.failures == []
    assert run.server_errors == 0


def test_every_served_operation_was_exercised(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    run, document = fuzzed
    paths = document["paths"]
    assert isinstance(paths, dict)
    declared = sum(len(methods) for methods in paths.values())
    assert run.not_generated == []
    assert run.operations == declared
    assert run.requests >= declared
    # Tokens of every scope reached past authentication: not everything was a 401.
    assert run.statuses[200] > 0
    assert sum(n for status, n in run.statuses.items() if status not in (401, 403)) > declared


def test_healthz_kept_answering_during_the_fuzz(fuzzed: tuple[FuzzRun, dict[str, object]]) -> None:
    assert fuzzed[0].health_worst_ms < 1_000
