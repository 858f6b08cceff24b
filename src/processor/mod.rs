//! The processor (`scheduled-jobs run`): one consumer-group member that turns ticks into runs
//! and runs into effects and events, exactly once.
//!
//! Two kinds of input, one transaction per record:
//! - a **tick** (`scheduler.tick`) is *planned*: checked against the run ledger (duplicate
//!   ticks and replays stop here), then its job streams fixed chunks of ids which are written
//!   as work items, followed by a seal carrying the chunk count, a `PLANNED` ledger entry and
//!   the tick's offset — all in one transaction. Planning only reads, so it can be abandoned.
//! - a **work item** (`scheduled-jobs.work-items`) is *applied*: the job performs the chunk's
//!   idempotent effects and returns the records to emit; they are written with a chunk ledger
//!   entry and the work item's offset in one transaction. The chunk that completes the run
//!   (claimed in PostgreSQL, see [`bookkeeping`]) also writes the run result. The batch's next
//!   work item has its effects started while the current one is applied (effects are
//!   idempotent and may precede their commit, as after a crash); Kafka sees the records, and
//!   their offsets, strictly in order.
//!
//! Records that cannot be accepted go to the dead-letter topic with the reason and original
//! bytes, in the transaction that commits their offset. Any failure of a transaction takes the
//! one reset path: abort, seek back to the first unhandled record, retry after a pause.

mod apply;
pub mod bookkeeping;
pub mod ledger;
mod plan;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tracing::Instrument;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{Codec, CodecError};
use crate::config::{JobSettings, Settings, Topic};
use crate::error::ErrorClass;
use crate::jobs::{JobCtx, JobError, Registry, Run};
use crate::kafka::{self, KafkaClientError, Role};
use crate::metrics::{Metrics, Sample};
use crate::wire::internal::{DeadLetter, LedgerEntry, Outcome, RunResult, RunState};
use crate::wire::tick::{Tick, Trigger};
use crate::wire::derived_id;
use ledger::{run_key, LedgerView};
use txn::Txn;

/// Chunk index of the seal work item that closes a plan.
pub const SEAL: i32 = -1;
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
    Redis(String),
    /// Redis refused the configured credentials: waiting will not help.
    #[error("redis authentication failed: {0} (check redis.username / redis.password)")]
    RedisAuth(String),
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
            ProcessorError::RedisAuth(_) => ErrorClass::Fatal,
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

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone)]
struct Reject {
    code: &'static str,
    reason: String,
}

fn reject(code: &'static str, reason: impl Into<String>) -> Reject {
    Reject { code, reason: reason.into() }
}

/// A record's transaction being committed while the next record is prepared.
struct Inflight {
    /// The record's index in its batch: where the reset path rewinds to if the commit fails.
    index: usize,
    commit: txn::Committing,
    /// Ledger entries written through for it, with what they replaced (restored on failure).
    replaced: Vec<(String, Option<LedgerEntry>)>,
    /// What it did, counted in the metrics once the commit succeeds.
    samples: Vec<Sample>,
}

/// A job record ready to send.
struct Encoded {
    topic: String,
    key: String,
    bytes: Vec<u8>,
}

struct Names {
    tick: String,
    work_items: String,
    ledger: String,
    results: String,
    dead_letters: String,
}

