"""Tests for the audit log: Merkle math, checkpoints."""
