#!/usr/bin/env bash
# Command 1: set up, initialise the data directory if absent, serve on 127.0.0.1:8080.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_env "serve"
exec .venv/bin/gateway serve --init "$@"
