#!/bin/sh
# Entrypoint of the autoglm image (deploy/Dockerfile).
#
# 1. Secrets from files: for each setting below, AUTOGLM_<NAME>_FILE=/path sets
#    AUTOGLM_<NAME> to that file's content (one trailing newline dropped), so that Docker
#    secrets and Kubernetes Secret volumes never have to be put in the environment by
#    hand. Only these names: other settings end in _FILE themselves (AUTOGLM_POLICY_FILE,
#    AUTOGLM_MODEL_KEY_FILE are paths) and are left alone.
# 2. Audit keys shared by replicas: with AUDIT_KEYS_DIR set, each of audit_hmac_key,
#    audit_signing_key.pem and personal_data_key found there is copied into
#    $AUTOGLM_DATA_DIR/secrets/ with mode 0600 (autoglm refuses secrets that group or
#    others can read, which mounted Secret files often are). An existing copy that differs
#    is an error: two keys for one audit chain must never happen silently.
set -eu

for name in ADMIN_KEY KEY_PEPPER DATABASE_URL REDIS_URL MODELS; do
    var="AUTOGLM_${name}_FILE"
    eval "path=\${$var:-}"
    [ -n "$path" ] || continue
    eval "already=\${AUTOGLM_${name}+set}"
    if [ "$already" = set ]; then
        echo "autoglm-entrypoint: both AUTOGLM_${name} and $var are set; use one" >&2
        exit 64
    fi
    if [ ! -r "$path" ]; then
        echo "autoglm-entrypoint: $var: cannot read $path" >&2
        exit 66
    fi
    value=$(cat "$path")  # $(...) drops trailing newlines
    export "AUTOGLM_${name}=$value"
    unset "$var"
done

if [ -n "${AUDIT_KEYS_DIR:-}" ]; then
    target="${AUTOGLM_DATA_DIR:?AUDIT_KEYS_DIR needs AUTOGLM_DATA_DIR}/secrets"
    mkdir -p "$target"
    chmod 700 "$target"
    for key in audit_hmac_key audit_signing_key.pem personal_data_key; do
        src="$AUDIT_KEYS_DIR/$key"
        [ -f "$src" ] || continue
        if [ -e "$target/$key" ]; then
            if ! cmp -s "$src" "$target/$key"; then
                echo "autoglm-entrypoint: $target/$key differs from $src; refusing to" \
                     "run one audit chain with two keys" >&2
                exit 65
            fi
            continue
        fi
        tmp="$target/.$key.$$"
        (umask 077 && cat "$src" > "$tmp")
        mv "$tmp" "$target/$key"
    done
    unset AUDIT_KEYS_DIR
fi

exec "$@"
