# The scheduled-jobs image: the binary plus the topic and schema definitions it applies.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/scheduled-jobs /usr/local/bin/scheduled-jobs
COPY topics ./topics
COPY avro ./avro
ENTRYPOINT ["scheduled-jobs"]
CMD ["--help"]
