//! The committer: the only code that begins, sends, commits, settles and aborts Kafka
//! transactions, and the only writer of the run-ledger view. One transactional producer bound
//! to the processor's consumer group (EOS v2, KIP-447).
//!
//! The processor [`Committer::commit`]s each consumed record's plan ([`Ready`]) and goes on to
//! the next: the plan is queued and its ledger entries are written through at once (a twin
//! tick queued behind must see them). A task of the committer's own, the *pump*, commits what
//! is queued in order: it takes everything queued (at most `processor.records_per_transaction`
//! consumed records, and at most [`MAX_TRANSACTION_RECORDS`] records), begins, sends, sends
//! each partition's highest offset and commits; then takes what was queued meanwhile. So a
//! record that comes alone is committed at once, and records that come faster than a commit
//! share one: the per-transaction cost (about 10 ms: the offsets' round trip and the
//! markers, and as much broker CPU as ~2,000 records) is paid once for all of them. Records
//! that come a little slower than a commit (chunks of 1,000 orders) would each pay it: when
//! the newest record queued says more of its batch is being prepared, the pump waits for
//! them, at most `processor.transaction_linger_ms` after the oldest was queued. A transaction
//! that fails drops everything queued after it as well: their ledger entries are taken back,
//! and the processor rewinds to the failed transaction's first record ([`Committer::settle`]
//! says which), so records commit, and become visible, strictly in order. Everything that fails takes one way back:
//! [`Committer::reset`], called by the processor's reset path (and when it stops).
//!
//! States: `Idle` (no transaction, or the pump's, which ends each one it begins) and `Open`
//! (a failed transaction the pump left open, until aborted).
//!
//! Fencing: a zombie (an instance that lost its partitions while paused) fails at
//! `send_offsets_to_transaction`/`commit` because its group generation is stale, so nothing it
//! wrote becomes visible under read_committed.
//!
//! Replacing the producer: the blocking calls (`init_transactions`, the offsets, the commit,
//! the abort) run on a thread of the producer's own, never on a runtime worker, watched with
//! librdkafka's timeout plus a grace period, because librdkafka 2.12 does not always hold it
//! (`send_offsets_to_transaction` waits for good when the group coordinator dies mid-call:
//! confluentinc/librdkafka#5456, #5511; seen in the cluster fault profile), and a call that
//! blocks a runtime worker for good would hold the processor without a word. An offsets
//! call, an abort or an init past its watch leaves the producer *stuck*: it is abandoned with
//! its thread and a new one takes the transactional id, whose `init_transactions` fences the
//! old one and aborts its transaction, so whatever the abandoned call does later cannot commit. A commit past its
//! watch may have committed, so it stops the process instead (its successor resumes from the
//! committed offsets); a commit librdkafka reports as not confirmed yet is called again. A producer *fenced* while no
//! successor runs (the coordinator bumps the epoch of a transaction it timed out, e.g. across
//! a controller failover) is replaced too, at most once per [`FENCE_WINDOW`]: fenced again
//! within it means another live process uses this transactional id, and this one stops.
//! Every replacement is counted (`scheduled_jobs_producer_replacements_total`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::ledger::LedgerView;
use crate::config::Settings;
use crate::error::ErrorClass;
use crate::kafka::{self, KafkaClientError, Role};
use crate::runtime::metrics::{Metrics, Sample};
use crate::wire::internal::LedgerEntry;

/// librdkafka's timeout for init, commit and abort.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's timeout for `send_offsets_to_transaction`: it takes milliseconds when the
/// group coordinator is up; when it is not, the transaction is aborted and redone sooner.
const SEND_OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long past librdkafka's own timeout a call may take before its producer is stuck.
const GRACE: Duration = Duration::from_secs(5);
/// Abandoned producers whose call is still blocked (each holds a thread and a librdkafka
/// instance) beyond which the process stops instead, for a fresh one to take over. The calls
/// do return eventually in the cases seen (when librdkafka finds the new coordinator), and
/// their thread and producer go with them, so this counts the ones still blocked, not every
/// replacement: a cluster with several failovers an hour replaces producers that often.
const MAX_STUCK: usize = 3;
/// A fenced producer is replaced at most once in this window.
const FENCE_WINDOW: Duration = Duration::from_secs(60);

/// One record to send: topic (shared by the records of one topic), key, encoded value.
pub type Record = (Arc<str>, String, Vec<u8>);

/// Records a transaction may carry besides its offsets: records of several consumed records
/// are grouped into one transaction only while their sum stays at or under this (a record
/// whose own plan is larger still goes alone; the jobs keep theirs under it).
pub const MAX_TRANSACTION_RECORDS: usize = 10_000;

