"""Reproducible benchmarks; each prints one table."""
