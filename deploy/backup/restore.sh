#!/usr/bin/env bash
# Restore a dump made by backup.sh (pg_dump custom format) into a database.
#
#   restore.sh [--clean [--if-exists]] [--jobs N] DUMP_FILE [TARGET]
#
# TARGET: a postgresql:// URL or a database name; default RESTORE_DATABASE_URL, else libpq's
#   PGDATABASE (with PGHOST, PGPORT, PGUSER, PGPASSWORD).
# By default the target must be empty (a fresh `createdb`): restoring over live tables would mix two
# states. Stop the services (gateway, auth, history) before restoring into the database they use.
#   --clean      drop each object of the dump from the target before recreating it (restore over an
#                existing GenAI database; objects that are not in the dump are left alone)
#   --if-exists  with --clean: use DROP ... IF EXISTS, so objects missing from the target are no error
#   --jobs N     restore with N parallel jobs (large databases); without it, the whole restore is one
#                transaction: it either completes or leaves the target as it was
# Objects are owned by the user restoring (--no-owner), so a dump moves between servers and users; the
# postgres-roles job (`docker compose up -d` runs it) then hands each service's schema back to its role.
set -euo pipefail

clean=0
if_exists=0
jobs=1

usage() {
    sed -n '2,19s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --clean) clean=1; shift ;;
        --if-exists) if_exists=1; shift ;;
        --jobs)
            jobs="${2:-}"
            case "$jobs" in '' | *[!0-9]* | 0) echo "error: --jobs needs a positive number" >&2; exit 2 ;; esac
            shift 2 ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) echo "error: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ "$#" -ge 1 ] && [ "$#" -le 2 ] || usage
dump="$1"
target="${2:-${RESTORE_DATABASE_URL:-${PGDATABASE:-}}}"

if [ "$if_exists" -eq 1 ] && [ "$clean" -eq 0 ]; then
    echo "error: --if-exists only makes sense with --clean" >&2
    exit 2
fi
if [ -z "$target" ]; then
    echo "error: give TARGET, or set RESTORE_DATABASE_URL or PGDATABASE" >&2
    exit 2
fi
if [ ! -r "$dump" ]; then
    echo "error: cannot read $dump" >&2
    exit 1
fi
if ! pg_restore --list "$dump" >/dev/null; then
    echo "error: $dump is not a pg_dump custom-format archive (or is damaged)" >&2
    exit 1
fi

tables="$(psql --no-psqlrc --no-password --tuples-only --no-align --set ON_ERROR_STOP=1 --dbname="$target" \
    --command "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'")"
if [ "$tables" != "0" ] && [ "$clean" -eq 0 ]; then
    echo "error: the target database is not empty ($tables tables, views or sequences)." >&2
    echo "Restore into a new database (createdb), or pass --clean to replace the objects in the dump." >&2
    exit 1
fi

args=(--no-password --no-owner --exit-on-error --dbname="$target")
if [ "$clean" -eq 1 ]; then
    args+=(--clean)
fi
if [ "$if_exists" -eq 1 ]; then
    args+=(--if-exists)
fi
if [ "$jobs" -gt 1 ]; then
    args+=(--jobs="$jobs")
else
    args+=(--single-transaction)
fi

pg_restore "${args[@]}" "$dump"
echo "restored $dump"
