#!/usr/bin/env bash
# Dump the GenAI PostgreSQL database into a timestamped file (pg_dump's custom format) and delete
# dumps older than the retention period. Restore with restore.sh next to this file.
#
#   backup.sh                  one dump, then retention
#   backup.sh --once           the same (for `docker compose run backup --once`, which replaces the
#                              service's `--every` arguments)
#   backup.sh --every SECONDS  forever: a dump every SECONDS (the compose `backup` service)
#
# Connection: BACKUP_DATABASE_URL (postgresql://...) if set, else libpq's PGHOST, PGPORT, PGUSER,
#   PGPASSWORD and PGDATABASE (a password in the environment, not on the command line, stays out of `ps`).
# BACKUP_DIR        where dumps go (default /backups), as PREFIX-YYYYmmddTHHMMSSZ.dump, mode 600
# BACKUP_PREFIX     file name prefix (default genai)
# BACKUP_KEEP_DAYS  delete this script's dumps older than this many days after a successful dump
#                   (default 14; 0 keeps every dump)
set -euo pipefail

dir="${BACKUP_DIR:-/backups}"
prefix="${BACKUP_PREFIX:-genai}"
keep_days="${BACKUP_KEEP_DAYS:-14}"
target="${BACKUP_DATABASE_URL:-${PGDATABASE:-}}"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) backup: $*"; }

case "$keep_days" in
    '' | *[!0-9]*) log "error: BACKUP_KEEP_DAYS must be a whole number of days, got '$keep_days'" >&2; exit 2 ;;
esac
case "$prefix" in
    '' | */* | *[!A-Za-z0-9._-]*) log "error: BACKUP_PREFIX must be a plain file name prefix, got '$prefix'" >&2; exit 2 ;;
esac
if [ -z "$target" ]; then
    log "error: set BACKUP_DATABASE_URL, or PGDATABASE (with PGHOST, PGUSER, PGPASSWORD)" >&2
    exit 2
fi

run_once() {
    # Dumps hold every user's history and password hashes: readable by the owner only.
    umask 077
    mkdir -p "$dir"
    local stamp final partial n=1
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    final="$dir/$prefix-$stamp.dump"
    while [ -e "$final" ]; do
        n=$((n + 1))
        final="$dir/$prefix-$stamp-$n.dump"
    done
    partial="$dir/.$(basename "$final").partial"

    # A half-written file never carries the final name: written aside, checked, then renamed.
    if ! pg_dump --format=custom --no-password --lock-wait-timeout=60s --dbname="$target" --file="$partial"; then
        rm -f "$partial"
        log "error: pg_dump failed; no new dump written" >&2
        return 1
    fi
    if ! pg_restore --list "$partial" >/dev/null; then
        rm -f "$partial"
        log "error: the new dump is unreadable; removed" >&2
        return 1
    fi
    mv "$partial" "$final"
    log "wrote $final ($(du -h "$final" | cut -f1))"

    # Retention only after a good dump, so a broken database never costs the old dumps.
    if [ "$keep_days" -gt 0 ]; then
        find "$dir" -maxdepth 1 -type f -name "$prefix-*.dump" -mmin +"$((keep_days * 1440))" \
            -print -delete | sed 's/^/deleted old dump /' | while read -r line; do log "$line"; done
    fi
    # Leftovers of an interrupted run.
    find "$dir" -maxdepth 1 -type f -name ".$prefix-*.dump.partial" -mmin +1440 -delete
}

if [ "${1:-}" = "--every" ]; then
    every="${2:-}"
    case "$every" in
        '' | *[!0-9]* | 0) log "error: --every needs a positive number of seconds" >&2; exit 2 ;;
    esac
    # As a container's main process: stop promptly on `docker stop` (sleep runs in the background).
    trap 'log "stopping"; exit 0' TERM INT
    log "dumping every $every s into $dir, keeping $keep_days days"
    while true; do
        run_once || log "will retry in $every s" >&2
        sleep "$every" &
        wait $!
    done
elif [ "$#" -gt 0 ] && [ "$*" != "--once" ]; then
    sed -n '2,18s/^# \{0,1\}//p' "$0" >&2
    exit 2
else
    run_once
fi
