//! The processor (`scheduled-jobs run`): one consumer-group member that turns ticks into runs
//! and runs into effects and events, exactly once.
//!
//! One straight line per record, one transaction per record:
//! 1. [`Processor::step`] takes a batch of records from the tick and work-item topics;
//! 2. a handler decides what the record's transaction writes, as a [`run::TxnPlan`]:
//!    - a **tick** ([`tick`]) is *planned*: checked, decided against the run ledger (duplicate
//!      ticks and replays stop here), then its job's fixed chunks become work items with a seal
//!      and a `PLANNED` ledger entry;
//!    - a **work item** ([`work_item`]) is *applied*: the job performs the chunk's idempotent
//!      effects and returns the records to emit, written with a chunk ledger entry; the chunk
//!      that completes the run (claimed in PostgreSQL, see [`bookkeeping`]) adds the run result;
//!    - a record that cannot be accepted becomes a dead letter with the reason and its bytes;
//! 3. the plan is encoded and the [`committer`] writes it with the record's offset: it waits
//!    for the previous record's commit, begins, sends, and starts this commit, so the next
//!    record is prepared while it completes.
//!
//! Effects (SQL, Redis) happen outside Kafka transactions, so they are idempotent and may
//! precede their commit, as after a crash; the batch's next work item has its effects started
//! while the current one is applied ([`ahead`]). Kafka sees the records, and their offsets,
//! strictly in order. Any failure takes the one reset path, [`Processor::reset`]: stop effects
//! started ahead, abort, seek back to the first record not committed, retry after a pause.
//! Only configuration, authorization and fencing errors stop the processor.

mod ahead;
pub mod bookkeeping;
pub mod committer;
pub mod ledger;
pub mod run;
mod tick;
mod work_item;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use tracing::Instrument;

use crate::codec::{Codec, CodecError};
use crate::config::{JobSettings, Settings, Topic};
use crate::error::ErrorClass;
use crate::jobs::{JobCtx, JobError, Registry};
use crate::kafka::{self, KafkaClientError, Role};
use crate::metrics::{Metrics, Sample};
use committer::{Committer, Consumed, Ready};
use ledger::LedgerView;
use run::{Out, TxnPlan};
use tick::Reject;

pub use run::SEAL;

/// Upper bound on records taken in one poll (coalescing looks within it).
const BATCH: usize = 256;
const LEDGER_CATCH_UP: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis refused the configured credentials: waiting will not help.
    #[error("redis authentication failed: {0} (check redis.username / redis.password)")]
    RedisAuth(#[source] redis::RedisError),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("job `{job}`: {source}")]
    Job { job: String, source: JobError },
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<sqlx::Error> for ProcessorError {
    fn from(e: sqlx::Error) -> Self {
        ProcessorError::Db(crate::db::DbError::Query(e))
    }
}

impl ProcessorError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProcessorError::Kafka(e) => e.class(),
            ProcessorError::Codec(e) => e.class(),
            ProcessorError::Ledger(ledger::LedgerError::Timeout(_)) => ErrorClass::Retry,
            ProcessorError::Ledger(ledger::LedgerError::Kafka(e)) => e.class(),
            ProcessorError::Db(e) => e.class(),
            ProcessorError::Redis(_) | ProcessorError::Task(_) => ErrorClass::Retry,
            ProcessorError::RedisAuth(_) | ProcessorError::Config(_) => ErrorClass::Fatal,
            ProcessorError::Job { source, .. } => source.class(),
        }
    }
}

/// Notes assignments so the ledger view is caught up before records of new partitions.
pub struct GroupContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// What one [`Processor::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing arrived within the wait.
    Idle,
    /// This many records were handled and committed.
    Handled(usize),
    /// A transaction failed; it was aborted and the records will be seen again.
    Reset(String),
}

/// What jobs are given: the settings, the stores and who is applying.
struct Env {
    settings: Settings,
    db: sqlx::PgPool,
    redis: Option<redis::aio::ConnectionManager>,
    tz: chrono_tz::Tz,
    instance: String,
}

impl Env {
    fn job_settings(&self, job: &str) -> JobSettings {
        self.settings.job(job).cloned().unwrap_or_default()
    }

    fn job_ctx(&self, job: &str) -> JobCtx {
        JobCtx { db: self.db.clone(), redis: self.redis.clone(), tz: self.tz, settings: self.job_settings(job) }
    }
}

struct Names {
    tick: String,
    work_items: String,
    ledger: String,
    results: String,
    dead_letters: String,
}

