#!/bin/bash
# The part of the official nginx image's entrypoint the GenAI image relies on (test stand-in).
set -euo pipefail
if [ "${1:-}" = nginx ]; then
    filter="${NGINX_ENVSUBST_FILTER:-}"
    # The variables envsubst may replace: ${NAME} for each environment variable matching the filter.
    defined=""
    for name in $(compgen -e); do
        if [[ "$name" =~ $filter ]]; then
            defined+="\${$name} "
        fi
    done
    for template in /etc/nginx/templates/*.template; do
        [ -e "$template" ] || continue
        output="/etc/nginx/conf.d/$(basename "$template" .template)"
        envsubst "$defined" <"$template" >"$output"
        echo "rendered $template to $output" >&2
    done
fi
exec "$@"
