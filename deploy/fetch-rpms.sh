#!/usr/bin/env bash
# The packages an air-gapped Red OS host needs, as a local repository (docs/red-os.md, "Air-gapped
# network"). Run on a connected machine with the SAME Red OS release and architecture as the host (the
# repositories decide the versions), as root or with sudo, with the repositories the host would use
# configured (Red OS's, and NVIDIA's for the container toolkit when --gpu):
#
#   deploy/fetch-rpms.sh [--gpu] [--kernel VERSION] [--also NAME]... OUT
#
#   --gpu             also the NVIDIA container toolkit, kernel-devel and the build tools for the driver
#   --kernel VERSION  the host's running kernel (`uname -r` there), for kernel-devel/kernel-headers
#                     (default: this machine's)
#   --also NAME       one more package (repeatable), e.g. the NVIDIA driver packages of your repository
#
# Every dependency is downloaded (`dnf download --resolve --alldeps`), also what this machine already has
# installed: without --alldeps, dnf skips those, and the host lacks them. Each name is fetched on its own,
# so that a name this release does not have is reported and skipped instead of failing the rest (dnf's
# default strict=1). Then `createrepo_c` makes the metadata, and OUT/genai-local.repo points dnf at the
# folder once it is copied to /opt/genai-rpms on the host. Pass OUT to `deploy/bundle.sh create --rpms`.
set -euo pipefail

gpu=0
kernel="$(uname -r)"
extra=()
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) gpu=1; shift ;;
        --kernel) kernel="${2:?--kernel needs a version}"; shift 2 ;;
        --also) extra+=("${2:?--also needs a package name}"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fetch-rpms: unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: $0 [--gpu] [--kernel VERSION] [--also NAME]... OUT" >&2; exit 2; }
command -v dnf >/dev/null || { echo "fetch-rpms: needs dnf (a Red OS machine of the host's release)" >&2; exit 1; }
command -v createrepo_c >/dev/null || { echo "fetch-rpms: needs createrepo_c (dnf install createrepo_c)" >&2; exit 1; }

# The engine: Red OS names the compose plugin docker-compose-plugin or docker-compose depending on the
# release; whichever exists is taken (both are tried). The rest: what the guide's steps use.
packages=(docker-ce docker-ce-cli containerd.io docker-compose-plugin docker-compose
    chrony firewalld policycoreutils-python-utils openssl tar)
if [ "$gpu" = 1 ]; then
    packages+=(nvidia-container-toolkit "kernel-devel-$kernel" "kernel-headers-$kernel" gcc make dkms
        elfutils-libelf-devel mokutil)
fi
packages+=("${extra[@]}")

mkdir -p "$out"
got=()
skipped=()
for name in "${packages[@]}"; do
    if dnf download --resolve --alldeps --destdir "$out" "$name" >"$out/.dnf.log" 2>&1; then
        got+=("$name")
    else
        skipped+=("$name")
        echo "fetch-rpms: not available here: $name ($(tail -1 "$out/.dnf.log"))" >&2
    fi
done
rm -f "$out/.dnf.log"

createrepo_c --quiet "$out"
cat >"$out/genai-local.repo" <<'EOF'
# The GenAI offline packages: copy the folder to /opt/genai-rpms, this file to /etc/yum.repos.d/.
# The bundle's SHA256SUMS vouches for the files; where policy asks for signatures too, set gpgcheck=1
# and gpgkey=file:///etc/pki/rpm-gpg/<each vendor's key> (Red OS's and NVIDIA's).
[genai-local]
name=GenAI offline packages
baseurl=file:///opt/genai-rpms
enabled=1
gpgcheck=0
EOF

echo "fetch-rpms: $(find "$out" -name '*.rpm' | wc -l) RPMs for: ${got[*]}"
[ ${#skipped[@]} -eq 0 ] || echo "fetch-rpms: not in these repositories (skipped): ${skipped[*]}"
if ! printf '%s\n' "${got[@]}" | grep -qx 'docker-compose-plugin\|docker-compose'; then
    echo "fetch-rpms: error: no compose package: get Compose v2.24+ another way (docs/red-os.md)" >&2
    exit 1
fi
