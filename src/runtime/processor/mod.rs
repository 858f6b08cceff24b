//! The processor (`scheduled-jobs run`): one consumer-group member that turns ticks into runs
//! and runs into effects and events, exactly once.
//!
//! One straight line per record, each with its own offset in a Kafka transaction:
//! 1. [`Processor::step`] takes a batch of records from the tick and work-item topics, as many
//!    as fit `processor.batch_budget_ms` at the recent time per record: a group rebalance waits
//!    for every member's next poll, so a batch still running past the budget is committed up
//!    to there (up to the last record whose effects already run ahead) and the rest sought
//!    back;
//! 2. a handler decides what the record's transaction writes, as a [`run::TxnPlan`]:
//!    - a **tick** (`tick.rs`) is *planned*: checked, decided against the run ledger (duplicate
//!      ticks and replays stop here), then its job's fixed chunks become work items with a seal
//!      and a `PLANNED` ledger entry — or, for a run of one chunk, that chunk is applied at
//!      once, as below, in the tick's own transaction;
//!    - a **work item** (`work_item.rs`) is *applied*: the job performs the chunk's idempotent
//!      effects under the run's deadline (`ahead.rs`: cut inside the chunk, recorded TIMED_OUT
//!      with what it did) and returns the records to emit, written with a chunk ledger entry;
//!      the chunk that completes the run (claimed in PostgreSQL, see [`bookkeeping`]) adds the
//!      run result;
//!    - a record that cannot be accepted becomes a dead letter with the reason and its bytes;
//! 3. the plan is encoded and queued with the record's offset; the [`committer`] commits
//!    it in order while the next records are prepared, in one transaction with the records
//!    queued beside it (`processor.records_per_transaction`), so the per-transaction cost is
//!    shared when records come fast.
//!
//! Effects (SQL, Redis) happen outside Kafka transactions, so they are idempotent and may
//! precede their commit, as after a crash; the batch's next work items (up to
//! `processor.effects_ahead`) have their effects started while the current one is applied
//! (`ahead.rs`). Kafka sees the records, and their offsets,
//! strictly in order. Any failure takes the one reset path, `Processor::reset`: stop effects
//! started ahead, abort, seek back to the first record not committed, retry after a pause.
//! Only errors classed fatal stop the processor: configuration, authorization, fencing (a
//! fenced producer or group member is replaced once a minute first: the committer's
//! `replace_fenced`, [`Processor::replace_consumer`]), and a bookkeeping statement that cannot
//! succeed (e.g. migrations not applied). A job's own
//! errors never do: a transient one is retried, the run's deadline times the run out, any
//! other fails its run.

mod accounting;
mod ahead;
pub mod bookkeeping;
pub mod committer;
mod encode;
mod error;
mod setup;
pub mod ledger;
mod stall;
mod overlap;
pub mod run;
mod tick;
mod versions;
mod work_item;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use tracing::Instrument;

use crate::kafka::codec::Codec;
use crate::config::{Settings, Topic};
use crate::error::ErrorClass;
use crate::jobs::Registry;
use crate::kafka::{self, KafkaClientError};
use crate::runtime::metrics::{Assignment, Metrics};
use committer::{Committer, Consumed};
use setup::{connect_redis, group_consumer, Env, Membership, Names};
use ledger::LedgerView;

pub use error::ProcessorError;
pub use setup::GroupContext;
pub use run::SEAL;

/// Upper bound on records taken in one poll (coalescing looks within it).
const BATCH: usize = 256;
/// The fewest records a poll takes while a budget applies: look-ahead for the effects started
/// ahead and records to share a transaction, even when records are slow.
const MIN_BATCH: usize = 4;
const LEDGER_CATCH_UP: Duration = Duration::from_secs(120);
/// A fenced group consumer is replaced at most once in this window.
const CONSUMER_FENCE_WINDOW: Duration = Duration::from_secs(60);

/// Why the group consumer is replaced ([`Processor::replace_consumer`]).
enum Rejoin {
    /// Fenced by its own static instance id.
    Fenced(KafkaClientError),
    /// No assignment for this long.
    Unassigned(Duration),
}

/// What one [`Processor::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing arrived within the wait.
    Idle,
    /// This many records were handled and committed.
    Handled(usize),
    /// The step was reset, and its records will be seen again: a transaction failed and was
    /// aborted, or the group consumer was replaced (fenced, or left without partitions). The
    /// text says which (`/readyz`).
    Reset(String),
}

