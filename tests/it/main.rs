//! Integration tests against the real local stack (Kafka, Apicurio Registry, Redis,
//! PostgreSQL), started through `scripts/services.sh up` like a user would. Every test uses
//! its own random topics, groups, transactional ids and database.

mod common;

mod accounting;
mod streaks;
mod overlap;

mod cli;
mod cluster;
mod codec;
mod compression;
mod compose;
mod console;
mod daily_statistics;
mod db;
mod demo;
mod lag;
mod processor;
mod reports;
mod schemas;
mod stock;
mod tick;
mod operations;
mod parameters;
mod order_expiration;
mod stock_sync;
mod topics;
mod security;
mod transactions;