/// One record's transaction, encoded and ready to send.
pub struct Ready {
    /// (topic, key, Confluent-framed value), sent in this order.
    pub records: Vec<Record>,
    /// Ledger entries the records above carry, written through to the view.
    pub ledger: Vec<(String, LedgerEntry)>,
    /// What the transaction did, counted once its commit succeeds.
    pub samples: Vec<Sample>,
    /// A fault point to pass once the record is prepared, before it is queued (crash tests),
    /// and the hang points of its transaction's blocking calls.
    pub fault: Option<(&'static str, String)>,
}

/// The consumed record whose offset a transaction commits, and where it sits in its batch.
pub struct Consumed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Index in the batch: where the reset path rewinds to if this commit fails.
    pub index: usize,
    /// More records of the same batch follow, being prepared: the pump may wait for them
    /// (up to `processor.transaction_linger_ms`) so that they share its transaction.
    pub more: bool,
}

/// A consumed record's part of a transaction, queued for the pump.
struct Entry {
    index: usize,
    records: Vec<Record>,
    topic: String,
    partition: i32,
    offset: i64,
    /// Taken by the transaction that carries it (the last entry's is the group's newest).
    group: Option<ConsumerGroupMetadata>,
    /// Ledger entries written through for it, with what they replaced (restored on failure).
    replaced: Vec<(String, Option<LedgerEntry>)>,
    samples: Vec<Sample>,
    fault: Option<(&'static str, String)>,
    /// More records of its batch were coming when it was queued ([`Consumed::more`]).
    more: bool,
    queued: Instant,
}

/// What the processor hands the pump, and whether a pump is running to take it.
#[derive(Default)]
struct Queue {
    entries: std::collections::VecDeque<Entry>,
    /// A pump is running, or failed and is not drained yet.
    running: bool,
    /// The first record of the transaction the pump is committing, while it does.
    taken: Option<usize>,
    /// The pump failed: nothing more is queued until the failure is drained.
    failed: bool,
    /// The processor waits for everything queued: nothing more comes until it queues again,
    /// so the pump commits without lingering.
    flush: bool,
}

/// A transaction that failed, and everything queued after it (dropped with it).
struct Failure {
    /// The first record not committed: where the reset path rewinds to.
    index: usize,
    error: KafkaClientError,
    /// Ledger write-throughs of the records not committed, in record order.
    replaced: Vec<(String, Option<LedgerEntry>)>,
    /// A transaction was begun and is left open for the reset path to abort.
    open: bool,
    /// `begin_transaction` reported the producer fenced or fatal.
    fenced: bool,
}

enum State {
    Idle,
    /// A transaction that failed is still open: the next reset (or pump) aborts it first.
    Open,
}

pub struct Committer {
    txn: Txn,
    /// To replace a producer left unusable.
    cfg: rdkafka::ClientConfig,
    state: State,
    queue: Arc<Mutex<Queue>>,
    /// The task committing what is queued, while it runs (or until its outcome is taken).
    pump: Option<tokio::task::JoinHandle<Result<(), Failure>>>,
    /// A failed transaction, taken back from the view already, to report at the next call.
    failed: Option<(usize, KafkaClientError)>,
    /// Consumed records one transaction may carry (`processor.records_per_transaction`).
    per_transaction: usize,
    /// How long the pump may wait for records still coming (`processor.transaction_linger_ms`).
    linger: Duration,
    /// Wakes a lingering pump: a record was queued, or the processor waits for the queue.
    wake: Arc<tokio::sync::Notify>,
    /// Set by a commit whose call went past its watch: the producer must be replaced.
    stuck: Arc<AtomicBool>,
    /// Set when `begin_transaction` reported the producer fenced or fatal.
    fenced: bool,
    /// One token per abandoned producer: its thread holds the other clone until it returns.
    abandoned: Vec<Arc<()>>,
    /// When a fenced producer was last replaced.
    last_fenced: Option<Instant>,
    ledger: LedgerView,
    metrics: Metrics,
    /// Records in the largest transaction begun (diagnostics, benchmarks).
    largest: Arc<AtomicUsize>,
}

/// A blocking call for the producer's thread, and where it answers.
enum Job {
    /// A transaction's offsets, then its commit.
    Commit(CommitJob),
    Abort(oneshot::Sender<Result<(), KafkaError>>),
    Init(oneshot::Sender<Result<(), KafkaError>>),
}

/// One transaction's blocking calls, for the producer's thread, and where it answers each.
struct CommitJob {
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
    fault: Option<(&'static str, String)>,
    sent: oneshot::Sender<Result<(), KafkaClientError>>,
    committed: oneshot::Sender<Result<(), KafkaClientError>>,
}

/// The transactional producer: its context counts the acknowledgements of the transaction
/// being sent.
type TxnProducer = ThreadedProducer<Acks>;

/// Counts, on librdkafka's polling thread, the acknowledgements of the records of the
/// transaction being sent, and keeps its first failure. The pump needs only that: every record
/// acknowledged, or the first that failed. A future per record (a channel allocated, completed
/// and awaited for each of a transaction's 2,000–10,000 records) cost the processor about 15%
/// of its CPU per chunk of 1,000 orders (docs/performance.md, session 24).
#[derive(Default)]
struct Acks {
    count: Mutex<AckCount>,
    /// Woken when the count the pump waits for is reached, or a record failed.
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct AckCount {
    /// The transaction being sent; each record carries it as its delivery opaque, so that a
    /// late acknowledgement of an earlier transaction (one that failed) is not counted.
    generation: usize,
    acked: usize,
    /// The count the pump waits for (none while it is not waiting).
    waiting_for: Option<usize>,
    failed: Option<KafkaError>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        self.ack(generation, result.as_ref().err().map(|(e, _)| e));
    }
}

impl Acks {
    fn count(&self) -> MutexGuard<'_, AckCount> {
        lock(&self.count)
    }

