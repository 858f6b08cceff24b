//! Integration tests against the real local stack (Kafka, Apicurio Registry, Redis,
//! PostgreSQL), started through `scripts/services.sh up` like a user would. Every test uses
//! its own random topics, groups, transactional ids and database.

mod common;

mod cli;
mod codec;
mod compose;
mod db;
mod processor;
mod schemas;
mod tick;
mod topics;
mod transactions;
