"""Privacy: offline PII redaction (stage 4), consent (stage 3), data-subject rights.

nlp (the offline Presidio engine), redaction (operators, keyed cache), redact_stage,
signals (GPC, TCF), consent_store, consent_stage, subjects (export, erasure),
feature_erasure, components (wiring for the app).
"""
