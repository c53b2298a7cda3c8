#!/usr/bin/env bash
# Builds the Dockerfile with podman and runs the image against a PostgreSQL server as the
# container runtime would: uid 65532, read-only root, every capability dropped, the password from
# a secret file; `migrate`, then `verify`, then `migrate` again (nothing to do). Prints the image's
# size and the build's time. Run as root (podman's runtime runc, cgroup manager cgroupfs).
#
# No registry is reachable here, so the Dockerfile's two base images are build arguments and this
# script builds stand-ins for them from Debian's packages only, cached in podman's storage:
#   localhost/mcm-rust:bookworm         debootstrap --variant=minbase bookworm, then Debian's
#                                       rustc-web and cargo-web (bookworm-security), gcc, libc6-dev
#                                       and CA certificates, with the host's CA bundle trusted
#                                       (where the machine's TLS to crates.io is intercepted);
#   localhost/mcm-distroless:bookworm   FROM scratch: glibc, libgcc, the CA bundle, /tmp and a
#                                       user nonroot 65532, as gcr.io/distroless/cc-debian12:nonroot.
# Elsewhere, RUST_IMAGE= and RUNTIME_IMAGE= (empty) build from the Dockerfile's own defaults.
#
# Usage: scripts/image.sh [--no-cache]
#   IMAGE_DATABASE_HOST (127.0.0.1), IMAGE_DATABASE_PORT (5432): the server, reached through the
#   host's network; IMAGE_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres) prepares it
#   (scripts/test-setup.sh: the role mcm_pw, which must log in with its password) and creates
#   the database the image migrates. A run without the secret file must fail to log in.
set -euo pipefail
cd "$(dirname "$0")/.."

no_cache=()
[ "${1:-}" = "--no-cache" ] && no_cache=(--no-cache)
host=${IMAGE_DATABASE_HOST:-127.0.0.1}
port=${IMAGE_DATABASE_PORT:-5432}
admin=${IMAGE_ADMIN_URL:-postgres://postgres@$host:$port/postgres}
image=localhost/meta-chat-migrations:ci
pm() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }
# Limits the container's processes may be given here (the default of podman's, a million open
# files, is refused by this kernel's sandbox: "error setting rlimit").
limits=(--ulimit nofile=16384:16384 --ulimit nproc=32768:32768)
say() { printf 'image.sh: %s\n' "$*" >&2; }
# Prints how long the command given took.
timed() {
  local t0 t1
  t0=$(date +%s)
  "$@"
  t1=$(date +%s)
  say "$1: $((t1 - t0)) s"
}

need=""
for pair in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null || need="$need ${pair#*:}"
done
if [ -n "$need" ]; then
  say "installing$need"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

