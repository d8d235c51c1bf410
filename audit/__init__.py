"""Tamper-evident audit log (RFC 6962 Merkle tree). Lands in a later issue as the pipeline's final stage."""
