#!/bin/sh
# Hand the data volume to the agentd user, then run the command as agentd (never as root).
# Run as another user already (docker run --user ...), it just runs the command.
set -eu
data="${AGENTD_DATA_DIR:-/data}"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$data"
    # Only the top directory: a volume's contents were written by agentd already.
    chown agentd:agentd "$data"
    chmod 0700 "$data"
    exec setpriv --reuid=agentd --regid=agentd --init-groups --inh-caps=-all --bounding-set=-all -- "$@"
fi
exec "$@"
