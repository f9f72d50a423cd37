#!/usr/bin/env bash
# A self-signed TLS certificate for nginx, for a first start or a test host. For real users, use a
# certificate from the corporate CA instead (docs/operations.md, "TLS certificates").
#
#   deploy/nginx/make-selfsigned-cert.sh [-d DIR] [-n DAYS] [-f] NAME [NAME...]
#
# NAME: host names and IP addresses clients use to reach the service (all go into subjectAltName;
# the first is also the subject's CN). Writes DIR/server.crt and DIR/server.key (default DIR: the
# deploy/tls folder the compose file mounts). Existing files are kept unless -f is given.
# Clients trust it by importing server.crt (e.g. `curl --cacert server.crt`).
set -euo pipefail

dir="$(cd "$(dirname "$0")/.." && pwd)/tls"
days=825
force=0

usage() {
    sed -n '2,11s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

while getopts "d:n:fh" opt; do
    case "$opt" in
        d) dir="$OPTARG" ;;
        n) days="$OPTARG" ;;
        f) force=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ "$#" -ge 1 ] || usage
case "$days" in
    '' | *[!0-9]*) echo "error: -n needs a number of days, got '$days'" >&2; exit 2 ;;
esac

cert="$dir/server.crt"
key="$dir/server.key"
if [ "$force" -eq 0 ] && { [ -e "$cert" ] || [ -e "$key" ]; }; then
    echo "error: $cert or $key exists already; use -f to replace them" >&2
    exit 1
fi

san=""
for name in "$@"; do
    # An IPv4 or IPv6 address goes in as IP:, anything else as DNS:.
    if [[ "$name" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$name" == *:* ]]; then
        san="${san:+$san,}IP:$name"
    else
        san="${san:+$san,}DNS:$name"
    fi
done

mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.new.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# The key is never readable by others, not even for a moment.
umask 077
openssl req -x509 -new -nodes -sha256 -days "$days" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$tmp/server.key" -out "$tmp/server.crt" \
    -subj "/CN=$1" \
    -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth"
chmod 644 "$tmp/server.crt"
chmod 600 "$tmp/server.key"
mv -f "$tmp/server.key" "$key"
mv -f "$tmp/server.crt" "$cert"

echo "wrote $cert and $key (valid $days days, for: $san)"
openssl x509 -in "$cert" -noout -fingerprint -sha256
