# syntax=docker/dockerfile:1
# (The syntax line fetches the current Dockerfile frontend; Docker >= 23 builds this file without it.)
#
# One image for the whole saga coordinator: `orchestrator`, `user-service`, `post-service` and
# `sagactl`, all in /usr/local/bin. The Kubernetes manifests (k8s/) pick the binary with `command:`;
# each service binary also takes `migrate` (apply its database migrations, then exit).
#
#   DOCKER_BUILDKIT=1 docker build -t saga-coordinator:dev .
#   docker run --rm saga-coordinator:dev sagactl --help
#
# Build arguments (all optional):
#   RUST_VERSION    tag of the `rust` builder image, default `1` (the newest 1.x). The workspace
#                   needs Rust >= 1.85 (edition 2024). Pin it (e.g. 1.95) for reproducible builds.
#   DEBIAN_RELEASE  Debian release of both stages, default `bookworm`. Builder and runtime must be
#                   the same release so the binaries find the glibc they were linked against.
#   VERSION, VCS_REF  recorded in the OCI labels only.
#
# What the build needs: gcc and make from the builder image (librdkafka is compiled from source by
# the rdkafka-sys crate with its ./configure + make; cmake is not used), protoc comes vendored by
# the protoc-bin-vendored crate, and crates come from the crate registry — no other network access
# besides pulling the two base images. With rdkafka's `ssl` feature (librdkafka needs OpenSSL for
# TLS and for SASL/SCRAM) it links the system OpenSSL: libssl-dev and pkg-config are in the builder
# image already, and libssl3 comes with ca-certificates in the runtime image.
#
# SQLX_OFFLINE is not needed, and there is no .sqlx directory: the project uses runtime-checked
# queries (sqlx::query / query_as / query_scalar, never the compile-time checked query! macros), so
# the build never talks to a database. sqlx::migrate! only embeds the files under migrations/.
#
# The cache mounts keep the crate registry and target/ between builds, so a rebuild after a source
# change recompiles only the workspace crates. target/ lives in a cache mount, which is why the
# binaries are copied out in the same RUN step.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=saga-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=saga-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=saga-target,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked \
        --bin orchestrator --bin user-service --bin post-service --bin sagactl; \
    mkdir -p /out; \
    for bin in orchestrator user-service post-service sagactl; do \
        cp "target/release/$bin" "/out/$bin"; \
    done

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=dev
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="saga-coordinator" \
      org.opencontainers.image.description="Saga orchestrator, user-service, post-service and sagactl" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"

# ca-certificates only (it brings openssl's libssl3, which a TLS-enabled librdkafka links against);
# the binaries otherwise need libc, libgcc_s, libm and zlib, all in the slim base already.
# The service user has a fixed uid/gid 10001, which the Kubernetes securityContext names.
# ca-certificates is deliberately not version-pinned: it should follow Debian's security updates.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 saga; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin saga

COPY --from=builder /out/ /usr/local/bin/

# Numeric, so Kubernetes can verify runAsNonRoot without looking up the name.
USER 10001:10001
WORKDIR /

# No service-specific ENV here: the participants reject settings they do not know (APP_GRPC__… is
# the orchestrator's only), so every setting comes from the deployment. Listen addresses default to
# 127.0.0.1; containers set APP_GRPC__LISTEN / APP_HTTP__LISTEN to 0.0.0.0:<port>.
#   orchestrator: 50051 gRPC (+ grpc.health.v1), 8080 HTTP (dashboard, /metrics, /healthz, /readyz)
#   user-service: 8081 HTTP (metrics, health)   post-service: 8082 HTTP (metrics, health)
EXPOSE 50051 8080 8081 8082

# The services stop cleanly on SIGTERM (loops drain within 15 s, spans flush within 5 s) and start
# no child processes, so they run as PID 1 without an init. No HEALTHCHECK: the image has no HTTP
# client; Kubernetes probes /healthz and /readyz instead.
STOPSIGNAL SIGTERM
CMD ["/usr/local/bin/orchestrator"]
