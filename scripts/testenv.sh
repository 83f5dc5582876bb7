#!/usr/bin/env bash
# testenv.sh CMD...: run CMD with a throwaway PostgreSQL cluster.
#
# The cluster lives in a private directory, listens on a private socket
# directory and a free loopback port, and is removed afterwards, as are any
# nginx instances the specs left behind. PostgreSQL refuses to run as root,
# so as root it runs as the `postgres` system user.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pgbin/initdb" ] || { echo "testenv: PostgreSQL server binaries not found" >&2; exit 2; }

root=$(mktemp -d /tmp/pksync-test.XXXXXX)
chmod 755 "$root"
mkdir -p "$root/pg" "$root/sock"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres:postgres "$root/pg" "$root/sock"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  local rc=$?
  for pidfile in "$root"/nginx-*/logs/nginx.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$root/pg/data" -m immediate stop >/dev/null 2>&1 || true
  # extra clusters a spec started (helper.start_cluster) and did not stop
  for data in "$root"/cluster*/data; do
    [ -d "$data" ] && "${as_pg[@]}" "$pgbin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  done
  if [ -n "${PKSYNC_KEEP_TESTENV:-}" ]; then echo "testenv: kept $root" >&2; else rm -rf "$root"; fi
  exit $rc
}
trap cleanup EXIT INT TERM

port=$(lua5.4 "$repo/scripts/freeport.lua")
"${as_pg[@]}" "$pgbin/initdb" -D "$root/pg/data" -U postgres --auth=trust \
  -E UTF8 --locale=C >"$root/pg/initdb.log" 2>&1 || { cat "$root/pg/initdb.log" >&2; exit 2; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$root/pg/data" -l "$root/pg/server.log" -w -t 60 \
  -o "-p $port -k $root/sock -c listen_addresses=127.0.0.1 -c fsync=off \
      -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
      -c shared_buffers=256MB" start >/dev/null \
  || { cat "$root/pg/server.log" >&2; exit 2; }

export PKSYNC_TEST_ROOT="$root" PKSYNC_TEST_PGHOST="$root/sock" PKSYNC_TEST_PGPORT="$port"
export PKSYNC_REPO="$repo"
# Specs talk to loopback only; never through a proxy from the environment.
export no_proxy="127.0.0.1,localhost" NO_PROXY="127.0.0.1,localhost"
"$@"
