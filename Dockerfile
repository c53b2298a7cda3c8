# meta-chat-migrate: the schema runner, as the init step the application waits for.
# Build: docker build -t meta-chat-migrations .
# Run:   docker run --rm -e DATABASE_URL=postgres://... meta-chat-migrations          (migrate)
#        docker run --rm -e DATABASE_URL=postgres://... meta-chat-migrations verify

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Manifests first, so the dependency layer is cached across source changes.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin meta-chat-migrate \
 && strip target/release/meta-chat-migrate

# Runtime: glibc and nothing else; runs as the image's unprivileged "nonroot" user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/meta-chat-migrate /usr/local/bin/meta-chat-migrate
USER 65532:65532
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/meta-chat-migrate"]
CMD ["migrate"]
