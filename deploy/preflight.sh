#!/usr/bin/env bash
# Checks a host before `docker compose up` (docs/red-os.md runs it at each step; run it again after any
# change). One line per check: "ok", "WARN" or "FAIL" with what to do on the next line, or "skip" with
# the reason it cannot run here. Exit status 1 when a check failed, else 0. Secrets are never printed.
#
#   deploy/preflight.sh [--env-file FILE] [--profile P]... [--name HOST]... [--no-gpu-container]
#
#   --env-file FILE     the settings (default: .env beside this script)
#   --profile P         the compose profiles to check for (default: COMPOSE_PROFILES of the .env file)
#   --name HOST         a name clients use, which the certificate must carry (default: `hostname -f`)
#   --no-gpu-container  do not start the test container that looks for the GPUs
#
# Needs bash, coreutils, openssl; the engine checks need docker. As root, or a user allowed to use
# docker (SELinux booleans and ports of other users' processes are read as root).
set -uo pipefail

deploy_dir="$(cd "$(dirname "$0")" && pwd)"
env_file="$deploy_dir/.env"
profiles=()
names=()
gpu_container=1
while [ $# -gt 0 ]; do
    case "$1" in
        --env-file) env_file="${2:?--env-file needs a file}"; shift 2 ;;
        --profile) profiles+=("${2:?--profile needs a name}"); shift 2 ;;
        --name) names+=("${2:?--name needs a host name}"); shift 2 ;;
        --no-gpu-container) gpu_container=0; shift ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "preflight: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
done

SECRETS=(POSTGRES_PASSWORD POSTGRES_AUTH_PASSWORD POSTGRES_HISTORY_PASSWORD REDIS_PASSWORD GENAI_AUTH_JWT_SECRET
    GENAI_UPSTREAM_API_KEY)
GIB=$((1024 * 1024 * 1024))
count_ok=0 count_fail=0 count_warn=0 count_skip=0

ok() { printf 'ok    %-22s %s\n' "$1" "$2"; count_ok=$((count_ok + 1)); }
skip() { printf 'skip  %-22s %s\n' "$1" "$2"; count_skip=$((count_skip + 1)); }
fail() {
    printf 'FAIL  %-22s %s\n' "$1" "$2"
    printf '      %-22s -> %s\n' "" "$3"
    count_fail=$((count_fail + 1))
}
warn() {
    printf 'WARN  %-22s %s\n' "$1" "$2"
    printf '      %-22s -> %s\n' "" "$3"
    count_warn=$((count_warn + 1))
}
have() { command -v "$1" >/dev/null 2>&1; }
# a.b.c >= x.y.z
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
gib() { echo $(($1 / GIB)); }
# Free bytes of the file system holding PATH (or its nearest existing parent).
free_bytes() {
    local path="$1"
    while [ ! -e "$path" ] && [ "$path" != / ]; do path="$(dirname "$path")"; done
    df -Pk "$path" 2>/dev/null | awk 'NR == 2 { print $4 * 1024 }'
}

# --- the .env file, read as compose reads it --------------------------------------------------------------