pub struct Processor {
    env: Env,
    consumer: StreamConsumer<GroupContext>,
    committer: Committer,
    codec: Codec,
    jobs: Registry,
    names: Names,
    /// Set on a new assignment: the ledger view is caught up before the next batch.
    assigned: Arc<AtomicBool>,
    /// Effects of the batch's next work item, started ahead of its turn.
    ahead: Option<ahead::Ahead>,
    /// A transient consumer error seen by the last step (reported by `/readyz`).
    transient: Option<String>,
}

impl Processor {
    /// Connects everything, joins the group and fences any earlier incarnation of this
    /// instance. `redis` is optional for jobs that do not need it.
    pub async fn new(settings: Settings, jobs: Registry, db: sqlx::PgPool) -> Result<Processor, ProcessorError> {
        let names = Names {
            tick: settings.topic(Topic::Tick),
            work_items: settings.topic(Topic::WorkItems),
            ledger: settings.topic(Topic::RunLedger),
            results: settings.topic(Topic::RunResults),
            dead_letters: settings.topic(Topic::DeadLetters),
        };
        // Fails fast, and clearly, on rejected credentials (clients would only time out).
        let (s, tick) = (settings.clone(), names.tick.clone());
        tokio::task::spawn_blocking(move || kafka::metadata(&s, Some(&tick), Duration::from_secs(10)))
            .await
            .map_err(|e| ProcessorError::Task(e.to_string()))??;
        let codec = Codec::new(&settings)?;
        let redis = connect_redis(&settings).await?;
        let tz = settings.time_zone().map_err(|e| ProcessorError::Config(e.to_string()))?;
        let assigned = Arc::new(AtomicBool::new(false));
        let consumer: StreamConsumer<GroupContext> = group_config(&settings)
            .create_with_context(GroupContext { assigned: assigned.clone() })
            .map_err(|e| KafkaClientError::kafka("create consumer", e))?;
        consumer.subscribe(&[&names.tick, &names.work_items]).map_err(|e| KafkaClientError::kafka("subscribe", e))?;
        let mut ledger = LedgerView::new(&settings, codec.clone())?;
        ledger.catch_up(LEDGER_CATCH_UP).await?;
        let committer = Committer::new(&settings, ledger, Metrics::new())?;
        let instance = settings.instance_id();
        let env = Env { settings, db, redis, tz, instance };
        Ok(Processor { env, consumer, committer, codec, jobs, names, assigned, ahead: None, transient: None })
    }

    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    /// This processor's metrics and readiness (shared handle, for the HTTP endpoint).
    pub fn metrics(&self) -> Metrics {
        self.committer.metrics().clone()
    }