    /// A new transaction's count; its generation, for its records.
    fn begin(&self) -> usize {
        let mut c = self.count();
        c.generation = c.generation.wrapping_add(1);
        (c.acked, c.waiting_for, c.failed) = (0, None, None);
        c.generation
    }

    /// One record of transaction `generation` acknowledged, or failed with `error`.
    fn ack(&self, generation: usize, error: Option<&KafkaError>) {
        let mut c = self.count();
        if c.generation != generation {
            return;
        }
        c.acked += 1;
        if let Some(e) = error {
            c.failed.get_or_insert_with(|| e.clone());
        }
        if c.failed.is_some() || c.waiting_for == Some(c.acked) {
            drop(c);
            self.done.notify_one();
        }
    }

    /// Waits until `sent` records of the transaction are acknowledged; the first failure is
    /// the transaction's. librdkafka reports every record it accepted exactly once (delivered,
    /// failed, timed out or purged), so the count is reached or a failure comes.
    async fn delivered(&self, sent: usize) -> Result<(), KafkaClientError> {
        loop {
            {
                let mut c = self.count();
                if let Some(e) = &c.failed {
                    return Err(KafkaClientError::kafka("deliver", e.clone()));
                }
                if c.acked >= sent {
                    c.waiting_for = None;
                    return Ok(());
                }
                c.waiting_for = Some(sent);
            }
            // A wake-up between the check and here leaves a permit, so none is lost; one left
            // over from an earlier wait only makes the loop check again.
            self.done.notified().await;
        }
    }
}

/// A transactional producer and the thread that makes its blocking calls: a thread of its own,
/// not tokio's blocking pool, so that a call that never returns can be abandoned with its
/// producer without holding up the runtime's shutdown.
struct Txn {
    producer: TxnProducer,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Shared with the thread, which drops its clone when it ends.
    running: Arc<()>,
}

impl Txn {
    /// A transactional producer that has fenced every earlier one with the same id, aborting
    /// whatever they left open, and its thread. `init_transactions` runs on that thread,
    /// watched like every other blocking call; a producer whose init gets no answer is left to
    /// its thread, with its token in `abandoned`.
    async fn start(cfg: &rdkafka::ClientConfig, abandoned: &mut Vec<Arc<()>>) -> Result<Txn, KafkaClientError> {
        let producer: TxnProducer = kafka::create_with_context(cfg, Acks::default())?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let own = producer.clone();
        let running = Arc::new(());
        let token = running.clone();
        std::thread::Builder::new()
            .name("sj-transactions".into())
            .spawn(move || {
                let _token = token;
                // Ends when the committer drops or replaces this producer.
                for job in queue {
                    Txn::run(&own, job);
                }
            })
            .map_err(KafkaClientError::Thread)?;
        let txn = Txn { producer, jobs, running };
        match txn.call(Job::Init, TXN_TIMEOUT + GRACE).await {
            Some(r) => r.map_err(|e| KafkaClientError::kafka("init transactions", e))?,
            None => {
                abandoned.push(txn.running.clone());
                return Err(KafkaClientError::Stuck { operation: "init transactions", after: TXN_TIMEOUT + GRACE });
            }
        }
        Ok(txn)
    }

