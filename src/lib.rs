//! scheduled-jobs: a Kafka-native, exactly-once runner for the periodic background jobs of an
//! e-commerce platform (order expiration, stock sync, daily statistics).
//!
//! # Layout
//! The folders are the architecture:
//! - [`runtime`]: the long-running processes — the [`runtime::processor`] (ticks → runs →
//!   effects and events, exactly once), the [`runtime::tick`] producer, the pause state the
//!   processor obeys, their metrics and health endpoints, shutdown and the crash-test fault
//!   points.
//! - [`jobs`]: the job interface, the one catalog of jobs, and one module per job (with the
//!   Redis stock scripts they share with the Order service, [`jobs::stock`]).
//! - [`wire`]: the contract — every topic, and each record on it as a Rust type; only this
//!   layer builds Avro values (exact decimals and JSON rendering in [`wire::avro`]).
//! - [`kafka`]: Kafka and Avro plumbing — client configuration and error classes, the
//!   Confluent-framed [`kafka::codec`], [`kafka::schemas`] against the registry and
//!   [`kafka::schema_rules`] (the evolution rules `schemas check` lints), [`kafka::topics`] as
//!   data.
//! - [`ops`]: the operator commands — runs list, replay, tail, trigger --wait, the demo.
//! - At the top: [`cli`] (the command line), [`config`] (layered settings, validated at
//!   start), [`db`] (PostgreSQL pool and migrations), [`schedule`] (cron in a time zone) and
//!   [`error`] (the one error classification).
//!
//! Dependencies point one way: `ops` uses `runtime`; both use `jobs`, `kafka` and `wire`;
//! `jobs` uses `wire` (and `runtime::fault`'s pause points, which compile to nothing without
//! the test-only `fault-injection` feature); `wire` uses nothing of the crate. `config` knows
//! the jobs' defaults (from the catalog); `kafka` and `db` know `config`.

pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod jobs;
pub mod kafka;
pub mod ops;
pub mod runtime;
pub mod schedule;
pub mod wire;