pub struct Processor {
    settings: Settings,
    consumer: StreamConsumer<GroupContext>,
    txn: Txn,
    codec: Codec,
    ledger: LedgerView,
    jobs: Registry,
    db: sqlx::PgPool,
    redis: Option<redis::aio::ConnectionManager>,
    tz: chrono_tz::Tz,
    assigned: Arc<AtomicBool>,
    names: Names,
    instance: String,
    inflight: Option<Inflight>,
    /// Effects of the batch's next work item, started ahead of its turn.
    ahead: Option<apply::Ahead>,
    /// Index in the batch of the record being handled.
    current: usize,
    /// Set when a record's handling failed because the previous record's commit did.
    failed_at: Option<usize>,
    metrics: Metrics,
    /// Samples of the open transaction.
    pending: Vec<Sample>,
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
        let redis = match redis::Client::open(secrecy::ExposeSecret::expose_secret(&settings.redis_url())) {
            Ok(client) => match redis::aio::ConnectionManager::new(client).await {
                Ok(c) => Some(c),
                Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) => {
                    return Err(ProcessorError::RedisAuth(e.to_string()))
                }
                Err(e) => return Err(ProcessorError::Redis(e.to_string())),
            },
            Err(e) => return Err(ProcessorError::Redis(e.to_string())),
        };
        let tz = settings.time_zone().map_err(|e| ProcessorError::Job { job: "-".into(), source: JobError::Failed(e.to_string()) })?;
        let max_timeout = settings.jobs.values().map(|j| j.timeout_secs).max().unwrap_or(300);
        let assigned = Arc::new(AtomicBool::new(false));
        let mut cfg = kafka::client_config(&settings, Role::Consumer);
        cfg.set("group.id", &settings.processor.group_id)
            .set("auto.offset.reset", "earliest")
            // A chunk is applied between polls; the group must not evict a member for a
            // chunk that legitimately runs up to its job's timeout.
            .set("max.poll.interval.ms", ((max_timeout + 60) * 1000).to_string())
            // A dead or paused member is noticed within seconds (heartbeats stop with it).
            .set("session.timeout.ms", "10000")
            // Work items flow from one transaction to the next: fetch them as soon as they
            // are committed rather than after a long poll (tick-to-result latency).
            .set("fetch.wait.max.ms", "10")
            .set("heartbeat.interval.ms", "2000")
            // A topic a broker reported unknown while reloading after a restart is assigned
            // again at the next metadata refresh: seconds, not librdkafka's default 5 minutes.
            .set("topic.metadata.refresh.interval.ms", "10000");
        if !settings.processor.instance_id.is_empty() {
            // Static membership: a restarted instance with the same id takes its partitions
            // back at once instead of waiting for its dead predecessor's session to expire.
            cfg.set("group.instance.id", &settings.processor.instance_id);
        }
        for (k, v) in &settings.kafka.properties {
            cfg.set(k, v);
        }
        let consumer: StreamConsumer<GroupContext> = cfg
            .create_with_context(GroupContext { assigned: assigned.clone() })
            .map_err(|e| KafkaClientError::kafka("create consumer", e))?;
        consumer
            .subscribe(&[&names.tick, &names.work_items])
            .map_err(|e| KafkaClientError::kafka("subscribe", e))?;
        let txn = Txn::new(&settings)?;
        let mut ledger = LedgerView::new(&settings, codec.clone())?;
        ledger.catch_up(LEDGER_CATCH_UP).await?;
        let instance = settings.instance_id();
        Ok(Processor {
            settings,
            consumer,
            txn,
            codec,
            ledger,
            jobs,
            db,
            redis,
            tz,
            assigned,
            names,
            instance,
            inflight: None,
            ahead: None,
            current: 0,
            failed_at: None,
            metrics: Metrics::new(),
            pending: Vec::new(),
            transient: None,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This processor's metrics and readiness (shared handle, for the HTTP endpoint).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Records into `metrics` (e.g. the handle the HTTP endpoint already serves) from now on.
    pub fn with_metrics(mut self, metrics: Metrics) -> Processor {
        self.metrics = metrics;
        self
    }

    /// Handles whatever arrives within `wait` and keeps readiness up to date: ready after a
    /// step that succeeded, not ready (with the reason) after one that did not.
    pub async fn step(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        let r = self.step_inner(wait).await;
        match &r {
            Ok(Step::Idle) => self.metrics.set_ready(self.transient.take().map_or(Ok(()), |why| Err(format!("kafka: {why}")))),
            Ok(Step::Handled(_)) => self.metrics.set_ready(Ok(())),
            Ok(Step::Reset(why)) => self.metrics.set_ready(Err(format!("last transaction failed: {why}"))),
            Err(e) => self.metrics.set_ready(Err(e.to_string())),
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
                // would pause a second per queued event after an outage).
                // A broker still reloading its partitions after a restart answers "unknown
                // topic" for topics this consumer subscribed to: transient too.
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
        let mut poll_error = None;
        while batch.len() < BATCH {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => {
                    poll_error = Some(e);
                    break;
                }
                None => break,
            }
        }
        if let Some(e) = poll_error {
            tracing::debug!(error = %e, "consume error after a partial batch; handling what arrived");
        }
        match self.handle_batch(&batch).await {
            Ok(()) => Ok(Step::Handled(batch.len())),
            Err((i, e)) => {
                let class = e.class();
                let m = &batch[i];
                tracing::warn!(error = %e, class = %class, topic = m.topic(), partition = m.partition(), offset = m.offset(), "transaction failed, resetting");
                // Effects started ahead for a later record stop before it is consumed again.
                self.cancel_ahead().await;
                // Never lose a record: everything from the failed one on is consumed again.
                self.reset(&batch[i..])?;
                if class == ErrorClass::Fatal {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(Step::Reset(e.to_string()))
            }
        }
    }

    /// Handles a batch in order, one transaction per record; on failure returns the index of
    /// the first record not committed. A record's commit overlaps the next record's
    /// preparation (see [`Txn::start_commit`]), and the next work item's effects overlap the
    /// current one's (see `apply_ahead`); everything is committed, and no effects are still
    /// running, when this returns Ok.
    async fn handle_batch(&mut self, batch: &[OwnedMessage]) -> Result<(), (usize, ProcessorError)> {
        self.failed_at = None;
        self.refresh_ledger_if_assigned().await.map_err(|e| (0, e))?;
        // Decode ticks up front so a stale tick can see the newer one queued behind it.
        let mut ticks: Vec<Option<Result<Tick, Reject>>> = Vec::with_capacity(batch.len());
        for m in batch {
            let decoded = if m.topic() == self.names.tick { Some(self.decode_tick(m).await.map_err(|e| (0, e))?) } else { None };
            ticks.push(decoded);
        }
        for i in 0..batch.len() {
            let superseded = match &ticks[i] {
                // Manual ticks are explicit requests: never coalesced, never superseding.
                Some(Ok(t)) if t.trigger != Trigger::Manual && self.jobs.get(&t.job).is_some_and(|j| j.coalesce()) => ticks
                    [i + 1..]
                    .iter()
                    .flatten()
                    .flatten()
                    // Only a tick that will itself run can supersede one.
                    .filter(|n| {
                        n.job == t.job
                            && n.trigger != Trigger::Manual
                            && n.scheduled_at > t.scheduled_at
                            && self.validate_tick(n).is_ok()
                    })
                    .max_by_key(|n| n.scheduled_at)
                    .cloned(),
                _ => None,
            };
            let m = &batch[i];
            self.current = i;
            // Every log line about this record carries where it came from and, once known, its
            // job, tick and run (filled in by the handlers).
            let span = record_span(m);
            let result = match ticks[i].take() {
                Some(decoded) => self.handle_tick(m, decoded, superseded).instrument(span).await,
                None => {
                    let next = batch[i + 1..].iter().find(|n| n.topic() == self.names.work_items);
                    self.handle_work_item(m, next).instrument(span).await
                }
            };
            if let Err(e) = result {
                // An earlier record whose commit fails is where the rewind must start.
                return Err(match self.settle().await {
                    Err(earlier) => earlier,
                    Ok(()) => (self.failed_at.take().unwrap_or(i), e),
                });
            }
        }
        self.settle().await
    }

    /// Waits for the commit in flight, if any. On failure the ledger entries written through
    /// for it are taken back and the failed record's index is returned.
    async fn settle(&mut self) -> Result<(), (usize, ProcessorError)> {
        // Awaited in place and taken only once complete: if this future is dropped while
        // waiting, the commit stays in flight for the next settle (the producer must not be
        // used until it has finished).
        let Some(f) = self.inflight.as_mut() else {
            return Ok(());
        };
        let outcome = (&mut f.commit.0).await;
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        match self.txn.finish_commit(outcome) {
            Ok(()) => {
                self.metrics.record(&f.samples);
                Ok(())
            }
            Err(e) => {
                self.metrics.aborted();
                for (key, previous) in f.replaced.into_iter().rev() {
                    self.ledger.restore(key, previous);
                }
                Err((f.index, e.into()))
            }
        }
    }

    /// Begins a record's transaction once the previous one's commit has succeeded.
    async fn begin(&mut self) -> Result<(), ProcessorError> {
        if let Err((index, e)) = self.settle().await {
            self.failed_at = Some(index);
            return Err(e);
        }
        self.pending.clear();
        self.txn.begin()?;
        Ok(())
    }

    /// Records a ledger entry of the transaction being committed; it is taken back if that
    /// commit fails. Written at once so the next record already sees it (a twin tick behind
    /// this one must not plan the same run again).
    fn write_through(&mut self, key: String, entry: LedgerEntry) {
        let previous = self.ledger.write_through(key.clone(), entry);
        if let Some(f) = self.inflight.as_mut() {
            f.replaced.push((key, previous));
        }
    }

    /// Runs steps until `shutdown` completes, then leaves the group cleanly (a step in
    /// progress finishes or aborts first: the select only fires between steps).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ProcessorError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = self.step(Duration::from_millis(500)) => {
                    if let Err(e) = r {
                        if e.class() == ErrorClass::Fatal {
                            self.settle().await.ok();
                            self.txn.abort().ok();
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "step failed, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        // A step cut short by the shutdown may have left a commit, and effects started ahead,
        // in flight.
        self.cancel_ahead().await;
        if let Err((_, e)) = self.settle().await {
            tracing::warn!(error = %e, "last commit failed at shutdown; its records will be consumed again");
        }
        if let Err(e) = self.txn.abort() {
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
            let n = self.ledger.catch_up(LEDGER_CATCH_UP).await?;
            tracing::debug!(read = n, entries = self.ledger.len(), "ledger caught up");
        }
        Ok(())
    }

    /// The one reset path: abort the transaction and rewind every partition of the dropped
    /// records to the first of them, so they are consumed again.
    fn reset(&mut self, dropped: &[OwnedMessage]) -> Result<(), ProcessorError> {
        // Rewind first, whatever the abort says: a record must never be skipped.
        let aborted = self.txn.abort();
        self.pending.clear();
        self.metrics.aborted();
        let mut first: HashMap<(String, i32), i64> = HashMap::new();
        for m in dropped {
            let e = first.entry((m.topic().to_string(), m.partition())).or_insert(m.offset());
            *e = (*e).min(m.offset());
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10)) {
                // The partition may have been revoked meanwhile; its new owner resumes from
                // the committed offset, which is what we want.
                tracing::debug!(topic, partition, error = %e, "seek after reset failed");
            }
        }
        aborted.map_err(ProcessorError::from)
    }

    fn job_settings(&self, job: &str) -> JobSettings {
        self.settings.job(job).cloned().unwrap_or_default()
    }

    fn job_ctx(&self, job: &str) -> JobCtx {
        JobCtx { db: self.db.clone(), redis: self.redis.clone(), tz: self.tz, settings: self.job_settings(job) }
    }

    /// Records a run that ends at planning (skipped, timed out, failed) with its result.
    async fn finish_without_chunks(
        &mut self,
        m: &OwnedMessage,
        run: &Run,
        state: RunState,
        outcome: Outcome,
        message: Option<String>,
    ) -> Result<(), ProcessorError> {
        let key = run_key(&run.job, &run.period);
        let entry = self.ledger_entry(run, state, 0);
        self.begin().await?;
        self.send_ledger(&key, &entry).await?;
        let result = self.run_result(run, outcome, BTreeMap::new(), message);
        self.send_result(&result).await?;
        self.commit(m).await?;
        self.write_through(key, entry);
        Ok(())
    }

    fn ledger_entry(&self, run: &Run, state: RunState, chunk_count: i32) -> LedgerEntry {
        LedgerEntry {
            run_id: run.run_id.clone(),
            job: run.job.clone(),
            period: run.period.clone(),
            tick_id: run.tick.tick_id.clone(),
            trigger: run.tick.trigger.as_str().to_string(),
            state,
            chunk_count,
            attempt: run.attempt.max(1),
            updated_at: Utc::now(),
        }
    }

    fn run_result(&self, run: &Run, outcome: Outcome, counts: BTreeMap<String, i64>, message: Option<String>) -> RunResult {
        let now = Utc::now();
        RunResult {
            event_id: derived_id(&["run-result", &run.run_id]).to_string(),
            event_timestamp: now,
            run_id: run.run_id.clone(),
            job: run.job.clone(),
            period: run.period.clone(),
            tick_id: run.tick.tick_id.clone(),
            trigger: run.tick.trigger.as_str().to_string(),
            outcome,
            counts,
            started_at: run.planned_at,
            finished_at: now,
            duration_ms: (now - run.planned_at).num_milliseconds().max(0),
            message,
        }
    }

    /// Encodes job records with their topics' latest schemas (before the transaction begins).
    async fn encode_emits(&self, records: Vec<crate::jobs::Emit>) -> Result<Vec<Encoded>, ProcessorError> {
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            let topic = self.settings.topic(rec.topic);
            let bytes = self.codec.encode(&topic, rec.value).await?;
            out.push(Encoded { topic, key: rec.key, bytes });
        }
        Ok(out)
    }

    async fn send_encoded(&mut self, records: Vec<Encoded>) -> Result<(), ProcessorError> {
        let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
        for rec in records {
            self.txn.send(&rec.topic, &rec.key, &rec.bytes).await?;
            *per_topic.entry(rec.topic).or_default() += 1;
        }
        self.pending.extend(per_topic.into_iter().map(|(topic, count)| Sample::Emitted { topic, count }));
        Ok(())
    }

    async fn send_ledger(&mut self, key: &str, entry: &LedgerEntry) -> Result<(), ProcessorError> {
        let bytes = self.codec.encode(&self.names.ledger, entry.to_avro()).await?;
        let topic = self.names.ledger.clone();
        self.txn.send(&topic, key, &bytes).await?;
        Ok(())
    }

    async fn send_result(&mut self, result: &RunResult) -> Result<(), ProcessorError> {
        let bytes = self.codec.encode(&self.names.results, result.to_avro()).await?;
        let topic = self.names.results.clone();
        self.txn.send(&topic, &result.job, &bytes).await?;
        self.pending.push(Sample::Run {
            job: result.job.clone(),
            outcome: result.outcome.as_str().to_string(),
            seconds: result.duration_ms as f64 / 1000.0,
        });
        Ok(())
    }

    /// Sends a dead letter and commits the record's offset with it.
    async fn dead_letter(&mut self, m: &OwnedMessage, r: Reject) -> Result<(), ProcessorError> {
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), code = r.code, reason = %r.reason, "record sent to dead letters");
        let letter = DeadLetter {
            event_id: derived_id(&["dead-letter", m.topic(), &m.partition().to_string(), &m.offset().to_string()]).to_string(),
            event_timestamp: Utc::now(),
            source_topic: m.topic().to_string(),
            source_partition: m.partition(),
            source_offset: m.offset(),
            reason_code: r.code.to_string(),
            reason: r.reason,
            original_key: m.key().map(|k| k.to_vec()),
            original_value: m.payload().map(|p| p.to_vec()),
            headers: BTreeMap::new(),
        };
        let bytes = self.codec.encode(&self.names.dead_letters, letter.to_avro()).await?;
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        self.begin().await?;
        let topic = self.names.dead_letters.clone();
        self.txn.send(&topic, &key, &bytes).await?;
        self.pending.push(Sample::DeadLetter { reason: r.code.to_string() });
        self.commit(m).await
    }

    async fn commit_offset_only(&mut self, m: &OwnedMessage) -> Result<(), ProcessorError> {
        self.begin().await?;
        self.commit(m).await
    }

    /// Starts committing the open transaction with `m`'s offset (the next one to read); the
    /// next [`Processor::begin`] or the end of the batch waits for it.
    async fn commit(&mut self, m: &OwnedMessage) -> Result<(), ProcessorError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))
            .map_err(|e| KafkaClientError::kafka("offsets", e))?;
        let group = self.consumer.group_metadata().ok_or_else(|| {
            KafkaClientError::kafka("group metadata", rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State))
        })?;
        let commit = self.txn.start_commit(tpl, group);
        let mut samples = std::mem::take(&mut self.pending);
        samples.push(Sample::Handled { kind: if m.topic() == self.names.tick { "tick" } else { "work-item" } });
        self.inflight = Some(Inflight { index: self.current, commit, replaced: Vec::new(), samples });
        Ok(())
    }
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
