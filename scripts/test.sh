#!/usr/bin/env bash
# Command 2: set up and run the whole test suite (lint, types, tests).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_env "dev,eval"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
# tests/suites holds the short hardening suites (JWT attacks, schemathesis, kill -9, soak);
# `python -m bench.harden` runs them long, and pip-audit, which needs a vulnerability
# source (PyPI's per-version JSON API or OSV) that this machine cannot reach.
exec .venv/bin/pytest "$@"
