# meta-chat-migrate: the schema runner, as the init step the application waits for.
# Build: docker build -t meta-chat-migrations .
# Run:   docker run --rm -e DATABASE_URL=postgres://... meta-chat-migrations          (migrate)
#        docker run --rm -e DATABASE_URL=postgres://... meta-chat-migrations verify
#
# Dependencies are cached with cargo-chef rather than BuildKit cache mounts: the compiled
# dependencies end up in an ordinary image layer (the `cook` step), keyed only on the manifests
# and Cargo.lock, so the cache also survives in a registry cache (--cache-from/--cache-to) on
# throwaway CI builders, where a cache mount lives on one builder only. A change to src/ or
# migrations/ rebuilds this crate and nothing else.

# The two base images, as build arguments: scripts/image.sh builds stand-ins for both from
# Debian's packages where no registry is reachable (see it for what each holds).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
WORKDIR /src
RUN cargo install cargo-chef --locked --version 0.1.78

# The recipe: the manifests, Cargo.lock and the target list (lib, bin, build.rs, benches,
# examples). Its layer changes only when they do, which is what keys the cook step below.
FROM chef AS planner
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo chef prepare --recipe-path recipe.json

# Every dependency, compiled against a skeleton of the crate (dummy targets for each file the
# manifest names, so the [[bench]] entries resolve): cached until the recipe changes.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin meta-chat-migrate
# Then the crate itself: build.rs, the sources and the migrations that embed_migrations! embeds
# at compile time. Cargo.toml names the benches and the example, so they must be present for any
# build. MCM_COMMIT names the commit for --version (the context has no .git).
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
ARG MCM_COMMIT=unknown
RUN cargo build --release --locked --bin meta-chat-migrate \
 && strip target/release/meta-chat-migrate

# Runtime: glibc and nothing else; runs as the image's unprivileged "nonroot" user (65532).
FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/meta-chat-migrate /usr/local/bin/meta-chat-migrate
USER 65532:65532
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/meta-chat-migrate"]
CMD ["migrate"]
