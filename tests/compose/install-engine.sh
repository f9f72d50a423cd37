#!/usr/bin/env bash
# The container engine tests/test_compose_stack.py runs the production stack on, installed when missing
# (Debian/Ubuntu, as root): Debian's docker.io (dockerd, containerd, runc, the docker CLI), debootstrap
# (for tests/compose/stand-in-images.sh) and Compose v2.24+ as the docker CLI plugin. Does nothing when
# everything is there; exits 3 when it cannot install (not root, no apt-get): the test then skips.
#
# Compose: bookworm's docker-compose is v1 and refuses the compose file (top-level `name`, `depends_on`
# with `required`); Debian trixie's docker-compose package is Compose v2 and installs on bookworm as is
# (a static binary). Its .deb is fetched with apt from the trixie suite, through a package list of its
# own, so the system's sources are left as they are.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

compose_ok() {
    local version
    version="$(docker compose version --short 2>/dev/null)" || return 1
    version="${version#v}"
    # 2.24 or newer
    [ "$(printf '%s\n2.24.0\n' "${version%%[-+]*}" | sort -V | head -1)" = "2.24.0" ]
}

packages=()
have dockerd || packages+=(docker.io)
have debootstrap || packages+=(debootstrap)
if [ ${#packages[@]} -eq 0 ] && compose_ok; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install ${packages[*]:-} Compose v2: needs root and apt-get" >&2
    exit 3
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#packages[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! compose_ok; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/sources"
    uri="$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/* *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
    uri="${uri:-http://deb.debian.org/debian}"
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" >"$work/sources/trixie.sources"
    apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/sources"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::Cache::archives=$work/archives"
        -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$work" && apt-get "${apt_opts[@]}" download docker-compose >/dev/null)
    dpkg -i "$work"/docker-compose_*.deb >/dev/null
    compose_ok || {
        echo "docker compose is still not v2.24+ after installing trixie's docker-compose" >&2
        exit 1
    }
fi
