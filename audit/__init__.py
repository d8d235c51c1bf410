"""Tamper-evident audit log (RFC 6962 Merkle tree); lands later as the final pipeline stage."""
