"""A/B experiments that decide: outcome events joined to the arm that served them, the
report (Wilson intervals, lift, an always-valid mSPRT, guardrails) and the simulator.

stats (the statistics), store (events, guardrail counts, stopped arms), join (the
ranking's arm from its audit record), guardrails, report, html (the one-page report),
service (the component the gateway builds), sim (the demo world's users, bench/ab).
"""

from models.experiments.join import (
    REQUEST_ID,
    EventsUnavailable,
    RankingRefused,
    ServedArm,
    UnknownRanking,
)
from models.experiments.service import KIND_ARM_STOP, EventMetrics, Experiments
from models.experiments.store import (
    EVENT_KINDS,
    ArmKey,
    EventStore,
    EventStoreError,
    OutcomeEvent,
    SqliteEventStore,
)

__all__ = [
    "EVENT_KINDS",
    "KIND_ARM_STOP",
    "REQUEST_ID",
    "ArmKey",
    "EventMetrics",
    "EventStore",
    "EventStoreError",
    "EventsUnavailable",
    "Experiments",
    "OutcomeEvent",
    "RankingRefused",
    "ServedArm",
    "SqliteEventStore",
    "UnknownRanking",
]
