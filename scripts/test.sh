#!/usr/bin/env bash
# The test command: prepares the server (scripts/test-setup.sh) and runs the whole suite.
# TEST_DATABASE_URL picks the server (default: the local one, postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-setup.sh
cargo test --locked "$@"
