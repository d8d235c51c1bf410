"""kill -9 under load, twice, on a real `gateway serve` (tests/suites/kill_cycles.py):
no acknowledged request loses its record, none has two, the log verifies, and the
gateway comes back by itself."""

from __future__ import annotations

import pytest

from tests.suites.kill_cycles import KillRun, run_kill_cycles
from tests.suites.servers import DataDir

CYCLES = 2
LOAD_S = 1.0


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> KillRun:
    data_dir = DataDir.create(tmp_path_factory.mktemp("kill") / "data")
    return run_kill_cycles(data_dir, cycles=CYCLES, load_s=LOAD_S)


def test_every_2xx_has_its_one_record_with_the_status_the_client_got(killed: KillRun) -> None:
    assert len(killed.acknowledged) >= 20 * CYCLES, "the load barely ran"
    assert killed.without_record == []
    assert killed.duplicates == []
    assert killed.status_mismatches == []
    assert killed.server_errors == 0
    # A fail-closed refusal in the moment of the kill is audited like any other answer.
    assert killed.unavailable_without_record == []


def test_the_log_verifies_as_the_last_kill_left_it(killed: KillRun) -> None:
    assert killed.verify_rc == 0, killed.verify_output


def test_the_gateway_comes_back_after_each_kill(killed: KillRun) -> None:
    assert killed.serves_after_restart
    assert len(killed.recover_s) == CYCLES
    assert max(killed.recover_s) < 30


def test_the_run_reports_no_failure(killed: KillRun) -> None:
    assert killed.failures() == []
