#!/usr/bin/env bash
# Prepares a PostgreSQL server for the test suite, idempotently:
#   - ssl = on (Debian's snakeoil certificate), for the sslmode tests;
#   - a role mcm_pw that must authenticate with its password over TCP (scram-sha-256), for the
#     tests that grep everything the runner prints for the password.
# It edits the server's pg_hba.conf (one line, first) and reloads it. Run as root.
# Usage: scripts/test-setup.sh [ADMIN_URL]   (default: $TEST_DATABASE_URL, else the local server)
set -euo pipefail
url=${1:-${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
q() { psql "$url" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

hba=$(q "SHOW hba_file")
if ! grep -q '^host all mcm_pw ' "$hba"; then
  # The first matching line wins: this one must come before any trust line.
  sed -i '1i host all mcm_pw 127.0.0.1/32 scram-sha-256' "$hba"
fi
q "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mcm_pw') THEN CREATE ROLE mcm_pw LOGIN; END IF; END \$\$"
q "SET password_encryption = 'scram-sha-256'; ALTER ROLE mcm_pw PASSWORD 'Pw-7f3a9c-never-printed'"

if [ "$(q 'SHOW ssl')" != on ]; then
  data=$(q "SHOW data_directory")
  install -o postgres -g postgres -m 0644 /etc/ssl/certs/ssl-cert-snakeoil.pem "$data/server.crt"
  install -o postgres -g postgres -m 0600 /etc/ssl/private/ssl-cert-snakeoil.key "$data/server.key"
  q "ALTER SYSTEM SET ssl_cert_file = 'server.crt'"
  q "ALTER SYSTEM SET ssl_key_file = 'server.key'"
  q "ALTER SYSTEM SET ssl = on"
fi
q "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 1 20); do [ "$(q 'SHOW ssl')" = on ] && break; sleep 0.25; done
echo "test-setup: $(q 'SHOW server_version'), ssl $(q 'SHOW ssl'), role mcm_pw with scram-sha-256 on 127.0.0.1"
