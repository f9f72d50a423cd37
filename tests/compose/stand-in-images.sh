#!/usr/bin/env bash
# TEST STAND-INS ONLY. Makes local images under the names of the public base images that
# deploy/docker-compose.yml and the Dockerfiles pull (python:3.12-slim, nginx:1.28, redis:7.4,
# postgres:16), for a Docker engine that cannot reach a container registry. Production always uses
# the official images; nothing here is ever pushed or shipped.
#
#   tests/compose/stand-in-images.sh
#
# Each stand-in is Debian bookworm (debootstrap --variant=minbase, imported with `docker import`) plus
# Debian's own packages, so the versions are bookworm's (Python 3.11, nginx 1.22, Redis 7.0,
# PostgreSQL 15), not the tags' names. What the compose file relies on is reproduced: python and pip on
# PATH; nginx's template rendering (NGINX_ENVSUBST_FILTER) and logs on stdout; redis-server's command
# line and /data; postgres' POSTGRES_* variables, /docker-entrypoint-initdb.d, PGDATA and the client
# tools. The host's trusted CA certificates (SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt) go
# into every stand-in, so that apt-get and pip inside builds verify TLS as the host does.
#
# Uses the engine in DOCKER_HOST (or the default one). Idempotent: the root filesystem is made once
# (image genai-test/debian:bookworm); the stand-ins are rebuilt only when their files change.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base="genai-test/debian:bookworm"
ca_bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"

log() { echo "stand-in-images: $*" >&2; }

if [ ! -r "$ca_bundle" ]; then
    log "error: no CA bundle at $ca_bundle (set SSL_CERT_FILE)"
    exit 1
fi
# The CA store is part of the base: a changed store makes a new base.
ca_sum="$(sha256sum "$ca_bundle" | cut -c1-16)"

if [ "$(docker image inspect --format '{{index .Config.Labels "genai.test.ca"}}' "$base" 2>/dev/null)" != "$ca_sum" ]; then
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || {
        log "error: debootstrap is not installed (tests/compose/install-engine.sh)"
        exit 1
    }
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm (minbase) from $mirror"
    PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include=ca-certificates \
        bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        rm -f "$root.log"
        exit 1
    }
    rm -f "$root.log"
    # One file per certificate, as update-ca-certificates expects them.
    mkdir -p "$root/usr/local/share/ca-certificates/host"
    awk -v dir="$root/usr/local/share/ca-certificates/host" '
        /-----BEGIN CERTIFICATE-----/ { n++; file = sprintf("%s/host-%03d.crt", dir, n) }
        file { print > file }
        /-----END CERTIFICATE-----/ { close(file); file = "" }
    ' "$ca_bundle"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
    # Small and reproducible: no package lists, no documentation that images never read.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        >"$root/etc/dpkg/dpkg.cfg.d/01-slim"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/01-slim"
    log "importing as $base"
    tar -C "$root" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL genai.test.ca=$ca_sum" \
        --change 'CMD ["bash"]' \
        - "$base" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi

# Dockerfile folder -> the official image's name it stands in for.
for pair in python:python:3.12-slim nginx:nginx:1.28 redis:redis:7.4 postgres:postgres:16; do
    dir="${pair%%:*}"
    tag="${pair#*:}"
    log "building $tag (stand-in, tests/compose/standins/$dir)"
    # The classic builder: needs no buildx plugin, and these are single-stage files.
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" "$here/standins/$dir" >/dev/null
done
log "done"