    /// One blocking call on the producer's thread; its answer, if it came within `watch`
    /// (none also when the thread is gone).
    async fn call(&self, job: fn(oneshot::Sender<Result<(), KafkaError>>) -> Job, watch: Duration) -> Option<Result<(), KafkaError>> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).ok()?;
        answer(rx, watch).await
    }

    fn run(producer: &TxnProducer, job: Job) {
        match job {
            Job::Commit(job) => Txn::offsets_and_commit(producer, job),
            Job::Abort(answer) => {
                crate::runtime::fault::hang("transaction", "abort", "");
                let _ = answer.send(producer.abort_transaction(TXN_TIMEOUT));
            }
            Job::Init(answer) => {
                let _ = answer.send(producer.init_transactions(TXN_TIMEOUT));
            }
        }
    }

    /// Sends the offsets, then commits if that worked; each answer goes back as soon as known.
    fn offsets_and_commit(producer: &TxnProducer, job: CommitJob) {
        let mut sent = Ok(());
        if let Some((point, name)) = &job.fault {
            crate::runtime::fault::hang(point, "send-offsets", name);
            if crate::runtime::fault::fail(point, "send-offsets", name) {
                sent = Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
            }
        }
        let sent = sent
            .and_then(|()| producer.send_offsets_to_transaction(&job.offsets, &job.group, SEND_OFFSETS_TIMEOUT))
            .map_err(|e| KafkaClientError::kafka("send offsets to transaction", e));
        let ok = sent.is_ok();
        // The receiver is gone when the committer stopped waiting (stuck, or shutting down).
        let _ = job.sent.send(sent);
        if ok {
            if let Some((point, name)) = &job.fault {
                crate::runtime::fault::hang(point, "commit", name);
            }
            let _ = job.committed.send(Txn::commit(producer));
        }
    }

    /// Commits, calling again while librdkafka says the outcome is not known yet (a retriable
    /// error, e.g. its timeout during a coordinator failover): aborting then could redo records
    /// whose transaction did commit. An error that requires an abort, or a fatal one, returns.
    fn commit(producer: &TxnProducer) -> Result<(), KafkaClientError> {
        loop {
            match producer.commit_transaction(TXN_TIMEOUT) {
                Err(KafkaError::Transaction(t)) if t.is_retriable() && !t.txn_requires_abort() && !t.is_fatal() => {
                    tracing::warn!(error = %t, "commit not confirmed yet; calling it again");
                }
                r => return r.map_err(|e| KafkaClientError::kafka("commit transaction", e)),
            }
        }
    }
}

/// One answer of the producer's thread, if it came within `after` (none also when the thread
/// is gone).
async fn answer<T>(rx: oneshot::Receiver<T>, after: Duration) -> Option<T> {
    tokio::time::timeout(after, rx).await.ok().and_then(Result::ok)
}

fn is_fenced(e: &KafkaClientError) -> bool {
    let KafkaClientError::Kafka { source, .. } = e else { return false };
    matches!(
        source.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )
    )
}

impl Committer {
    /// Creates the producer with `transactional.id` = prefix + instance id and fences any
    /// previous incarnation of this instance (aborting what it left open).
    pub async fn new(settings: &Settings, instance: &str, ledger: LedgerView, metrics: Metrics) -> Result<Committer, KafkaClientError> {
        let mut cfg = kafka::client_config(settings, Role::Producer);
        cfg.set("transactional.id", format!("{}-{}", settings.processor.transactional_id_prefix, instance))
            .set("transaction.timeout.ms", settings.processor.transaction_timeout_ms.to_string());
        let mut abandoned = Vec::new();
        let txn = Txn::start(&cfg, &mut abandoned).await?;
        Ok(Committer {
            txn,
            cfg,
            state: State::Idle,
            queue: Arc::default(),
            pump: None,
            failed: None,
            per_transaction: settings.processor.records_per_transaction.max(1) as usize,
            linger: Duration::from_millis(settings.processor.transaction_linger_ms),
            wake: Arc::default(),
            stuck: Arc::new(AtomicBool::new(false)),
            fenced: false,
            abandoned,
            last_fenced: None,
            ledger,
            metrics,
            largest: Arc::default(),
        })
    }

    /// The run ledger as this instance's transactions leave it (including those queued).
    pub fn ledger(&self) -> &LedgerView {
        &self.ledger
    }

