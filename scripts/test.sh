#!/usr/bin/env bash
# Command 2: set up and run the whole test suite (lint, types, tests).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_env "dev,eval"
# Debian tools some tests drive: promtool (tests/ops: the Prometheus rules), chromium
# (the HTML reports in a real browser), nginx (tests/deploy: replicas behind a load
# balancer) and kubectl (tests/deploy: `kubectl kustomize` renders the manifests).
# Installed where this runs as root with apt; elsewhere those tests skip and say so.
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null 2>&1; then
        echo "WARNING: apt-get install ${missing[*]} failed: their tests will be skipped" >&2
    fi
fi
# PyTriton, the peer of tests/models/test_remote_pytriton.py (the remote ranker backend)
# and bench/serve, in its own venv: it needs numpy<2, which the gateway's pins rule out.
pytriton_want="$(sha256sum < constraints-pytriton.txt)"
if [ "$(cat .venv-pytriton/.installed 2>/dev/null)" != "$pytriton_want" ]; then
    if "$(find_python)" -m venv .venv-pytriton &&
        .venv-pytriton/bin/python -m pip install --quiet --disable-pip-version-check \
            -c constraints-pytriton.txt nvidia-pytriton onnxruntime; then
        echo "$pytriton_want" > .venv-pytriton/.installed
    else
        echo "WARNING: installing PyTriton failed: its tests will be skipped" >&2
    fi
fi
# The IAB reference TCF library, oracle of tests/privacy/test_tcf_oracle.py, from the
# committed lock file; reinstalled only when the lock file changes. Without npm those
# tests skip and say so.
tcf_oracle=tests/privacy/tcf_oracle
if command -v npm >/dev/null 2>&1; then
    tcf_lock="$(sha256sum < "$tcf_oracle/package-lock.json")"
    if [ "$(cat "$tcf_oracle/node_modules/.lock-sha256" 2>/dev/null)" != "$tcf_lock" ]; then
        if npm ci --prefix "$tcf_oracle" --ignore-scripts --no-audit --no-fund --loglevel=error
        then
            echo "$tcf_lock" > "$tcf_oracle/node_modules/.lock-sha256"
        else
            echo "WARNING: npm ci failed: the TCF reference oracle tests will be skipped" >&2
        fi
    fi
else
    echo "WARNING: npm not found: the TCF reference oracle tests will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
# tests/suites holds the short hardening suites (JWT attacks, schemathesis, kill -9, soak);
# `python -m bench.harden` runs them long, and pip-audit, which needs a vulnerability
# source (PyPI's per-version JSON API or OSV) that this machine cannot reach.
exec .venv/bin/pytest "$@"