    /// Records into `metrics` (e.g. the handle the HTTP endpoint already serves) from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Processor {
        self.committer.set_metrics(metrics);
        self
    }

    /// Handles whatever arrives within `wait` and keeps readiness up to date: ready after a
    /// step that succeeded, not ready (with the reason) after one that did not.
    pub async fn step(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        let r = self.step_inner(wait).await;
        let metrics = self.committer.metrics();
        match &r {
            Ok(Step::Idle) => metrics.set_ready(self.transient.take().map_or(Ok(()), |why| Err(format!("kafka: {why}")))),
            Ok(Step::Handled(_)) => metrics.set_ready(Ok(())),
            Ok(Step::Reset(why)) => metrics.set_ready(Err(format!("last transaction failed: {why}"))),
            Err(e) => metrics.set_ready(Err(e.to_string())),
        }
        r
    }

    /// Handles whatever arrives within `wait` (one batch), each record in its own transaction.
    async fn step_inner(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => {
                self.refresh_ledger_if_assigned().await?;
                return Ok(Step::Idle);
            }
            Ok(Err(e)) => {
                // librdkafka reports connection trouble as events on the consumer queue and
                // recovers by itself; such an event is not a failed step (failing the step
                // would pause a second per queued event after an outage). A broker still
                // reloading its partitions after a restart answers "unknown topic" for topics
                // this consumer subscribed to: transient too.
                let unknown = e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
                let e = KafkaClientError::kafka("consume", e);
                if e.class() == ErrorClass::Fatal && !unknown {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "consumer reported a transient error");
                self.transient = Some(e.to_string());
                return Ok(Step::Idle);
            }
            Ok(Ok(m)) => m.detach(),
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "consume error after a partial batch; handling what arrived");
                    break;
                }
                None => break,
            }
        }
        match self.handle_batch(&batch).await {
            Ok(()) => Ok(Step::Handled(batch.len())),
            Err((i, e)) => self.reset(&batch[i..], e).await,
        }
    }

    /// Handles a batch in order, one transaction per record; on failure returns the index of
    /// the first record not committed. Everything is committed, and no effects are still
    /// running, when this returns Ok.
    async fn handle_batch(&mut self, batch: &[OwnedMessage]) -> Result<(), (usize, ProcessorError)> {
        self.refresh_ledger_if_assigned().await.map_err(|e| (0, e))?;
        // Ticks are decoded up front so a stale tick can see the newer one queued behind it.
        let mut ticks = Vec::with_capacity(batch.len());
        for m in batch {
            ticks.push(if m.topic() == self.names.tick { Some(self.decode_tick(m).await.map_err(|e| (0, e))?) } else { None });
        }
        for (i, m) in batch.iter().enumerate() {
            // Every log line about this record carries where it came from and, once known, its
            // job, tick and run (filled in by the handlers).
            let span = record_span(m);
            let plan = match ticks[i].take() {
                Some(decoded) => {
                    let newer = self.superseding(&decoded, &ticks[i + 1..]);
                    self.tick_plan(m, decoded, newer).instrument(span.clone()).await
                }
                None => {
                    let next = batch[i + 1..].iter().find(|n| n.topic() == self.names.work_items);
                    self.work_item_plan(m, next).instrument(span.clone()).await
                }
            };
            let ready = match plan {
                Ok(plan) => self.encode(plan, m).await,
                Err(e) => Err(e),
            };
            let ready = match ready {
                Ok(r) => r,
                // A commit still in flight for an earlier record that fails is where the rewind
                // must start.
                Err(e) => return Err(self.committer.settle().await.err().map_or((i, e), |(j, e)| (j, e.into()))),
            };
            let group = self.consumer.group_metadata().ok_or_else(|| {
                (i, KafkaClientError::kafka("group metadata", rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State)).into())
            })?;
            let consumed = Consumed { topic: m.topic(), partition: m.partition(), offset: m.offset(), index: i };
            self.committer.commit(ready, consumed, group).instrument(span).await.map_err(|(j, e)| (j, e.into()))?;
        }
        self.committer.settle().await.map_err(|(j, e)| (j, e.into()))
    }

    /// The newest tick of the same job queued behind `decoded` that will itself run, if the
    /// job coalesces (looks at current state). Manual ticks are explicit requests: never
    /// coalesced, never superseding.
    fn superseding(&self, decoded: &Result<crate::wire::tick::Tick, Reject>, behind: &[Option<Result<crate::wire::tick::Tick, Reject>>]) -> Option<crate::wire::tick::Tick> {
        use crate::wire::tick::Trigger;
        let t = decoded.as_ref().ok()?;
        if t.trigger == Trigger::Manual || !self.jobs.get(&t.job).is_some_and(|j| j.coalesce()) {
            return None;
        }
        behind
            .iter()
            .flatten()
            .flatten()
            .filter(|n| n.job == t.job && n.trigger != Trigger::Manual && n.scheduled_at > t.scheduled_at && self.validate_tick(n).is_ok())
            .max_by_key(|n| n.scheduled_at)
            .cloned()
    }

    /// Encodes a plan for the committer and counts what it writes (once committed).
    async fn encode(&self, plan: TxnPlan, m: &OwnedMessage) -> Result<Ready, ProcessorError> {
        let mut ready = Ready { records: Vec::with_capacity(plan.out.len()), ledger: Vec::new(), samples: plan.samples, fault: plan.fault };
        let mut emitted: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for out in plan.out {
            let (topic, key, bytes) = match out {
                Out::Event { topic, key, bytes } => {
                    *emitted.entry(topic.clone()).or_default() += 1;
                    (topic, key, bytes)
                }
                Out::WorkItem(item) => (self.names.work_items.clone(), item.key(), self.codec.encode(&self.names.work_items, item.to_avro()).await?),
                Out::Ledger(key, entry) => {
                    let bytes = self.codec.encode(&self.names.ledger, entry.to_avro()).await?;
                    ready.ledger.push((key.clone(), entry));
                    (self.names.ledger.clone(), key, bytes)
                }
                Out::Result(result) => {
                    let seconds = result.duration_ms as f64 / 1000.0;
                    ready.samples.push(Sample::Run { job: result.job.clone(), outcome: result.outcome.as_str().to_string(), seconds });
                    (self.names.results.clone(), result.job.clone(), self.codec.encode(&self.names.results, result.to_avro()).await?)
                }
                Out::DeadLetter { key, letter } => {
                    ready.samples.push(Sample::DeadLetter { reason: letter.reason_code.clone() });
                    (self.names.dead_letters.clone(), key, self.codec.encode(&self.names.dead_letters, letter.to_avro()).await?)
                }
            };
            ready.records.push((topic, key, bytes));
        }
        ready.samples.extend(emitted.into_iter().map(|(topic, count)| Sample::Emitted { topic, count }));
        ready.samples.push(Sample::Handled { kind: if m.topic() == self.names.tick { "tick" } else { "work-item" } });
        Ok(ready)
    }

    /// The one reset path, for every failure of a record: stop effects started ahead, abort
    /// the transaction, and rewind every partition of the dropped records to the first of
    /// them, so nothing is skipped; then pause before they are consumed again.
    async fn reset(&mut self, dropped: &[OwnedMessage], e: ProcessorError) -> Result<Step, ProcessorError> {
        let class = e.class();
        let m = &dropped[0];
        tracing::warn!(error = %e, class = %class, topic = m.topic(), partition = m.partition(), offset = m.offset(), "transaction failed, resetting");
        self.cancel_ahead().await;
        // Rewind first, whatever the abort says: a record must never be skipped.
        let aborted = self.committer.reset().await;
        let mut first: HashMap<(&str, i32), i64> = HashMap::new();
        for m in dropped {
            let o = first.entry((m.topic(), m.partition())).or_insert(m.offset());
            *o = (*o).min(m.offset());
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(topic, partition, Offset::Offset(offset), Duration::from_secs(10)) {
                // The partition may have been revoked meanwhile; its new owner resumes from
                // the committed offset, which is what we want.
                tracing::debug!(topic, partition, error = %e, "seek after reset failed");
            }
        }
        aborted?;
        if class == ErrorClass::Fatal {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Step::Reset(e.to_string()))
    }

    /// Runs steps until `shutdown` completes, then leaves the group cleanly (a step in
    /// progress finishes or aborts first: the select only fires between steps).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ProcessorError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = self.step(Duration::from_millis(500)) => match r {
                    Err(e) if e.class() == ErrorClass::Fatal => {
                        self.cancel_ahead().await;
                        self.committer.reset().await.ok();
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "step failed, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(_) => {}
                },
            }
        }
        // A step cut short by the shutdown may have left a commit, and effects started ahead,
        // in flight.
        self.cancel_ahead().await;
        if let Err((_, e)) = self.committer.settle().await {
            tracing::warn!(error = %e, "last commit failed at shutdown; its records will be consumed again");
        }
        if let Err(e) = self.committer.reset().await {
            // Asked to stop: what is left open is aborted by the coordinator on its timeout,
            // or at once when this instance's successor fences the transactional id.
            tracing::warn!(error = %e, "could not abort the open transaction while stopping");
        }
        self.consumer.unsubscribe();
        tracing::info!("processor stopped");
        Ok(())
    }

    async fn refresh_ledger_if_assigned(&mut self) -> Result<(), ProcessorError> {
        if self.assigned.swap(false, Ordering::SeqCst) {
            let n = self.committer.catch_up_ledger(LEDGER_CATCH_UP).await?;
            tracing::debug!(read = n, entries = self.committer.ledger().len(), "ledger caught up");
        }
        Ok(())
    }
}

