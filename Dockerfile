# The scheduled-jobs image: the binary (migrations compiled in), the topic and schema
# definitions `topics apply` and `schemas register` read, run as an unprivileged user.
#
#   docker build -t scheduled-jobs .
#   docker run --rm scheduled-jobs config show       # default command: `run` (the processor)
#
# tests/deploy/dockerfile.sh replays the build stage's COPY and cargo steps in an empty
# directory (offline, locked): a file the build needs and the Dockerfile does not copy fails
# it. Base images are build arguments, to build from a mirror.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# rdkafka builds librdkafka from source: cmake, a C toolchain, zlib and OpenSSL headers.
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# 1. The dependencies, in a layer of their own: rebuilt only when the manifest or the lock
#    file changes. Cargo reads every target the manifest declares, so the benches and the
#    fault suite's entry point come along; the crate itself is a stub here.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY tests/faults/main.rs ./tests/faults/main.rs
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# 2. The crate: the sources, the migrations (embedded by `sqlx::migrate!`) and the schemas
#    (embedded by `include_str!`). `touch`: copied files keep their own times, which may be
#    older than the stub's build.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY avro ./avro
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin scheduled-jobs
WORKDIR /app
COPY --from=build /src/target/release/scheduled-jobs /usr/local/bin/scheduled-jobs
COPY deploy/docker/healthcheck.sh /usr/local/bin/scheduled-jobs-healthcheck
COPY topics ./topics
COPY avro ./avro
USER 10001:10001
# /metrics, /healthz and /readyz of `run` and `tick` (other commands serve nothing).
ENV SJ_METRICS__LISTEN=0.0.0.0:9464
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["scheduled-jobs-healthcheck"]
# SIGTERM finishes the current record and leaves the group: give it time (compose: 60 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["scheduled-jobs"]
CMD ["run"]
