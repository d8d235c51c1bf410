"""Policy-as-code: Cedar authorization plus the typed data policy, in versioned bundles.

``policies.bundle.load_bundle`` loads a bundle directory or packed ``.tar.gz`` and
refuses anything malformed with ``policies.errors.PolicyError``; its ``engine``
(``policies.cedar_engine.CedarEngine``) answers stage 2 (authorize), and its ``data``
(``policies.data_policy.DataPolicy``) drives the later stages. The default bundle lives
in ``policies/bundles/default/``. The gateway reads the bundle in force through
``policies.in_force.PolicyInForce`` (``PolicyManager``, or ``ScopeTablePolicy`` in dev mode).
"""

from policies.data_policy import (
    ConsentPolicy,
    DataPolicy,
    DetectionPolicy,
    EventsPolicy,
    ExperimentPolicy,
    Guardrails,
    JurisdictionPolicy,
    Jurisdictions,
    ModelPolicy,
    RedactionPolicy,
    Variant,
)
from policies.in_force import InForce, PolicyInForce, PolicyReader, ReloadResult

# The package's interface to the other concern packages (and the composition root).
__all__ = [
    "ConsentPolicy",
    "DataPolicy",
    "DetectionPolicy",
    "EventsPolicy",
    "ExperimentPolicy",
    "Guardrails",
    "InForce",
    "JurisdictionPolicy",
    "Jurisdictions",
    "ModelPolicy",
    "PolicyInForce",
    "PolicyReader",
    "RedactionPolicy",
    "ReloadResult",
    "Variant",
]