/// Redis, if it answers; refused credentials are fatal (waiting will not help).
async fn connect_redis(settings: &Settings) -> Result<Option<redis::aio::ConnectionManager>, ProcessorError> {
    let client = redis::Client::open(secrecy::ExposeSecret::expose_secret(&settings.redis_url())).map_err(ProcessorError::Redis)?;
    match redis::aio::ConnectionManager::new(client).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) => Err(ProcessorError::RedisAuth(e)),
        Err(e) => Err(ProcessorError::Redis(e)),
    }
}

/// The consumer of the processor group.
fn group_config(settings: &Settings) -> rdkafka::ClientConfig {
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
        // at once instead of waiting for its dead predecessor's session to expire.
        cfg.set("group.instance.id", &settings.processor.instance_id);
    }
    for (k, v) in &settings.kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The span of every log line about record `m`; its job, tick, run and chunk are filled in
/// once known (by the handlers, or [`record_work_item`]).
fn record_span(m: &OwnedMessage) -> tracing::Span {
    tracing::info_span!(
        "record",
        topic = m.topic(),
        partition = m.partition(),
        offset = m.offset(),
        job = tracing::field::Empty,
        tick_id = tracing::field::Empty,
        run_id = tracing::field::Empty,
        chunk = tracing::field::Empty,
    )
}

/// Fills in a record span's fields for the work item it carries.
fn record_work_item(span: &tracing::Span, item: &crate::wire::internal::WorkItem) {
    span.record("job", item.job.as_str());
    span.record("tick_id", item.tick_id.as_str());
    span.record("run_id", item.run_id.as_str());
    span.record("chunk", item.chunk_index);
}

/// How long ago `t` was, for logs.
pub fn age(t: DateTime<Utc>) -> Duration {
    (Utc::now() - t).to_std().unwrap_or_default()
}
