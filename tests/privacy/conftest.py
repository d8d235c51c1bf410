from __future__ import annotations

import pytest

from gateway.derivation import DerivedKeys
from privacy.components import shared_analyzer
from privacy.nlp import OfflineAnalyzer
from privacy.redaction import Redactor


@pytest.fixture(scope="session")
def analyzer() -> OfflineAnalyzer:
    return shared_analyzer(None)


@pytest.fixture
def redactor(analyzer: OfflineAnalyzer) -> Redactor:
    return Redactor(analyzer, keys=DerivedKeys(b"k" * 32), cache_size=8)