declare -A env=()
env_lines_bad=()
env_dupes=()
read_env() {
    local n=0 line name value
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            env_lines_bad+=("line $n")
            continue
        fi
        name="${BASH_REMATCH[2]}"
        value="${BASH_REMATCH[3]}"
        if [[ "$value" =~ ^\"(.*)\"[[:space:]]*(#.*)?$ ]] || [[ "$value" =~ ^\'(.*)\'[[:space:]]*(#.*)?$ ]]; then
            value="${BASH_REMATCH[1]}"
        elif [[ "$value" =~ ^[\"\'] ]]; then
            env_lines_bad+=("line $n (unterminated quote)")
            continue
        else
            value="${value%%[[:space:]]#*}"
            value="${value%"${value##*[![:space:]]}"}"
        fi
        [ -z "${env[$name]+set}" ] || env_dupes+=("$name")
        env[$name]="$value"
    done <"$env_file"
}
setting() { local v="${env[$1]:-}"; echo "${v:-$2}"; }
# A setting naming a host path: relative ones are relative to deploy/, as compose reads them.
host_path() {
    local p
    p="$(setting "$1" "$2")"
    case "$p" in /*) echo "$p" ;; *) echo "$deploy_dir/${p#./}" ;; esac
}

echo "preflight of $deploy_dir"
env_ok=1
if [ ! -f "$env_file" ]; then
    fail ".env" "no settings file at $env_file" \
        "cp .env.example .env && chmod 600 .env, then fill in the secrets (docs/red-os.md, step 4)"
    env_ok=0
else
    read_env
    if [ ${#env_lines_bad[@]} -gt 0 ]; then
        fail ".env" "$env_file: not NAME=value at ${env_lines_bad[*]}" \
            "write each setting as NAME=value on its own line (no spaces around =), comments start with #"
        env_ok=0
    else
        perms="$(stat -c %a "$env_file")"
        if [ "${perms: -2}" != "00" ]; then
            warn ".env" "readable by others (mode $perms): it holds the secrets" "chmod 600 $env_file"
        elif [ ${#env_dupes[@]} -gt 0 ]; then
            warn ".env" "set more than once (the last one counts): ${env_dupes[*]}" "keep one line per setting"
        else
            ok ".env" "$env_file, mode $perms"
        fi
    fi
fi

if [ ${#profiles[@]} -eq 0 ]; then
    IFS=', ' read -r -a profiles <<<"${COMPOSE_PROFILES:-$(setting COMPOSE_PROFILES "")}"
fi
uses() { local p; for p in "${profiles[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
gpu=0
uses gpu && gpu=1
echo "profiles: ${profiles[*]:-(none)}"

# --- secrets ------------------------------------------------------------------------------------------------

if [ "$env_ok" = 1 ]; then
    problems=()
    declare -A seen=()
    for name in "${SECRETS[@]}"; do
        value="${env[$name]:-}"
        lower="${value,,}"
        if [ -z "$value" ]; then
            problems+=("$name is missing or empty")
        elif [ ${#value} -lt 32 ]; then
            problems+=("$name is ${#value} characters, needs 32 or more")
        elif [[ "$lower" =~ change.?me|secret|password|example|placeholder|^x+$ ]]; then
            problems+=("$name looks like a placeholder")
        elif [[ ! "$value" =~ ^[A-Za-z0-9._~-]+$ ]]; then
            problems+=("$name has characters that break the connection URLs it goes into")
        elif [ -n "${seen[$value]:-}" ]; then
            problems+=("$name is the same as ${seen[$value]}")
        fi
        [ -z "$value" ] || seen[$value]="$name"
    done
    grafana_password="${env[GRAFANA_ADMIN_PASSWORD]:-}"
    if uses monitoring && [ ${#grafana_password} -lt 12 ]; then
        problems+=("GRAFANA_ADMIN_PASSWORD (profile monitoring) is missing or shorter than 12 characters")
    fi
    admin_password="${env[GENAI_ADMIN_PASSWORD]:-}"
    if [ -n "$admin_password" ] && [ ${#admin_password} -lt 8 ]; then
        problems+=("GENAI_ADMIN_PASSWORD is shorter than 8 characters (the first admin's job refuses it)")
    fi
    if [ ${#problems[@]} -eq 0 ]; then
        ok "secrets" "${SECRETS[*]} set, 32+ random-looking URL-safe characters each"
    else
        msg="$(printf '%s; ' "${problems[@]}")"
        fail "secrets" "${msg%; }" "generate each one: openssl rand -hex 32 (docs/red-os.md, step 4)"
    fi
else
    skip "secrets" "the .env file could not be read (above)"
fi

# --- engine and compose -------------------------------------------------------------------------------------

engine_ok=0
compose_ok=0
if ! have docker; then
    fail "engine" "no docker command" "install Docker CE (docs/red-os.md, step 1)"
elif docker --version 2>/dev/null | grep -qi podman; then
    fail "engine" "docker is Podman's emulation ($(docker --version 2>/dev/null))" \
        "Podman is not supported for this stack (docs/red-os.md, \"Docker or Podman\"): install Docker CE"
elif ! info="$(docker info --format '{{.ServerVersion}}|{{.DockerRootDir}}|{{json .SecurityOptions}}' 2>&1)"; then
    fail "engine" "docker does not answer: $(echo "$info" | tail -1)" \
        "sudo systemctl enable --now docker; run this as root (or a member of the docker group)"
else
    IFS='|' read -r engine_version docker_root security_options <<<"$info"
    engine_ok=1
    ok "engine" "Docker $engine_version, data-root $docker_root"
fi

if have docker && compose_version="$(docker compose version --short 2>/dev/null)"; then
    compose_version="${compose_version#v}"
    if version_ge "${compose_version%%[-+]*}" 2.24.0; then
        ok "compose" "docker compose $compose_version"
        compose_ok=1
    else
        fail "compose" "docker compose $compose_version is older than 2.24" \
            "install Compose v2.24+ as /usr/libexec/docker/cli-plugins/docker-compose (docs/red-os.md, \"Docker or Podman\")"
    fi
elif have docker-compose; then
    standalone="$(docker-compose version --short 2>/dev/null || docker-compose --version 2>/dev/null)"
    fail "compose" "only a standalone docker-compose ($standalone): \`docker compose\` does not work" \
        "v2.24+: sudo mkdir -p /usr/libexec/docker/cli-plugins && sudo ln -s $(command -v docker-compose) /usr/libexec/docker/cli-plugins/docker-compose; v1: install Compose v2 (docs/red-os.md)"
else
    fail "compose" "no docker compose" "install the compose plugin (docs/red-os.md, step 1)"
fi

compose() {
    docker compose --project-directory "$deploy_dir" --env-file "$env_file" -f "$deploy_dir/docker-compose.yml" \
        "${profile_args[@]}" "$@"
}
profile_args=()
for p in "${profiles[@]}"; do profile_args+=(--profile "$p"); done

images=()
missing=()
if [ "$compose_ok" = 1 ] && [ "$env_ok" = 1 ]; then
    if out="$(compose config --quiet 2>&1)"; then
        ok "compose file" "docker-compose.yml and .env read without error"
        mapfile -t images < <(compose config --images 2>/dev/null | sort -u)
    else
        fail "compose file" "$(echo "$out" | tail -1)" "fix the setting it names in $env_file"
    fi
else
    skip "compose file" "needs docker compose v2.24+ and a readable .env (above)"
fi

# --- images ---------------------------------------------------------------------------------------------------

if [ "$engine_ok" = 1 ] && [ ${#images[@]} -gt 0 ]; then
    for image in "${images[@]}"; do
        docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        ok "images" "${#images[@]} present: ${images[*]}"
    else
        fail "images" "missing: ${missing[*]}" \
            "air-gapped: deploy/bundle.sh verify-and-load BUNDLE; connected: docker compose build / docker compose pull"
    fi
else
    skip "images" "needs the engine and the compose file (above)"
fi

# --- SELinux --------------------------------------------------------------------------------------------------

selinux=""
if have getenforce; then
    selinux="$(getenforce 2>/dev/null)"
    case "$selinux" in
        Enforcing) ok "selinux" "enforcing" ;;
        Permissive) warn "selinux" "permissive: denials are logged, not enforced" \
            "keep it enforcing (setenforce 1; SELINUX=enforcing in /etc/selinux/config); the volumes carry :z/:Z labels" ;;
        *) warn "selinux" "${selinux:-unknown}" "Red OS runs SELinux enforcing; the compose file's :z/:Z labels assume it" ;;
    esac
    if [ "$selinux" != Disabled ] && [ "$engine_ok" = 1 ]; then
        if [[ "$security_options" == *selinux* ]]; then
            ok "docker selinux" "the daemon labels containers and :z/:Z volumes"
        else
            fail "docker selinux" "the daemon runs without SELinux support: :z/:Z volumes are not relabelled" \
                "add \"selinux-enabled\": true to /etc/docker/daemon.json, systemctl restart docker"
        fi
    fi
else
    skip "selinux" "no SELinux on this host (getenforce not found)"
fi

if [ "$gpu" = 0 ]; then
    skip "container_use_devices" "no gpu profile: no device is passed to a container"
elif [ "$selinux" != Enforcing ] && [ "$selinux" != Permissive ]; then
    skip "container_use_devices" "SELinux is not active here"
elif ! have getsebool; then
    fail "container_use_devices" "getsebool not found" "dnf install policycoreutils"
elif getsebool container_use_devices 2>/dev/null | grep -q -- '--> on'; then
    ok "container_use_devices" "on: containers may open /dev/nvidia*"
else
    fail "container_use_devices" "off: vLLM gets \"Failed to initialize NVML: Insufficient Permissions\"" \
        "sudo setsebool -P container_use_devices 1"
fi

# --- disk -------------------------------------------------------------------------------------------------------

if [ "$engine_ok" = 1 ]; then
    # Images still to load need their size again while loading; the vLLM image alone is 25-28 GB.
    need=$((10 * GIB))
    if [ ${#images[@]} -gt 0 ] && [ ${#missing[@]} -gt 0 ]; then
        if [ "$gpu" = 1 ]; then need=$((need + 40 * GIB)); else need=$((need + 5 * GIB)); fi
    fi
    free="$(free_bytes "$docker_root")"
    if [ -z "$free" ]; then
        skip "disk: images" "cannot read the free space of $docker_root"
    elif [ "$free" -ge "$need" ]; then
        ok "disk: images" "$(gib "$free") GiB free under $docker_root (data-root: images, containers, volumes)"
    else
        fail "disk: images" "$(gib "$free") GiB free under $docker_root, needs $(gib "$need") GiB" \
            "free space, or move Docker's data-root to a large volume (docs/red-os.md, \"Disk\")"
    fi
else
    skip "disk: images" "needs the engine (above): Docker's data-root is where images and volumes live"
fi

backup_dir="$(host_path GENAI_BACKUP_DIR ./backups)"
free="$(free_bytes "$backup_dir")"
if [ -z "$free" ]; then
    skip "disk: backups" "cannot read the free space of $backup_dir"
elif [ "$free" -ge $((5 * GIB)) ]; then
    ok "disk: backups" "$(gib "$free") GiB free for $backup_dir"
else
    fail "disk: backups" "$(gib "$free") GiB free for $backup_dir" \
        "point GENAI_BACKUP_DIR at a volume with room for BACKUP_KEEP_DAYS dumps (5 GiB or more)"
fi

if [ "$gpu" = 1 ]; then
    model="$(host_path GENAI_MODEL_DIR ./models)/$(setting VLLM_MODEL model)"
    if [ -f "$model/config.json" ] && compgen -G "$model/tokenizer*" >/dev/null \
        && { compgen -G "$model/*.safetensors" >/dev/null || compgen -G "$model/*.bin" >/dev/null; }; then
        ok "model" "$model: config.json, tokenizer, $(du -sh "$model" | cut -f1)"
    else
        fail "model" "$model is not a complete model folder (config.json, tokenizer*, *.safetensors)" \
            "copy the model's folder there (deploy/bundle.sh verify-and-load --install-to), or fix GENAI_MODEL_DIR / VLLM_MODEL"
    fi
else
    skip "model" "no gpu profile: the cpu profile's model is inside the genai-llamacpp image"
fi

# --- GPU --------------------------------------------------------------------------------------------------------

host_gpus=0
if [ "$gpu" = 0 ]; then
    skip "nvidia-smi" "no gpu profile (${profiles[*]:-none}): no GPU needed"
elif ! have nvidia-smi; then
    advice="install the NVIDIA driver (docs/red-os.md, \"NVIDIA driver\"): kernel-devel-$(uname -r), nouveau blacklisted"
    if lsmod 2>/dev/null | grep -q '^nouveau'; then advice="nouveau is loaded: blacklist it, dracut -f, reboot; then $advice"; fi
    fail "nvidia-smi" "not found: no NVIDIA driver on this host" "$advice"
elif ! gpus="$(nvidia-smi -L 2>&1)"; then
    advice="check the driver: dmesg | grep -i nvidia; kernel-devel-$(uname -r) installed when it was built"
    if have mokutil && mokutil --sb-state 2>/dev/null | grep -qi enabled; then
        advice="Secure Boot is on: the nvidia module must be signed with an enrolled key (docs/red-os.md); $advice"
    fi
    fail "nvidia-smi" "$(echo "$gpus" | tail -1)" "$advice"
else
    host_gpus="$(grep -c '^GPU ' <<<"$gpus")"
    tp="$(setting VLLM_TENSOR_PARALLEL_SIZE 1)"
    if [ "$host_gpus" -lt "$tp" ]; then
        fail "nvidia-smi" "$host_gpus GPU(s), VLLM_TENSOR_PARALLEL_SIZE is $tp" "lower VLLM_TENSOR_PARALLEL_SIZE to the GPUs there are"
    elif [ "$host_gpus" -gt "$tp" ]; then
        warn "nvidia-smi" "$host_gpus GPUs, VLLM_TENSOR_PARALLEL_SIZE is $tp: $((host_gpus - tp)) GPU(s) idle" \
            "VLLM_TENSOR_PARALLEL_SIZE=$host_gpus and VLLM_GPU_COUNT=$host_gpus (docs/red-os.md, \"Two GPUs\")"
    else
        ok "nvidia-smi" "$host_gpus GPU(s): $(sed -n 's/^GPU [0-9]*: \([^(]*\) (.*/\1/p' <<<"$gpus" | sort | uniq -c | xargs)"
    fi
fi

if [ "$gpu" = 0 ]; then
    skip "gpu in a container" "no gpu profile: no GPU needed"
elif [ "$host_gpus" = 0 ]; then
    skip "gpu in a container" "the host sees no GPU (above)"
elif [ "$gpu_container" = 0 ]; then
    skip "gpu in a container" "--no-gpu-container"
elif [ "$engine_ok" = 0 ]; then
    skip "gpu in a container" "needs the engine (above)"
else
    vllm_image="$(setting VLLM_IMAGE vllm/vllm-openai:v0.11.0)"
    if ! docker image inspect "$vllm_image" >/dev/null 2>&1; then
        skip "gpu in a container" "$vllm_image is not loaded yet (images, above)"
    elif listed="$(docker run --rm --gpus all --network none --entrypoint nvidia-smi "$vllm_image" -L 2>&1)"; then
        in_container="$(grep -c '^GPU ' <<<"$listed")"
        if [ "$in_container" = "$host_gpus" ]; then
            ok "gpu in a container" "$in_container GPU(s) visible inside $vllm_image"
        else
            fail "gpu in a container" "$in_container of $host_gpus GPUs visible inside $vllm_image" \
                "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
        fi
    else
        case "$listed" in
            *Insufficient\ Permissions*) advice="SELinux: sudo setsebool -P container_use_devices 1" ;;
            *"could not select device driver"*) advice="sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker" ;;
            *) advice="docs/red-os.md, \"NVIDIA driver and container toolkit\"" ;;
        esac
        fail "gpu in a container" "$(echo "$listed" | tail -1)" "$advice"
    fi
fi

# --- time -------------------------------------------------------------------------------------------------------

if have timedatectl && synced="$(timedatectl show -p NTPSynchronized --value 2>/dev/null)"; then
    if [ "$synced" = yes ]; then
        ok "time sync" "the clock is synchronised (timedatectl)"
    else
        fail "time sync" "the clock is not synchronised" \
            "sudo systemctl enable --now chronyd; point /etc/chrony.conf at the site's NTP server; chronyc makestep"
    fi
elif have chronyc && tracking="$(chronyc tracking 2>/dev/null)"; then
    if grep -q 'Leap status *: Normal' <<<"$tracking"; then
        ok "time sync" "chronyd is synchronised"
    else
        fail "time sync" "chronyd is not synchronised" "point /etc/chrony.conf at the site's NTP server; chronyc makestep"
    fi
else
    skip "time sync" "neither timedatectl (no systemd here) nor chronyc answers"
fi

# --- network ----------------------------------------------------------------------------------------------------

bind_address="$(setting GENAI_BIND_ADDRESS 0.0.0.0)"
if ! have ss; then
    skip "ports" "ss (iproute) not found"
else
    taken=()
    for port in "$(setting GENAI_HTTPS_PORT 443)" "$(setting GENAI_HTTP_PORT 80)"; do
        holders="$(ss -Hltnp "( sport = :$port )" 2>/dev/null)"
        [ -n "$holders" ] || continue
        # This stack's own nginx (a restart, an upgrade) is no conflict.
        if [ "$engine_ok" = 1 ] && docker ps --filter "publish=$port" --format '{{.Names}}' 2>/dev/null | grep -q nginx; then
            continue
        fi
        taken+=("$port ($(grep -o 'users:(("[^"]*"' <<<"$holders" | head -1 | cut -d'"' -f2))")
    done
    if [ ${#taken[@]} -eq 0 ]; then
        ok "ports" "$(setting GENAI_HTTPS_PORT 443) and $(setting GENAI_HTTP_PORT 80) free on $bind_address (or this stack's nginx)"
    else
        fail "ports" "taken: ${taken[*]}" "stop that service, or set GENAI_HTTPS_PORT / GENAI_HTTP_PORT"
    fi
fi

if ! have firewall-cmd; then
    skip "firewall" "no firewalld on this host"
elif [ "$(firewall-cmd --state 2>/dev/null)" != running ]; then
    warn "firewall" "firewalld is not running" "sudo systemctl enable --now firewalld (docs/red-os.md, \"Firewall\")"
elif [ "$bind_address" = 0.0.0.0 ]; then
    warn "firewall" "nginx publishes on every interface: Docker's published ports pass firewalld's zones" \
        "set GENAI_BIND_ADDRESS to the clients' interface, or add DOCKER-USER rules (docs/red-os.md, \"Firewall\")"
else
    ok "firewall" "firewalld running; nginx bound to $bind_address only"
fi

# --- certificate ------------------------------------------------------------------------------------------------

tls_dir="$(host_path GENAI_TLS_DIR ./tls)"
crt="$tls_dir/server.crt"
key="$tls_dir/server.key"
if [ ${#names[@]} -eq 0 ]; then
    names=("$(hostname -f 2>/dev/null || hostname)")
fi
if ! have openssl; then
    skip "certificate" "openssl not found"
elif [ ! -f "$crt" ] || [ ! -f "$key" ]; then
    fail "certificate" "no $crt and $key" \
        "./nginx/make-selfsigned-cert.sh NAME IP, or the corporate CA's (docs/operations.md, \"TLS certificates\")"
elif ! subject="$(openssl x509 -in "$crt" -noout -subject 2>&1)"; then
    fail "certificate" "$crt is not a PEM certificate: $(echo "$subject" | tail -1)" \
        "docs/operations.md, \"TLS certificates\" (DER: openssl x509 -inform der -in X -out server.crt)"
else
    problems=()
    advice=()
    if [ "$(openssl x509 -in "$crt" -noout -pubkey 2>/dev/null | sha256sum)" != \
        "$(openssl pkey -in "$key" -pubout 2>/dev/null | sha256sum)" ]; then
        problems+=("server.key does not belong to server.crt")
        advice+=("use the key the request was made with")
    fi
    not_before="$(openssl x509 -in "$crt" -noout -startdate | cut -d= -f2)"
    not_after="$(openssl x509 -in "$crt" -noout -enddate | cut -d= -f2)"
    if [ "$(date -d "$not_before" +%s)" -gt "$(date +%s)" ]; then
        problems+=("valid only from $not_before: this clock is behind, or was ahead when it was made")
        advice+=("synchronise the clock (time sync), then make the certificate again")
    fi
    if ! openssl x509 -in "$crt" -noout -checkend 0 >/dev/null; then
        problems+=("expired $not_after")
        advice+=("renew it (docs/operations.md, \"TLS certificates\")")
    fi
    sans="$(openssl x509 -in "$crt" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')"
    for name in "${names[@]}"; do
        case ",$sans," in
            *",DNS:$name,"* | *",IPAddress:$name,"*) ;;
            *) problems+=("$name is not in subjectAltName (${sans:-none})")
               advice+=("make it with every name clients type") ;;
        esac
    done
    if [ ${#problems[@]} -gt 0 ]; then
        msg="$(printf '%s; ' "${problems[@]}")"
        tip="$(printf '%s; ' "${advice[@]}")"
        fail "certificate" "${msg%; }" "${tip%; }"
    elif ! openssl x509 -in "$crt" -noout -checkend $((30 * 86400)) >/dev/null; then
        warn "certificate" "expires $not_after, within 30 days" "renew it (docs/operations.md, \"TLS certificates\")"
    else
        ok "certificate" "${sans}, until $not_after"
    fi
fi

total=$((count_ok + count_fail + count_warn + count_skip))
echo "preflight: $total checks: $count_ok ok, $count_fail failed, $count_warn warnings, $count_skip skipped"
[ "$count_fail" -eq 0 ]
