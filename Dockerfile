# syntax=docker/dockerfile:1
#
# evalgate container image.
#
#   podman build -t evalgate:dev .            (or: docker build -t evalgate:dev .)
#   podman run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 \
#     -e EVALGATE__AUTH__ALLOW_UNAUTHENTICATED=true evalgate:dev --demo     (local trial)
#
# Offline machines without an image registry: scripts/podman-smoke.sh builds local
# stand-ins for the two base images and smoke-tests the result.
#
# RUST_VERSION must equal `channel` in rust-toolchain.toml (.ci/packaging.sh checks it).
# Builder and runtime share a Debian release (bookworm = debian12), so glibc matches.
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78

# --- chef: Rust toolchain + cargo-chef ------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG RUST_VERSION
ARG CARGO_CHEF_VERSION
# Use the image's toolchain even though rust-toolchain.toml also lists clippy/rustfmt:
# a release build needs neither, and this keeps rustup from downloading anything.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install --locked --version "${CARGO_CHEF_VERSION}" cargo-chef \
    && rm -rf "${CARGO_HOME:-/usr/local/cargo}/registry"
WORKDIR /app

# --- planner: reduce the workspace to a dependency recipe ------------------------------
# The workspace is the root package (evalgate) plus crates/valiqor-emulator, which evalgate's
# default `demo` feature links for `--demo`; the recipe covers both manifests.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies first (cached while Cargo.toml/Cargo.lock are unchanged) ----
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# Default features: the image keeps `--demo` (scripts/podman-smoke.sh runs it).
RUN cargo build --release --locked --bin evalgate \
    && install -D -m 0755 target/release/evalgate /out/evalgate \
    && install -d -m 0755 /out/var/lib/evalgate

# --- runtime: distroless, glibc, no shell, uid/gid 65532 -------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="evalgate" \
      org.opencontainers.image.description="HTTP gateway sidecar for AI evaluation platforms: key injection, caching, batching, polling, webhooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="evalgate" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/evalgate /usr/local/bin/evalgate
# Store directory, owned by the runtime user. The image works with a read-only root
# filesystem: mount a volume here (emptyDir / PVC / `-v` / `--tmpfs`).
COPY --from=builder --chown=65532:65532 /out/var/lib/evalgate /var/lib/evalgate
# Inside a container both ports listen on all interfaces (the binary defaults to loopback): a
# published port reaches nothing else. The API therefore needs auth: with the built-in
# auth.mode "none" on a non-loopback address evalgate refuses to start (exit 78). Either
#   - give it tenants: -e EVALGATE__AUTH__MODE=tokens and a config file with [[tenants]]
#     (-e EVALGATE_CONFIG=...) or -e EVALGATE__AUTH__TENANTS_FILE=/path/tenants.toml, mounted in;
#   - or, for a local trial on a loopback-published port only,
#     -e EVALGATE__AUTH__ALLOW_UNAUTHENTICATED=true.
# The Helm chart sets listen and renders [auth] itself, so it does not depend on this default.
ENV EVALGATE__SERVER__LISTEN=0.0.0.0:8080 \
    EVALGATE__SERVER__ADMIN_LISTEN=0.0.0.0:9090 \
    EVALGATE__STORE__PATH=/var/lib/evalgate/evalgate.db
VOLUME ["/var/lib/evalgate"]
USER 65532:65532
EXPOSE 8080 9090
# For `docker run` / `podman run`; Kubernetes ignores HEALTHCHECK and uses the chart's probes.
# Uses the binary itself: distroless has no shell and no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/evalgate", "healthcheck", "http://127.0.0.1:9090/livez"]
ENTRYPOINT ["/usr/local/bin/evalgate"]
