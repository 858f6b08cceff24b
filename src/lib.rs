//! scheduled-jobs: a Kafka-native, exactly-once runner for the periodic background jobs of an
//! e-commerce platform (order expiration, stock sync, daily statistics).
//!
//! # Layout
//! - [`config`]: typed settings (defaults ← TOML file ← `SJ_*` environment), validated at start.
//! - [`kafka`]: rdkafka client configuration and error classification ([`error::ErrorClass`]).
//! - [`topics`]: topic definitions as data (`topics/`) and `topics apply`.
//! - [`schemas`]: the Avro schemas of `avro/` against the Schema Registry (register/check).
//! - [`codec`]: Confluent-framed Avro encoding/decoding on the data path.
//! - [`avro`]: exact decimal conversion and schema-aware JSON rendering.
//! - [`db`]: PostgreSQL pool and migrations.
//! - [`control`]: pausing and resuming jobs.
//! - [`tail`]: `tail <topic>`, committed records as JSON lines.
//! - [`history`]: run history from the run results and the ledger (`runs list`).
//! - [`schedule`]: cron schedules in a time zone, DST-correct.
//! - [`tick`]: the tick producer and manual triggers.
//! - [`wire`]: Avro records as Rust types, converted at the edge.
//! - [`stock`]: Redis stock and reservations (the Order service's Lua scripts).
//! - [`shutdown`]: SIGTERM / Ctrl-C.
//! - [`processor`]: the exactly-once pipeline (plan → work items → apply → run result).
//! - [`jobs`]: the job interface and the jobs.
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`, consumer-group lag.
//! - [`demo`]: the one-command local demo.
//! - [`fault`]: fault points for crash tests (feature `fault-injection`).
//! - [`follow`]: `trigger --wait`, following one run's progress.
//! - [`replay`]: `replay`, moving a consumer group's offsets safely.
//! - [`cli`]: the command line.

pub mod avro;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod db;
pub mod demo;
pub mod error;
pub mod fault;
pub mod follow;
pub mod history;
pub mod jobs;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod replay;
pub mod schedule;
pub mod schemas;
pub mod shutdown;
pub mod stock;
pub mod tail;
pub mod tick;
pub mod topics;
pub mod wire;
