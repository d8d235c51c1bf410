#!/bin/sh
# Writes the secrets deploy/compose.yaml reads, into deploy/secrets/ (git-ignored).
# Never overwrites one that exists: re-running after an upgrade changes nothing, and a
# new replica gets the same issuer key as the others. Needs only openssl.
#
# The files are readable by their owner only. Docker bind-mounts compose file secrets
# with the host file's owner and mode, so the gateway (UID 10001) and PostgreSQL and
# Redis (UID 999) must be able to read them: run this as root (it then hands each file
# to the UID that reads it), or chown them yourself.
set -eu
umask 077
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"

new() {  # new NAME OWNER: write stdin to $dir/NAME unless it exists
    if [ -e "$dir/$1" ]; then
        cat > /dev/null
        echo "kept:    $dir/$1"
        return 0
    fi
    cat > "$dir/$1.tmp"
    mv "$dir/$1.tmp" "$dir/$1"
    if [ "$(id -u)" = 0 ]; then
        chown "$2" "$dir/$1"
    fi
    echo "created: $dir/$1"
}

# Hex only: safe inside a URL without escaping.
random() { openssl rand -hex "$1"; }

random 32 | new gateway_secret_key 10001:10001
random 24 | new postgres_password 999:999
random 24 | new redis_password 999:999
printf 'postgresql://gateway:%s@postgres:5432/gateway\n' "$(cat "$dir/postgres_password")" \
    | new postgres_dsn 10001:10001
printf 'redis://:%s@redis:6379/0\n' "$(cat "$dir/redis_password")" | new redis_url 10001:10001
# The embedded issuer's RS256 key, as `gateway init` makes it (RSA-2048, PKCS#8 PEM).
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
    | new issuer_signing_key.pem 10001:10001
