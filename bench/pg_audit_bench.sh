#!/usr/bin/env bash
# The PostgreSQL audit sink with several writers (bench/pg_audit_bench.cpp):
# starts a PostgreSQL 15 of its own on a free loopback port (as the postgres
# user, which it must run as; default durability: fsync and synchronous
# commit on), runs the bench, then checks that the table holds every record
# once. Goal: 3 writers at 1,000 records/s in total, no errors, no deadlocks.
# Usage: bench/pg_audit_bench.sh [BUILD_DIR] [writers=3] [records_per_second=1000] [seconds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
pgbin=/usr/lib/postgresql/15/bin
[ -x "$pgbin/postgres" ] && command -v psql >/dev/null && id postgres >/dev/null 2>&1 ||
  { echo "pg_audit_bench: PostgreSQL 15 is not installed (scripts/setup.sh)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
chmod 755 "$work"
mkdir "$work/pgdata"
chown postgres:postgres "$work/pgdata"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
pg=
trap '[ -n "$pg" ] && kill "$pg" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
(cd "$work" && as_postgres "$pgbin/initdb" -D "$work/pgdata" -A trust -U postgres >/dev/null)
(cd "$work" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$pgbin/postgres" \
  -D "$work/pgdata" -p "$port" -k "$work/pgdata" -c listen_addresses=127.0.0.1 \
  >"$work/pg.log" 2>&1) &
pg=$!
for _ in $(seq 200); do psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.05; done
url="postgresql://postgres@127.0.0.1:$port/postgres"
echo "pg_audit_bench: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
out=$(FORESHORE_BENCH_POSTGRES="$url" "$build/bench/pg_audit_bench" "$@") || status=$?
echo "$out"
want=$(sed -n 's/^expected rows //p' <<<"$out")
got=$(psql "$url" -Atc 'SELECT count(*), count(DISTINCT request_id) FROM foreshore_requests')
echo "rows in PostgreSQL (all, distinct): ${got/|/, }; expected $want"
deadlocks=$(psql "$url" -Atc "SELECT deadlocks FROM pg_stat_database WHERE datname = 'postgres'")
echo "deadlocks reported by PostgreSQL: $deadlocks"
[ "$got" = "$want|$want" ] && [ "$deadlocks" = 0 ] || status=1
exit "$status"
