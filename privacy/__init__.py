"""Privacy concerns (consent, PII redaction, data-subject rights). Stages land here in later issues."""
