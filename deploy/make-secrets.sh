#!/bin/sh
# Creates the secret files deploy/compose.yaml reads (deploy/secrets/, ignored by git).
# Existing files are kept, so running it again changes nothing. The folder is 0700 (only
# you can reach the files on this host); the files are 0644 because the containers' own
# users (autoglm 10001, redis 999) read them through bind mounts.
set -eu
dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"

random_hex() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

put() {  # put NAME VALUE: write deploy/secrets/NAME unless it exists
    [ -e "$dir/$1" ] && return 0
    printf '%s\n' "$2" > "$dir/.$1.tmp"
    chmod 644 "$dir/.$1.tmp"
    mv "$dir/.$1.tmp" "$dir/$1"
    echo "created $dir/$1"
}

put postgres_password "$(random_hex)"
put database_url "postgresql+psycopg://autoglm:$(cat "$dir/postgres_password")@postgres:5432/autoglm"
put redis_password "$(random_hex)"
put redis_url "redis://:$(cat "$dir/redis_password")@redis:6379/0"
put key_pepper "$(random_hex)"
put admin_key "$(random_hex)"