    /// Catches the ledger view up to the end of its topic (after gaining partitions, or to
    /// see what other instances wrote). What is queued is committed first: the read would
    /// otherwise meet older entries of keys whose newer entries are written through but not
    /// sent yet, and put them back. A failed commit met there is reported by the next
    /// [`Committer::commit`] or [`Committer::settle`].
    pub async fn catch_up_ledger(&mut self, timeout: Duration) -> Result<usize, super::ledger::LedgerError> {
        self.drain().await;
        self.ledger.catch_up(timeout).await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records (offsets aside) in the largest transaction this committer has begun.
    pub fn largest_transaction(&self) -> usize {
        self.largest.load(Ordering::Relaxed)
    }

    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Queues `ready` as the transaction of `consumed` and returns at once: the pump commits
    /// it with `consumed`'s offset, alone or with the records queued beside it. Its ledger
    /// entries are written through now (a twin tick queued behind must see them). On error,
    /// the index is that of the first record not committed (an earlier one, when an earlier
    /// transaction failed; `ready` is dropped then, as everything after it).
    pub async fn commit(&mut self, ready: Ready, consumed: Consumed<'_>, group: ConsumerGroupMetadata) -> Result<(), (usize, KafkaClientError)> {
        // Crash tests: the record's effects are done and it is never committed; here, on the
        // processor's task, so no later record is prepared first.
        if let Some((point, job)) = &ready.fault {
            crate::runtime::fault::point(point, job);
        }
        if self.pump.as_ref().is_some_and(|p| p.is_finished()) {
            self.drain().await;
        }
        if let Some(failed) = self.failed.take() {
            return Err(failed);
        }
        if self.pump.is_none() {
            // A transaction a failed step could not abort (broker away), or a producer to
            // replace, is dealt with before the pump begins the next.
            self.abort().await.map_err(|e| (consumed.index, e))?;
        }
        // Under the queue's lock, so a pump failing meanwhile takes these back with the rest.
        let queue = self.queue.clone();
        let start = {
            let mut q = lock(&queue);
            if q.failed {
                None
            } else {
                let replaced = ready.ledger.into_iter().map(|(key, entry)| (key.clone(), self.ledger.write_through(key, entry))).collect();
                q.entries.push_back(Entry {
                    index: consumed.index,
                    records: ready.records,
                    topic: consumed.topic.to_string(),
                    partition: consumed.partition,
                    offset: consumed.offset,
                    group: Some(group),
                    replaced,
                    samples: ready.samples,
                    fault: ready.fault,
                    more: consumed.more,
                    queued: Instant::now(),
                });
                q.flush = false;
                // A pump that failed keeps `running` until drained: none starts after a failure.
                Some(!std::mem::replace(&mut q.running, true))
            }
        };
        let Some(start) = start else {
            // The pump failed since the check above: what it failed is reported instead.
            self.drain().await;
            return Err(self.failed.take().unwrap_or((consumed.index, KafkaClientError::kafka("commit transaction", KafkaError::Canceled))));
        };
        if start {
            let pump = Pump {
                queue: self.queue.clone(),
                producer: self.txn.producer.clone(),
                jobs: self.txn.jobs.clone(),
                stuck: self.stuck.clone(),
                metrics: self.metrics.clone(),
                largest: self.largest.clone(),
                per_transaction: self.per_transaction,
                linger: self.linger,
                wake: self.wake.clone(),
            };
            self.pump = Some(tokio::spawn(pump.run()));
        } else {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Waits until everything queued is committed. If a transaction failed, its ledger entries
    /// (and those of everything queued after it) are taken back, the transaction stays open
    /// for the reset path, and the index of the first record not committed is returned.
    pub async fn settle(&mut self) -> Result<(), (usize, KafkaClientError)> {
        self.drain().await;
        match self.failed.take() {
            Some(failed) => Err(failed),
            None => Ok(()),
        }
    }

    /// Waits for the pump to finish what is queued; a failure is taken back from the view at
    /// once and kept for the next [`Committer::settle`] or [`Committer::commit`] to report.
    async fn drain(&mut self) {
        // Awaited in place and taken only once complete: if this future is dropped while
        // waiting (a step cut short by shutdown), the pump keeps going until the next drain;
        // the producer must not be used meanwhile.
        let Some(pump) = &mut self.pump else { return };
        lock(&self.queue).flush = true;
        self.wake.notify_one();
        let outcome = pump.await;
        self.pump = None;
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(f)) => {
                let mut q = lock(&self.queue);
                (q.running, q.failed, q.taken) = (false, false, None);
                f
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                // Cancelled only when the runtime shuts down: the transaction it was
                // committing may not have, so everything from its first record is redone
                // (that transaction's write-throughs went with the task; the process is
                // stopping, and its successor reads the ledger afresh).
                let mut q = lock(&self.queue);
                (q.running, q.failed) = (false, false);
                let index = q.taken.take().or(q.entries.front().map(|e| e.index)).unwrap_or(0);
                let replaced = q.entries.drain(..).flat_map(|e| e.replaced).collect();
                Failure { index, error: KafkaClientError::kafka("commit transaction", KafkaError::Canceled), replaced, open: true, fenced: false }
            }
        };
        // A commit of unknown outcome is left to the successor (see `Pump::commit`): aborting
        // it here could not succeed while the call is in flight.
        self.state = if failure.open { State::Open } else { State::Idle };
        self.fenced |= failure.fenced;
        for (key, previous) in failure.replaced.into_iter().rev() {
            self.ledger.restore(key, previous);
        }
        if self.failed.is_none() {
            self.failed = Some((failure.index, failure.error));
        }
    }

    /// Aborts the open transaction, if any (the producer side of the processor's one reset
    /// path). What is queued is committed first and, if that failed, aborted. On
    /// error the transaction stays open, so the next reset or commit tries again; the error's
    /// class tells whether the processor must stop. `Ok(true)`: the producer was replaced (see
    /// the module doc), so a fenced producer's error is spent and the records can be redone.
    pub async fn reset(&mut self) -> Result<bool, KafkaClientError> {
        if let Err((_, e)) = self.settle().await {
            tracing::debug!(error = %e, "commit in flight failed; aborting it");
        }
        self.abort().await
    }

    /// Aborts the open transaction, or replaces a producer that cannot abort it; `Ok(true)`
    /// when the producer was replaced.
    async fn abort(&mut self) -> Result<bool, KafkaClientError> {
        // The flags are cleared only once a replacement succeeded: if it fails (broker away),
        // the next reset tries again.
        if self.stuck.load(Ordering::SeqCst) {
            return self.replace_stuck().await;
        }
        if self.fenced {
            let replaced = self.replace_fenced(None).await?;
            self.fenced = false;
            return Ok(replaced);
        }
        if !matches!(self.state, State::Open) {
            return Ok(false);
        }
        // On the producer's thread, watched: an abort that never returns (librdkafka retrying a
        // lost coordinator) must not hold a runtime worker, and its producer is replaced.
        let watch = TXN_TIMEOUT + GRACE;
        let Some(answer) = self.txn.call(Job::Abort, watch).await else {
            tracing::warn!(after_secs = watch.as_secs(), "no answer to the abort; the transactional producer is stuck");
            self.stuck.store(true, Ordering::SeqCst);
            return self.replace_stuck().await;
        };
        match answer {
            Ok(()) => {
                self.aborted();
                Ok(false)
            }
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                self.aborted();
                Ok(false)
            }
            Err(e) => {
                let e = KafkaClientError::kafka("abort transaction", e);
                match e.class() {
                    // Still open: the next reset or begin tries again.
                    ErrorClass::Retry => Err(e),
                    ErrorClass::Fatal if is_fenced(&e) => self.replace_fenced(Some(e)).await,
                    // The producer cannot abort (e.g. an earlier call that timed out while the
                    // broker was away is still "in progress" inside librdkafka): replace it.
                    _ => {
                        tracing::warn!(error = %e, "transactional producer unusable; replacing it");
                        self.replace("unusable").await?;
                        Ok(true)
                    }
                }
            }
        }
    }