work=$(mktemp -d /var/tmp/mcm-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A minbase bookworm, imported once as localhost/mcm-debian:bookworm.
debian_base() {
  pm image exists localhost/mcm-debian:bookworm && return
  say "debootstrap --variant=minbase bookworm (Debian's mirror)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" \
    http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/rootfs" -c . | pm import - localhost/mcm-debian:bookworm >/dev/null
}

rust_stand_in() {
  pm image exists localhost/mcm-rust:bookworm && return
  say "building the stand-in of the Rust image: Debian's rustc-web and cargo-web"
  mkdir -p "$work/rust"
  cp /etc/ssl/certs/ca-certificates.crt "$work/rust/host-ca.crt"
  cat >"$work/rust/Containerfile" <<'EOF'
FROM localhost/mcm-debian:bookworm
RUN printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' > /etc/apt/sources.list \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc-web cargo-web gcc libc6-dev ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN update-ca-certificates >/dev/null
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
EOF
  pm build "${limits[@]}" --network host -q -t localhost/mcm-rust:bookworm "$work/rust" >/dev/null
}

# What distroless's cc image holds that the runner needs: glibc, libgcc, CA certificates, /tmp,
# and the user nonroot (65532).
runtime_stand_in() {
  pm image exists localhost/mcm-distroless:bookworm && return
  say "building the stand-in of the runtime image: glibc, libgcc, CA certificates, user 65532"
  local root="$work/runtime/root" files
  mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  # Every file of libc6 and libgcc-s1 (their documentation aside) at the path dpkg lists,
  # symlinks followed, and the CA bundle.
  pm run "${limits[@]}" --rm --network none -v "$root:/out" localhost/mcm-debian:bookworm sh -c '
    for f in $(dpkg -L libc6 libgcc-s1 | grep -v "^/usr/share/") /etc/ssl/certs/ca-certificates.crt; do
      if [ -f "$f" ]; then cp -L --parents "$f" /out; fi
    done'
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chown 65532:65532 "$root/home/nonroot"
  printf 'FROM scratch\nCOPY root/ /\nUSER 65532:65532\n' >"$work/runtime/Containerfile"
  pm build "${limits[@]}" --network none -q -t localhost/mcm-distroless:bookworm "$work/runtime" >/dev/null
}

build_args=()
if [ "${RUST_IMAGE-unset}" = unset ] || [ "${RUNTIME_IMAGE-unset}" = unset ]; then
  timed debian_base
  [ "${RUST_IMAGE-unset}" = unset ] && { timed rust_stand_in; RUST_IMAGE=localhost/mcm-rust:bookworm; }
  [ "${RUNTIME_IMAGE-unset}" = unset ] && { timed runtime_stand_in; RUNTIME_IMAGE=localhost/mcm-distroless:bookworm; }
fi
[ -n "${RUST_IMAGE:-}" ] && build_args+=(--build-arg "RUST_IMAGE=$RUST_IMAGE")
[ -n "${RUNTIME_IMAGE:-}" ] && build_args+=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit, dirty"

say "building the Dockerfile (${RUST_IMAGE:-default} -> ${RUNTIME_IMAGE:-default})"
started=$(date +%s.%N)
pm build "${limits[@]}" --network host "${no_cache[@]}" "${build_args[@]}" --build-arg "MCM_COMMIT=$commit" \
  -t "$image" -f Dockerfile . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
took=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
size=$(pm image inspect --format '{{.Size}}' "$image")
user=$(pm image inspect --format '{{.Config.User}}' "$image")
printf 'image %s: %s MB, user %s, built in %s s\n' "$image" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')" "$user" "$took"
[ "$user" = "65532:65532" ] || { say "the image runs as '$user', not 65532:65532"; exit 1; }

# A database of its own and a role that logs in with a password (scram over TCP, as
# scripts/test-setup.sh configures mcm_pw); the password reaches the container as a file.
scripts/test-setup.sh "$admin" >/dev/null
db="mcm_image_$$"
password=$(sed -n "s/.*ALTER ROLE mcm_pw PASSWORD '\([^']*\)'.*/\1/p" scripts/test-setup.sh)
[ -n "$password" ] || { say "no password for mcm_pw in scripts/test-setup.sh"; exit 1; }
psql -X -q -v ON_ERROR_STOP=1 "$admin" -c "CREATE DATABASE $db OWNER mcm_pw" >/dev/null
cleanup_db() { psql -X -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup_db EXIT
mkdir -p "$work/secrets"
printf '%s\n' "$password" >"$work/secrets/postgres_password"
chmod 0444 "$work/secrets/postgres_password"

# As Kubernetes' restricted profile runs it: uid 65532, read-only root, no capability.
run_with() {
  local secret=$1; shift
  pm run "${limits[@]}" --rm --network host --user 65532:65532 --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    -v "$work/secrets/postgres_password:/run/secrets/postgres_password:ro" \
    -e "DATABASE_URL=postgres://mcm_pw@$host:$port/$db?sslmode=disable" \
    ${secret:+-e PGPASSWORD_FILE=/run/secrets/postgres_password} \
    "$image" "$@"
}
run() { run_with secret "$@"; }
# The negative: without the secret file the role cannot log in, so the runs below log in with it.
if run_with "" --wait 0 status >"$work/out" 2>&1; then
  cat "$work/out" >&2
  say "the image logged in without the password: the server does not ask mcm_pw for it"
  exit 1
fi
for command in migrate verify migrate --version; do
  say "running: $command"
  if ! run "$command" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    say "the image's $command failed"
    exit 1
  fi
  if grep -q -e "$password" -e "${password:3:6}" -e "${password: -8}" "$work/out"; then
    say "the password was printed"
    exit 1
  fi
  tail -2 "$work/out"
done
grep -q "commit ${commit%%,*}" "$work/out" || { say "--version does not name commit $commit"; exit 1; }
echo "image.sh: built and ran $image: migrate, verify, migrate (nothing to do) as uid 65532"
# The build stages stay in podman's storage: they are the cache of the next build (the
# dependencies' layer above all); `podman image prune` frees them, and the next build is cold.
