#!/usr/bin/env bash
# Command 2: set up and run the whole test suite (lint, types, tests).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_env "dev,eval"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest "$@"