    /// Replaces a producer whose call got no answer; it is left to its blocked thread, unless
    /// too many are blocked already.
    async fn replace_stuck(&mut self) -> Result<bool, KafkaClientError> {
        self.abandoned.retain(|t| Arc::strong_count(t) > 1);
        if self.abandoned.len() >= MAX_STUCK {
            return Err(KafkaClientError::TooManyStuck(self.abandoned.len() + 1));
        }
        let old = self.txn.running.clone();
        self.replace("stuck").await?;
        self.abandoned.push(old);
        self.stuck.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// Replaces a fenced producer unless one was replaced within [`FENCE_WINDOW`].
    async fn replace_fenced(&mut self, e: Option<KafkaClientError>) -> Result<bool, KafkaClientError> {
        if self.last_fenced.is_some_and(|t| t.elapsed() < FENCE_WINDOW) {
            let id = self.cfg.get("transactional.id").unwrap_or_default();
            tracing::error!(
                transactional_id = id,
                window_secs = FENCE_WINDOW.as_secs(),
                "fenced again soon after the last replacement: another live process uses this transactional id (check processor.instance_id); stopping"
            );
            return Err(e.unwrap_or_else(|| KafkaClientError::kafka("begin transaction", KafkaError::Global(RDKafkaErrorCode::Fenced))));
        }
        tracing::warn!("transactional producer fenced with no successor in sight; replacing it once");
        self.replace("fenced").await?;
        self.last_fenced = Some(Instant::now());
        Ok(true)
    }

    /// A new producer takes the transactional id (fencing the old one and aborting its open
    /// transaction broker-side); the old one is dropped, or left to its blocked thread.
    async fn replace(&mut self, reason: &str) -> Result<(), KafkaClientError> {
        tracing::warn!(reason, "replacing the transactional producer");
        self.txn = Txn::start(&self.cfg, &mut self.abandoned).await?;
        self.metrics.producer_replaced(reason);
        if !matches!(self.state, State::Idle) {
            self.aborted();
        }
        Ok(())
    }

    fn aborted(&mut self) {
        self.state = State::Idle;
        self.metrics.aborted();
    }
}

/// What the mutex holds, whatever a panicking holder left: no holder here can leave a change
/// half done (the queue's entries are moved in and out whole, the count's fields are each set
/// in one step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The task that commits what the processor queues, in order: it takes every entry queued
/// (up to the transaction's limits), begins, sends their records, sends their offsets and
/// commits, then takes what was queued meanwhile, until the queue is empty. So transactions
/// group the records prepared while the previous one committed: one at a time when records
/// are rare (nothing waits), many when they come faster than a commit takes, and those of
/// one batch being prepared close together after a short wait ([`Pump::lingers`]).
struct Pump {
    queue: Arc<Mutex<Queue>>,
    producer: TxnProducer,
    jobs: std::sync::mpsc::Sender<Job>,
    stuck: Arc<AtomicBool>,
    metrics: Metrics,
    largest: Arc<AtomicUsize>,
    per_transaction: usize,
    linger: Duration,
    wake: Arc<tokio::sync::Notify>,
}

/// How a transaction failed: the error, whether it was begun and is left open, and whether
/// `begin_transaction` reported the producer fenced or fatal.
type Failed = (KafkaClientError, bool, bool);

impl Pump {
    async fn run(self) -> Result<(), Failure> {
        loop {
            let taken = {
                let mut q = lock(&self.queue);
                if q.entries.is_empty() {
                    q.running = false;
                    return Ok(());
                }
                match self.lingers(&q) {
                    Some(until) => Err(until),
                    None => Ok(self.take(&mut q)),
                }
            };
            let mut group = match taken {
                Ok(group) => group,
                Err(until) => {
                    // Woken by the next record queued, or by the processor waiting for the queue.
                    let _ = tokio::time::timeout_at(until.into(), self.wake.notified()).await;
                    continue;
                }
            };
            match self.commit(&mut group).await {
                Ok(()) => {
                    lock(&self.queue).taken = None;
                    let samples: Vec<Sample> = group.into_iter().flat_map(|e| e.samples).collect();
                    self.metrics.record(&samples);
                }
                Err((error, open, fenced)) => {
                    // Nothing queued after a failed transaction may commit before it: all of
                    // it is dropped, and redone from the failed transaction's first record.
                    let mut q = lock(&self.queue);
                    q.failed = true;
                    let index = group[0].index;
                    let replaced = group.into_iter().chain(q.entries.drain(..)).flat_map(|e| e.replaced).collect();
                    return Err(Failure { index, error, replaced, open, fenced });
                }
            }
        }
    }

