//! What a processor is made of at start-up: the consumer of the processor group (and what it
//! notes on a rebalance), the Redis connection, its topic names and what jobs are given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};

use super::ProcessorError;
use crate::config::{JobSettings, Settings};
use crate::jobs::{Deadline, JobCtx};
use crate::kafka::{self, Role};

/// What the group consumer's rebalances tell the processor, shared with its context.
#[derive(Clone)]
pub(super) struct Membership {
    /// Set on each assignment: the ledger view is caught up before records of new partitions.
    pub(super) assigned: Arc<AtomicBool>,
    /// Since when the member has held no assignment (it joined, or its partitions were
    /// revoked, and none came since); None once assigned, even nothing.
    unassigned_since: Arc<Mutex<Option<Instant>>>,
}

impl Membership {
    /// A member about to join.
    pub(super) fn new() -> Membership {
        Membership { assigned: Arc::default(), unassigned_since: Arc::new(Mutex::new(Some(Instant::now()))) }
    }

    fn set_unassigned(&self, since: Option<Instant>) {
        *self.unassigned_since.lock().unwrap_or_else(|p| p.into_inner()) = since;
    }

    /// A new consumer joins now.
    pub(super) fn joining(&self) {
        self.set_unassigned(Some(Instant::now()));
    }

    /// How long the member has held no assignment, if it holds none.
    pub(super) fn unassigned_for(&self) -> Option<Duration> {
        self.unassigned_since.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }
}

/// Notes assignments and revocations for the processor ([`Membership`]).
pub struct GroupContext {
    membership: Membership,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.membership.set_unassigned(None);
                self.membership.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.membership.set_unassigned(Some(Instant::now()));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Redis, if it answers; refused credentials and a server certificate that does not verify
/// are fatal (waiting will not help).
pub(super) async fn connect_redis(settings: &Settings) -> Result<Option<redis::aio::ConnectionManager>, ProcessorError> {
    let client = settings.redis_client().map_err(|e| ProcessorError::Config(e.to_string()))?;
    match redis::aio::ConnectionManager::new(client).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) => Err(ProcessorError::RedisAuth(e)),
        Err(e) if is_certificate_failure(&e) => Err(ProcessorError::RedisTls(e)),
        Err(e) => Err(ProcessorError::Redis(e)),
    }
}

/// The TLS handshake failed on the server's certificate (unknown CA, wrong host name,
/// expired): OpenSSL says so only in the message of the I/O error it ends with.
fn is_certificate_failure(e: &redis::RedisError) -> bool {
    e.to_string().to_ascii_lowercase().contains("certificate verify failed")
}

/// A member of the processor group, subscribed to `topics`; `membership` follows its
/// rebalances from now on.
pub(super) fn group_consumer(settings: &Settings, topics: &[&str], membership: &Membership) -> Result<StreamConsumer<GroupContext>, ProcessorError> {
    membership.joining();
    let context = GroupContext { membership: membership.clone() };
    let consumer: StreamConsumer<GroupContext> =
        group_config(settings).create_with_context(context).map_err(|e| kafka::KafkaClientError::kafka("create consumer", e))?;
    consumer.subscribe(topics).map_err(|e| kafka::KafkaClientError::kafka("subscribe", e))?;
    Ok(consumer)
}

/// The consumer of the processor group.
pub(super) fn group_config(settings: &Settings) -> rdkafka::ClientConfig {
    let max_timeout = settings.jobs.values().map(|j| j.timeout_secs).max().unwrap_or(300);
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", &settings.processor.group_id)
        .set("auto.offset.reset", "earliest")
        // A chunk is applied between polls; the group must not evict a member for a chunk
        // that legitimately runs up to its job's timeout.
        .set("max.poll.interval.ms", ((max_timeout + 60) * 1000).to_string())
        // A dead or paused member is noticed within seconds (heartbeats stop with it).
        .set("session.timeout.ms", "10000")
        // Work items flow from one transaction to the next: fetch them as soon as they are
        // committed rather than after a long poll (tick-to-result latency).
        .set("fetch.wait.max.ms", "10")
        .set("heartbeat.interval.ms", "2000")
        // A topic a broker reported unknown while reloading after a restart is assigned again
        // at the next metadata refresh: seconds, not librdkafka's default 5 minutes.
        .set("topic.metadata.refresh.interval.ms", "10000");
    if !settings.processor.instance_id.is_empty() {
        // Static membership: a restarted instance with the same id takes its partitions back
        // at once instead of waiting for its dead predecessor's session to expire. Only for an
        // id an operator chose: a derived one is unique only if host names are, and two live
        // members with one static id fence each other (FencedInstanceId: the processor joins
        // again once, then stops; see `Processor::replace_consumer`).
        cfg.set("group.instance.id", &settings.processor.instance_id);
    }
    for (k, v) in &settings.kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// What jobs are given: the settings, the stores and who is applying.
pub(super) struct Env {
    pub(super) settings: Settings,
    pub(super) db: sqlx::PgPool,
    pub(super) redis: Option<redis::aio::ConnectionManager>,
    pub(super) tz: chrono_tz::Tz,
    pub(super) instance: String,
}

impl Env {
    pub(super) fn job_settings(&self, job: &str) -> JobSettings {
        self.settings.job(job).cloned().unwrap_or_default()
    }

    /// What `job` is given, without a deadline (the chunk's effects set theirs).
    pub(super) fn job_ctx(&self, job: &str) -> JobCtx {
        JobCtx { db: self.db.clone(), redis: self.redis.clone(), tz: self.tz, settings: self.job_settings(job), deadline: Deadline::none(), effects_done: false }
    }
}

/// The topics a processor reads and writes, with the configured prefix.
pub(super) struct Names {
    pub(super) tick: String,
    pub(super) work_items: String,
    pub(super) ledger: String,
    pub(super) results: String,
    pub(super) dead_letters: String,
}
