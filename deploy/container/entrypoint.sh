#!/bin/sh
# The image's entry point (Dockerfile ENTRYPOINT): secrets from files into the
# environment, `gateway init` when the data directory is new, then the command.
#
#   gateway-entrypoint serve [ARGS]   gateway serve, with --workers $GATEWAY_WORKERS if set
#   gateway-entrypoint init-only      lay out the data directory if it is new, then exit 0
#   gateway-entrypoint CMD [ARGS]     anything else runs as is (e.g. `gateway audit verify`)
set -eu

# A secret mounted as a file named after a setting (GATEWAY_SECRET_KEY,
# GATEWAY_AUDIT__POSTGRES_DSN, ...) becomes that variable, so no secret value is ever
# written in a compose file, a manifest or `docker inspect`. Compose secrets and
# Kubernetes secret volumes both give such files. A variable already set wins.
secrets_dir="${GATEWAY_SECRETS_DIR:-/run/secrets}"
if [ -d "$secrets_dir" ]; then
    for file in "$secrets_dir"/GATEWAY_*; do
        [ -f "$file" ] || continue
        name="${file##*/}"
        case "$name" in
            *[!A-Z0-9_]*)
                echo "error: secret file $file: name is not a GATEWAY_* variable" >&2
                exit 2
                ;;
        esac
        # The name is [A-Z0-9_] only (checked above), so eval reads one variable.
        eval "already=\${$name+set}"
        if [ -z "$already" ]; then
            # $(...) drops the trailing newline editors and `echo` leave in the file.
            value="$(cat "$file")"
            export "$name=$value"
        fi
    done
fi

data_dir="${GATEWAY_DATA_DIR:-/var/lib/gateway}"

# `gateway init` never overwrites, but it writes: it runs only when the data directory
# has no config, so a replica with a read-only data directory starts without writing.
# GATEWAY_INIT=never fails closed instead (a platform-provisioned data directory).
init_if_new() {
    if [ ! -f "$data_dir/gateway.toml" ] && [ -z "${GATEWAY_CONFIG_FILE:-}" ]; then
        if [ "${GATEWAY_INIT:-if-missing}" = "never" ]; then
            echo "error: $data_dir/gateway.toml is missing and GATEWAY_INIT=never" >&2
            exit 2
        fi
        gateway init --data-dir "$data_dir"
    fi
}

case "${1:-serve}" in
    serve)
        if [ "$#" -gt 0 ]; then shift; fi
        init_if_new
        if [ -n "${GATEWAY_WORKERS:-}" ]; then
            # A container sees every core of its host, not its CPU limit: the platform
            # says how many workers fit (Kubernetes: the downward API's limits.cpu).
            set -- --workers "$GATEWAY_WORKERS" "$@"
        fi
        exec gateway serve --data-dir "$data_dir" "$@"
        ;;
    init-only)
        init_if_new
        ;;
    *)
        exec "$@"
        ;;
esac