    /// The next transaction's entries, from the front of the queue: as many as its limits allow
    /// (at least one, however large).
    fn take(&self, q: &mut Queue) -> Vec<Entry> {
        let mut group: Vec<Entry> = Vec::new();
        let mut records = 0;
        while let Some(next) = q.entries.front() {
            let full = group.len() >= self.per_transaction || records + next.records.len() > MAX_TRANSACTION_RECORDS;
            if !group.is_empty() && full {
                break;
            }
            records += next.records.len();
            group.extend(q.entries.pop_front());
        }
        q.taken = group.first().map(|e| e.index);
        group
    }

    /// Until when to wait before beginning a transaction, if at all: only while the newest
    /// entry said more records of its batch follow, the transaction has room for one more
    /// like it, and the oldest entry has waited less than the linger. Each transaction costs
    /// the broker about as much as its records when they are 2,000 (docs/performance.md), so
    /// chunks that come slower than a commit but close together share one instead of paying
    /// one each. The processor waiting for the queue (`Queue::flush`) ends the wait.
    fn lingers(&self, q: &Queue) -> Option<Instant> {
        let (first, last) = (q.entries.front()?, q.entries.back()?);
        if self.linger.is_zero() || q.flush || !last.more {
            return None;
        }
        let records: usize = q.entries.iter().map(|e| e.records.len()).sum();
        if q.entries.len() >= self.per_transaction || records + last.records.len() > MAX_TRANSACTION_RECORDS {
            return None;
        }
        let until = first.queued + self.linger;
        (Instant::now() < until).then_some(until)
    }