pub struct Processor {
    env: Env,
    consumer: StreamConsumer<GroupContext>,
    committer: Committer,
    codec: Codec,
    jobs: Registry,
    names: Names,
    /// What the group consumer's rebalances said: a new assignment (the ledger view is caught
    /// up before the next batch), and how long it has held none.
    membership: Membership,
    /// Effects of the batch's next work items, started ahead of their turn, in record order.
    ahead: std::collections::VecDeque<ahead::Ahead>,
    /// A transient consumer error seen by the last step (reported by `/readyz`).
    transient: Option<String>,
    /// When the next pass over the schedules' fire times is due ([`accounting`]).
    accounting: accounting::Pace,
    /// Whether the metrics were given the last successes the ledger knows.
    seeded: bool,
    /// When the group consumer was last replaced, fenced ([`Processor::replace_consumer`]).
    consumer_fenced: Option<Instant>,
    /// What the running step is doing, for the stall watch ([`stall`]).
    activity: stall::Activity,
    /// Recent handling time per record (a moving average): how many records one poll takes
    /// so that their handling fits `processor.batch_budget_ms`.
    per_record: Duration,
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
        let membership = Membership::new();
        let consumer = group_consumer(&settings, &[&names.tick, &names.work_items], &membership)?;
        let ledger = LedgerView::new(&settings, codec.clone())?;
        // Fence before reading: the producer's start aborts what a predecessor with this
        // transactional id left open, and the ledger read cannot pass an open transaction (it
        // would wait for the transaction timeout instead).
        let instance = crate::runtime::instance::id(&settings);
        let mut committer = Committer::new(&settings, &instance, ledger, Metrics::new()).await?;
        committer.catch_up_ledger(LEDGER_CATCH_UP).await?;
        let env = Env { settings, db, redis, tz, instance };
        Ok(Processor {
            env,
            consumer,
            committer,
            codec,
            jobs,
            names,
            membership,
            ahead: Default::default(),
            transient: None,
            accounting: accounting::Pace::new(),
            seeded: false,
            consumer_fenced: None,
            activity: Default::default(),
            per_record: Duration::ZERO,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    /// This instance's id (configured, or derived: [`crate::runtime::instance`]).
    pub fn instance(&self) -> &str {
        &self.env.instance
    }

    /// This processor's metrics and readiness (shared handle, for the HTTP endpoint).
    pub fn metrics(&self) -> Metrics {
        self.committer.metrics().clone()
    }

    /// Records into `metrics` (e.g. the handle the HTTP endpoint already serves) from now on.
    /// Records (offsets aside) in the largest transaction this processor has begun: the
    /// bound a job's `alerts_per_transaction`-style settings keep.
    pub fn largest_transaction(&self) -> usize {
        self.committer.largest_transaction()
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Processor {
        self.committer.set_metrics(metrics);
        self
    }

    /// Handles whatever arrives within `wait` and keeps readiness up to date: ready after a
    /// step that succeeded, not ready (with the reason) after one that did not.
    pub async fn step(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        self.activity.begin();
        let r = self.step_inner(wait).await;
        self.activity.end();
        let metrics = self.committer.metrics();
        match &r {
            Ok(Step::Idle) => metrics.set_ready(self.transient.take().map_or(Ok(()), |why| Err(format!("kafka: {why}")))),
            Ok(Step::Handled(_)) => metrics.set_ready(Ok(())),
            Ok(Step::Reset(why)) => metrics.set_ready(Err(format!("last step reset: {why}"))),
            Err(e) => metrics.set_ready(Err(e.to_string())),
        }
        // Lag is exported for the partitions this instance holds now (polling moves them).
        if let Ok(tpl) = self.consumer.assignment() {
            let partitions = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
            metrics.set_assignment(Assignment { group: self.env.settings.processor.group_id.clone(), partitions });
        }
        r
    }

    /// Handles whatever arrives within `wait` (one batch), every record committed at its end;
    /// then, between batches, accounts for the schedules' fire times when that is due.
    async fn step_inner(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        if !self.seeded {
            self.seeded = true;
            self.seed_last_successes();
        }
        let step = self.handle_next(wait).await?;
        if !matches!(step, Step::Reset(_)) {
            self.activity.doing("accounting for fire times");
            // Its transaction was aborted (and a fenced producer replaced) on failure; the
            // record path meets a lasting failure on its own.
            if let Err(e) = self.account_fire_times().await {
                tracing::warn!(error = %e, "accounting for fire times failed; retried on the next pass");
            }
        }
        Ok(step)
    }

    /// The last success of each job, as the run ledger knows it (a restarted instance still
    /// exports the dead-man's switch).
    fn seed_last_successes(&self) {
        let metrics = self.committer.metrics();
        for e in self.committer.ledger().runs().filter(|e| e.state == crate::wire::internal::RunState::Done) {
            metrics.succeeded(&e.job, e.updated_at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Handles whatever arrives within `wait` (one batch).
    async fn handle_next(&mut self, wait: Duration) -> Result<Step, ProcessorError> {
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => {
                let limit = Duration::from_millis(self.env.settings.processor.assignment_wait_ms);
                // The consumer's own view too: a cooperative rebalance revokes some partitions
                // and may keep the rest, and a replaced consumer may report its revocation
                // while closing, after the new one was assigned.
                let holds_none = || self.consumer.assignment().map_or(true, |a| a.count() == 0);
                if let Some(waited) = self.membership.unassigned_for().filter(|w| !limit.is_zero() && *w >= limit && holds_none()) {
                    return self.replace_consumer(Rejoin::Unassigned(waited)).await;
                }
                self.refresh_ledger_if_assigned().await?;
                return Ok(Step::Idle);
            }
            Ok(Err(e)) => {
                // librdkafka reports connection trouble as events on the consumer queue and
                // recovers by itself; such an event is not a failed step (failing the step
                // would pause a second per queued event after an outage). A broker still
                // reloading its partitions after a restart answers "unknown topic" for topics
                // this consumer subscribed to: transient too.
                let code = e.rdkafka_error_code();
                let unknown = code == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
                let e = KafkaClientError::kafka("consume", e);
                if code == Some(rdkafka::types::RDKafkaErrorCode::FencedInstanceId) {
                    return self.replace_consumer(Rejoin::Fenced(e)).await;
                }
                if e.class() == ErrorClass::Fatal && !unknown {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "consumer reported a transient error");
                self.transient = Some(e.to_string());
                return Ok(Step::Idle);
            }
            Ok(Ok(m)) => m.detach(),
        };
        let budget = Duration::from_millis(self.env.settings.processor.batch_budget_ms);
        let take = batch_size(budget, self.per_record);
        let mut batch = vec![first];
        while batch.len() < take {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "consume error after a partial batch; handling what arrived");
                    break;
                }
                None => break,
            }
        }
        self.activity.doing("handling a batch");
        let started = Instant::now();
        // No deadline with no budget, or with one too far off to be a time (it never ends).
        let deadline = if budget.is_zero() { None } else { started.checked_add(budget) };
        match self.handle_batch(&batch, deadline).await {
            Ok(handled) => {
                self.per_record = average(self.per_record, started.elapsed() / handled.max(1) as u32);
                if handled < batch.len() {
                    tracing::debug!(handled, left = batch.len() - handled, "batch budget spent: the rest is consumed again after a poll");
                    self.rewind(&batch[handled..]);
                }
                Ok(Step::Handled(handled))
            }
            Err((i, e)) => self.reset(&batch[i..], e).await,
        }
    }

    /// Joins the group again with a new consumer, between batches: everything consumed has
    /// been committed or aborted, what a transaction still holds is aborted here, and the new
    /// member resumes from the group's committed offsets (its assignment catches the ledger view
    /// up first). librdkafka's consumer cannot be told to join again, and restarting the
    /// process would do the same, slower. Why ([`Rejoin`]):
    /// - **fenced** by its own static `group.instance.id`: at most once per
    ///   [`CONSUMER_FENCE_WINDOW`]. The usual cause is this very process: after a broker outage
    ///   longer than the session timeout, librdkafka joins again and, when the answer to a join
    ///   is lost, joins once more — the broker gives the instance id a new member id, and the
    ///   member id the consumer still uses is fenced (confluentinc/confluent-kafka-go#494).
    ///   Fenced again within the window means another live process has this
    ///   `processor.instance_id`: this one stops, saying so;
    /// - **unassigned** for `processor.assignment_wait_ms`: after a session timeout with static
    ///   membership, librdkafka's consumer can stay out of the group for good
    ///   (confluentinc/librdkafka#3437): a processor of the long fault profile logged "partitions
    ///   revoked" and then nothing for 16 minutes. A new member starts a new wait, so this
    ///   happens at most once per `assignment_wait_ms`.
    async fn replace_consumer(&mut self, why: Rejoin) -> Result<Step, ProcessorError> {
        let instance_id = self.env.settings.processor.instance_id.clone();
        let (reason, text) = match why {
            Rejoin::Fenced(e) => {
                if self.consumer_fenced.is_some_and(|t| t.elapsed() < CONSUMER_FENCE_WINDOW) {
                    tracing::error!(
                        instance_id,
                        window_secs = CONSUMER_FENCE_WINDOW.as_secs(),
                        "group member fenced again soon after the last replacement: another live process uses this processor.instance_id; stopping"
                    );
                    return Err(e.into());
                }
                tracing::warn!(instance_id, reason = "fenced", error = %e, "replacing the group consumer");
                ("fenced", format!("group consumer fenced by its instance id, joined again with a new one: {e}"))
            }
            Rejoin::Unassigned(waited) => {
                tracing::warn!(
                    instance_id,
                    reason = "unassigned",
                    secs = waited.as_secs(),
                    "no partitions assigned for longer than processor.assignment_wait_ms; replacing the group consumer"
                );
                ("unassigned", format!("no partitions assigned for {} s; joined again with a new group consumer", waited.as_secs()))
            }
        };
        self.activity.doing("replacing the group consumer");
        self.cancel_ahead().await;
        self.committer.reset().await?;
        let consumer = group_consumer(&self.env.settings, &[&self.names.tick, &self.names.work_items], &self.membership)?;
        let old = std::mem::replace(&mut self.consumer, consumer);
        // Closing a consumer is a blocking librdkafka call, and rust-rdkafka's drop polls until
        // librdkafka says it closed, with no limit. On a thread of its own, not tokio's blocking
        // pool: a close that never ends must not hold up the runtime's shutdown, which waits for
        // the pool's tasks.
        if let Err(e) = std::thread::Builder::new().name("close-consumer".into()).spawn(move || drop(old)) {
            tracing::warn!(error = %e, "no thread to close the replaced consumer on; it was closed in place");
        }
        if reason == "fenced" {
            self.consumer_fenced = Some(Instant::now());
        }
        self.committer.metrics().consumer_replaced(reason);
        Ok(Step::Reset(text))
    }

    /// Handles a batch in order, each record's plan queued for the committer, until `deadline`
    /// (if any) has passed: returns how many records were handled (at least one), or on
    /// failure the index of the first record not committed. Everything handled is committed,
    /// and no effects are still running, when this returns Ok.
    async fn handle_batch(&mut self, batch: &[OwnedMessage], deadline: Option<Instant>) -> Result<usize, (usize, ProcessorError)> {
        self.refresh_ledger_if_assigned().await.map_err(|e| (0, e))?;
        // Ticks are decoded up front so a stale tick can see the newer one queued behind it.
        let mut ticks = Vec::with_capacity(batch.len());
        for m in batch {
            ticks.push(if m.topic() == self.names.tick { Some(self.decode_tick(m).await.map_err(|e| (0, e))?) } else { None });
        }
        let mut handled = batch.len();
        for (i, m) in batch.iter().enumerate() {
            // Once the budget is spent, the batch still goes on up to the last record whose
            // effects already run ahead (at most `effects_ahead` work items, and the seals or
            // ticks between them): those effects finish about when the current one's did, and
            // stopping them would throw their work away (a stock-sync range is seconds of it,
            // and a group of repairs stopped half-way is left for the next run). No new
            // effects start.
            let spent = i > 0 && deadline.is_some_and(|d| Instant::now() >= d);
            if spent && self.ahead.is_empty() {
                handled = i;
                break;
            }
            let rest = if spent { &[][..] } else { &batch[i + 1..] };
            // Every log line about this record carries where it came from and, once known, its
            // job, tick and run (filled in by the handlers).
            let span = record_span(m);
            let plan = match ticks[i].take() {
                Some(decoded) => {
                    let newer = self.superseding(&decoded, &ticks[i + 1..]);
                    self.tick_plan(m, decoded, newer).instrument(span.clone()).await
                }
                None => self.work_item_plan(m, rest).instrument(span.clone()).await,
            };
            let ready = match plan {
                Ok(plan) => self.encode(plan, m).await,
                Err(e) => Err(e),
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => return Err(self.failed_at(i, e).await),
            };
            let Some(group) = self.consumer.group_metadata() else {
                let e = KafkaClientError::kafka("group metadata", rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State));
                return Err(self.failed_at(i, e.into()).await);
            };
            let consumed = Consumed { topic: m.topic(), partition: m.partition(), offset: m.offset(), index: i, more: i + 1 < batch.len() };
            self.committer.commit(ready, consumed, group).instrument(span).await.map_err(|(j, e)| (j, e.into()))?;
        }
        // Every record started ahead was handled in turn; should one not have been (the
        // budget was spent before it), its effects do not outlive the batch.
        self.cancel_ahead().await;
        self.committer.settle().await.map_err(|(j, e)| (j, e.into()))?;
        Ok(handled)
    }

    /// Where the rewind starts when record `i` failed before it was queued: what is queued
    /// before it is committed first, and if that fails, the first record not committed.
    async fn failed_at(&mut self, i: usize, e: ProcessorError) -> (usize, ProcessorError) {
        match self.committer.settle().await {
            Ok(()) => (i, e),
            Err((j, e)) => (j, e.into()),
        }
    }

    /// The one reset path, for every failure of a record: stop effects started ahead, abort
    /// the transaction, and rewind every partition of the dropped records to the first of
    /// them, so nothing is skipped; then pause before they are consumed again.
    async fn reset(&mut self, dropped: &[OwnedMessage], e: ProcessorError) -> Result<Step, ProcessorError> {
        let class = e.class();
        let m = &dropped[0];
        tracing::warn!(error = %e, class = %class, topic = m.topic(), partition = m.partition(), offset = m.offset(), "transaction failed, resetting");
        self.activity.doing("resetting: stopping effects started ahead");
        self.cancel_ahead().await;
        // Rewind first, whatever the abort says: a record must never be skipped.
        self.activity.doing("resetting: aborting the transaction");
        let aborted = self.committer.reset().await;
        self.activity.doing("resetting: rewinding the consumer");
        self.rewind(dropped);
        let replaced = aborted?;
        // A fenced or stuck producer's error is spent once the committer replaced it: the
        // records are redone with the new one.
        if class == ErrorClass::Fatal && !(replaced && matches!(e, ProcessorError::Kafka(_))) {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Step::Reset(format!("records rewound after an error: {e}")))
    }

    /// Seeks every partition of `records` back to the first of them, so they are consumed
    /// again: none is ever skipped.
    fn rewind(&self, records: &[OwnedMessage]) {
        let mut first: HashMap<(&str, i32), i64> = HashMap::new();
        for m in records {
            let o = first.entry((m.topic(), m.partition())).or_insert(m.offset());
            *o = (*o).min(m.offset());
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(topic, partition, Offset::Offset(offset), Duration::from_secs(10)) {
                // The partition may have been revoked meanwhile; its new owner resumes from
                // the committed offset, which is what we want.
                tracing::debug!(topic, partition, error = %e, "seek back failed");
            }
        }
    }

    /// Runs steps until `shutdown` completes, then leaves the group cleanly (a step in
    /// progress finishes or aborts first: the select only fires between steps).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ProcessorError> {
        tokio::pin!(shutdown);
        let _watch = self.activity.watch().map_err(|e| ProcessorError::Task(format!("cannot start the stall watch: {e}")))?;
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
        if self.membership.assigned.swap(false, Ordering::SeqCst) {
            let n = self.committer.catch_up_ledger(LEDGER_CATCH_UP).await?;
            tracing::debug!(read = n, entries = self.committer.ledger().len(), "ledger caught up");
        }
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

/// How many records one poll takes: as many as fit `budget` at `per_record` each (all up to
/// [`BATCH`] with no budget or no measure yet), never fewer than [`MIN_BATCH`].
fn batch_size(budget: Duration, per_record: Duration) -> usize {
    if budget.is_zero() || per_record.is_zero() {
        return BATCH;
    }
    let fit = budget.as_nanos() / per_record.as_nanos();
    usize::try_from(fit).unwrap_or(BATCH).clamp(MIN_BATCH, BATCH)
}

/// The moving average of the time per record, half old, half new: it follows a change of
/// load within a few batches.
fn average(old: Duration, new: Duration) -> Duration {
    if old.is_zero() {
        new
    } else {
        (old + new) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_takes_what_fits_the_budget_at_the_recent_time_per_record() {
        let ms = Duration::from_millis;
        assert_eq!(batch_size(ms(2000), Duration::ZERO), BATCH, "no measure yet");
        assert_eq!(batch_size(Duration::ZERO, ms(50)), BATCH, "no budget");
        assert_eq!(batch_size(ms(2000), ms(50)), 40);
        assert_eq!(batch_size(ms(2000), ms(1)), BATCH);
        assert_eq!(batch_size(ms(2000), ms(5000)), MIN_BATCH);
    }

    #[test]
    fn the_time_per_record_follows_a_change_within_a_few_batches() {
        let ms = Duration::from_millis;
        assert_eq!(average(Duration::ZERO, ms(40)), ms(40));
        let mut a = ms(10);
        for _ in 0..4 {
            a = average(a, ms(500));
        }
        assert!(a > ms(450), "{a:?}");
    }
}
