"""Hardening suites (issue 15): short versions run in ./scripts/test.sh, long ones in
`python -m bench.harden`. The drivers live in the modules without a `test_` prefix so
that both sizes run the same code."""