    /// One transaction for `group`: begin, send its records in order, then its offsets (the
    /// highest of each partition) and commit on the producer's thread, watched.
    async fn commit(&self, group: &mut [Entry]) -> Result<(), Failed> {
        if let Err(e) = self.producer.begin_transaction() {
            let e = KafkaClientError::kafka("begin transaction", e);
            // No transaction is open for the reset path to abort; it replaces the producer.
            let fenced = e.class() == ErrorClass::Fatal;
            return Err((e, false, fenced));
        }
        let open = |e| (e, true, false);
        let total = group.iter().map(|e| e.records.len()).sum::<usize>();
        self.largest.fetch_max(total, Ordering::Relaxed);
        let acks = self.producer.context();
        let generation = acks.begin();
        let mut sent = 0;
        let mut offsets = TopicPartitionList::new();
        for entry in group.iter() {
            for (topic, key, bytes) in &entry.records {
                self.send(generation, &mut sent, topic, key, bytes).await.map_err(open)?;
            }
            // Records of a partition come in offset order: the last one's offset stands.
            offsets
                .add_partition_offset(&entry.topic, entry.partition, Offset::Offset(entry.offset + 1))
                .map_err(|e| open(KafkaClientError::kafka("offsets", e)))?;
        }
        let Some(group_metadata) = group.last_mut().and_then(|e| e.group.take()) else {
            return Err(open(KafkaClientError::kafka("group metadata", KafkaError::Global(RDKafkaErrorCode::State))));
        };
        let fault = group.iter().find_map(|e| e.fault.clone());
        // Deliveries are awaited before committing: librdkafka's commit would flush them too,
        // but its flush waits on the delivery-report poll interval (about 100 ms). The commit
        // blocks until the broker has written the markers, hence the producer's thread.
        acks.delivered(sent).await.map_err(open)?;
        let (sent, sent_rx) = oneshot::channel();
        let (committed, committed_rx) = oneshot::channel();
        let job = Job::Commit(CommitJob { offsets, group: group_metadata, fault, sent, committed });
        // No answer to the offsets (or no thread to ask): the producer is stuck; it is
        // replaced and the records redone, which is safe because nothing was committed.
        let offsets_watch = SEND_OFFSETS_TIMEOUT + GRACE;
        let sent = match self.jobs.send(job) {
            Ok(()) => answer(sent_rx, offsets_watch).await,
            Err(_) => None,
        };
        let Some(sent) = sent else {
            self.stuck.store(true, Ordering::SeqCst);
            return Err(open(KafkaClientError::Stuck { operation: "send offsets to transaction", after: offsets_watch }));
        };
        sent.map_err(open)?;
        // No answer to the commit: it may have committed (the EndTxn reached the coordinator),
        // so redoing its records in place could emit them twice. Fatal: the process stops and
        // its successor fences this producer and resumes from the committed offsets.
        let commit_watch = 2 * TXN_TIMEOUT + GRACE;
        match answer(committed_rx, commit_watch).await {
            Some(r) => r.map_err(open),
            None => Err((KafkaClientError::CommitUnknown { after: commit_watch }, false, false)),
        }
    }

    /// Queues one record in the open transaction (`generation`, of [`Acks::begin`]), counting
    /// it in `sent`.
    async fn send(&self, generation: usize, sent: &mut usize, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaClientError> {
        let mut record = BaseRecord::with_opaque_to(topic, generation).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    *sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Let deliveries drain before queueing more.
                    record = r;
                    self.producer.context().delivered(*sent).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(KafkaClientError::kafka("send", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(acks: &Arc<Acks>, sent: usize) -> tokio::task::JoinHandle<Result<(), KafkaClientError>> {
        let acks = acks.clone();
        tokio::spawn(async move { acks.delivered(sent).await })
    }

    #[tokio::test]
    async fn waits_for_every_acknowledgement_of_its_own_transaction() {
        let acks = Arc::new(Acks::default());
        let earlier = acks.begin();
        let now = acks.begin();
        let waiting = wait(&acks, 3);
        acks.ack(now, None);
        acks.ack(now, None);
        // A late acknowledgement of an earlier transaction does not count.
        acks.ack(earlier, None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        acks.ack(now, None);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().is_ok());
        // Counted before the wait began: returns at once.
        let next = acks.begin();
        acks.ack(next, None);
        assert!(acks.delivered(1).await.is_ok());
        assert!(acks.delivered(0).await.is_ok());
    }

    #[tokio::test]
    async fn the_first_failure_ends_the_wait() {
        let acks = Arc::new(Acks::default());
        let earlier = acks.begin();
        let now = acks.begin();
        acks.ack(earlier, Some(&KafkaError::Canceled));
        let waiting = wait(&acks, 3);
        acks.ack(now, None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        acks.ack(now, Some(&KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue)));
        acks.ack(now, Some(&KafkaError::Canceled));
        let e = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap_err();
        assert_eq!(e.class(), ErrorClass::Retry, "{e}");
        assert!(e.to_string().contains("urge"), "the first failure is kept: {e}");
        // The next transaction starts clean.
        let next = acks.begin();
        acks.ack(next, None);
        assert!(acks.delivered(1).await.is_ok());
    }
}
