#!/bin/bash
# The official redis image's entrypoint, in short (test stand-in): drop to the redis user.
set -euo pipefail
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
