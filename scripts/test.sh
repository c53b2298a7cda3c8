#!/usr/bin/env bash
# The test command: installs what the suite needs and a fresh machine lacks (Debian packages:
# PgBouncer for tests/pooler.rs, iptables and iproute2 for the silent network paths of
# tests/urls.rs, openssl for tests/tls.rs; cargo-nextest, which runs the suite's tests in
# parallel processes), prepares the server (scripts/test-setup.sh), and runs the whole suite.
# Run it as root (it configures the server and installs packages).
# TEST_DATABASE_URL picks the server (default: the local one, postgres@127.0.0.1:5432).
# Arguments go to cargo nextest run (a filter, --no-fail-fast, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

need=""
for pair in pgbouncer:pgbouncer iptables:iptables ip:iproute2 ss:iproute2 openssl:openssl \
            unshare:util-linux pgrep:procps; do
  command -v "${pair%%:*}" >/dev/null || need="$need ${pair#*:}"
done
if [ -n "$need" ]; then
  echo "test.sh: installing$need" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest (from crates.io)" >&2
  cargo install --locked --quiet cargo-nextest
fi

scripts/test-setup.sh
cargo nextest run --locked --no-fail-fast "$@"
cargo test --locked --doc --quiet
