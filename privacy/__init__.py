"""Privacy: consent, PII redaction, data-subject rights. Stages land in later issues."""
