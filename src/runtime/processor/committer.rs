//! The committer: the only code that begins, sends, commits, settles and aborts Kafka
//! transactions, and the only writer of the run-ledger view. One transactional producer bound
//! to the processor's consumer group (EOS v2, KIP-447); one transaction per consumed record.
//!
//! A record's transaction is [`Committer::commit`]ted in one call: wait for the previous
//! record's commit ([`Committer::settle`]), begin, send what its [`Ready`] plan holds, and start
//! the commit on a blocking thread, so the processor prepares the next record meanwhile. Its
//! ledger entries are written through at once (a twin tick queued behind must see them) and
//! taken back if that commit fails. Everything that fails takes one way back:
//! [`Committer::reset`], called by the processor's reset path (and when it stops).
//!
//! States: `Idle` (no transaction), `Open` (begun; a failure before the commit started, or a
//! commit that failed, leaves it open until aborted) and `Committing` (a commit in flight,
//! with what it needs if it fails).
//!
//! Fencing: a zombie (an instance that lost its partitions while paused) fails at
//! `send_offsets_to_transaction`/`commit` because its group generation is stale, so nothing it
//! wrote becomes visible under read_committed.
//!
//! Replacing the producer: the blocking calls run on a thread of the producer's own, watched
//! with librdkafka's timeout plus a grace period, because librdkafka 2.12 does not always hold
//! it (`send_offsets_to_transaction` waits for good when the group coordinator dies mid-call:
//! confluentinc/librdkafka#5456, #5511; seen in the cluster fault profile). An offsets call
//! past its watch leaves the producer *stuck*: it is abandoned with its thread and a new one
//! takes the transactional id, whose `init_transactions` fences the old one and aborts its
//! transaction, so whatever the abandoned call does later cannot commit. A commit past its
//! watch may have committed, so it stops the process instead (its successor resumes from the
//! committed offsets); a commit librdkafka reports as not confirmed yet is called again. A producer *fenced* while no
//! successor runs (the coordinator bumps the epoch of a transaction it timed out, e.g. across
//! a controller failover) is replaced too, at most once per [`FENCE_WINDOW`]: fenced again
//! within it means another live process uses this transactional id, and this one stops.
//! Every replacement is counted (`scheduled_jobs_producer_replacements_total`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
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

/// One record's transaction, encoded and ready to send.
pub struct Ready {
    /// (topic, key, Confluent-framed value), sent in this order.
    pub records: Vec<(String, String, Vec<u8>)>,
    /// Ledger entries the records above carry, written through to the view.
    pub ledger: Vec<(String, LedgerEntry)>,
    /// What the transaction did, counted once its commit succeeds.
    pub samples: Vec<Sample>,
    /// A fault point to pass between sending and committing (crash tests).
    pub fault: Option<(&'static str, String)>,
}

/// The consumed record whose offset a transaction commits, and where it sits in its batch.
pub struct Consumed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Index in the batch: where the reset path rewinds to if this commit fails.
    pub index: usize,
}

/// A commit in flight.
struct Inflight {
    index: usize,
    task: tokio::task::JoinHandle<Result<(), KafkaClientError>>,
    /// Ledger entries written through for it, with what they replaced (restored on failure).
    replaced: Vec<(String, Option<LedgerEntry>)>,
    samples: Vec<Sample>,
}

enum State {
    Idle,
    Open,
    Committing(Inflight),
}

pub struct Committer {
    txn: Txn,
    /// To replace a producer left unusable.
    cfg: rdkafka::ClientConfig,
    state: State,
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
    largest: usize,
}

/// One transaction's blocking calls, for the producer's thread, and where it answers each.
struct Job {
    offsets: TopicPartitionList,
    group: ConsumerGroupMetadata,
    fault: Option<(&'static str, String)>,
    sent: oneshot::Sender<Result<(), KafkaClientError>>,
    committed: oneshot::Sender<Result<(), KafkaClientError>>,
}

/// A transactional producer and the thread that makes its blocking calls: a thread of its own,
/// not tokio's blocking pool, so that a call that never returns can be abandoned with its
/// producer without holding up the runtime's shutdown.
struct Txn {
    producer: FutureProducer,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Shared with the thread, which drops its clone when it ends.
    running: Arc<()>,
}

impl Txn {
    /// A transactional producer that has fenced every earlier one with the same id, aborting
    /// whatever they left open, and its thread.
    fn start(cfg: &rdkafka::ClientConfig) -> Result<Txn, KafkaClientError> {
        let producer: FutureProducer = kafka::create(cfg)?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| KafkaClientError::kafka("init transactions", e))?;
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
        Ok(Txn { producer, jobs, running })
    }

    /// Sends the offsets, then commits if that worked; each answer goes back as soon as known.
    fn run(producer: &FutureProducer, job: Job) {
        if let Some((point, name)) = &job.fault {
            crate::runtime::fault::hang(point, "send-offsets", name);
        }
        let sent = producer
            .send_offsets_to_transaction(&job.offsets, &job.group, SEND_OFFSETS_TIMEOUT)
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
    fn commit(producer: &FutureProducer) -> Result<(), KafkaClientError> {
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
async fn answer(rx: oneshot::Receiver<Result<(), KafkaClientError>>, after: Duration) -> Option<Result<(), KafkaClientError>> {
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

/// Waits until every record is acknowledged; the first failure is the transaction's.
async fn delivered(pending: Vec<DeliveryFuture>) -> Result<(), KafkaClientError> {
    let results = try_join_all(pending).await.map_err(|_| KafkaClientError::kafka("send", KafkaError::Canceled))?;
    for r in results {
        r.map_err(|(e, _)| KafkaClientError::kafka("deliver", e))?;
    }
    Ok(())
}

impl Committer {
    /// Creates the producer with `transactional.id` = prefix + instance id and fences any
    /// previous incarnation of this instance (aborting what it left open).
    pub fn new(settings: &Settings, instance: &str, ledger: LedgerView, metrics: Metrics) -> Result<Committer, KafkaClientError> {
        let mut cfg = kafka::client_config(settings, Role::Producer);
        cfg.set("transactional.id", format!("{}-{}", settings.processor.transactional_id_prefix, instance))
            .set("transaction.timeout.ms", settings.processor.transaction_timeout_ms.to_string());
        let txn = Txn::start(&cfg)?;
        Ok(Committer {
            txn,
            cfg,
            state: State::Idle,
            stuck: Arc::new(AtomicBool::new(false)),
            fenced: false,
            abandoned: Vec::new(),
            last_fenced: None,
            ledger,
            metrics,
            largest: 0,
        })
    }

    /// The run ledger as this instance's transactions leave it (including commits in flight).
    pub fn ledger(&self) -> &LedgerView {
        &self.ledger
    }

    /// Catches the ledger view up to the end of its topic (after gaining partitions).
    pub async fn catch_up_ledger(&mut self, timeout: Duration) -> Result<usize, super::ledger::LedgerError> {
        self.ledger.catch_up(timeout).await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records (offsets aside) in the largest transaction this committer has begun.
    pub fn largest_transaction(&self) -> usize {
        self.largest
    }

    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Runs `ready` as the transaction of `consumed`: waits for the previous commit, begins,
    /// sends, and starts committing with `consumed`'s offset. On error the index is that of
    /// the first record not committed (the previous one, when its commit failed).
    pub async fn commit(&mut self, ready: Ready, consumed: Consumed<'_>, group: ConsumerGroupMetadata) -> Result<(), (usize, KafkaClientError)> {
        self.settle().await?;
        let at = consumed.index;
        self.begin().map_err(|e| (at, e))?;
        self.largest = self.largest.max(ready.records.len());
        let mut pending = Vec::with_capacity(ready.records.len());
        for (topic, key, bytes) in &ready.records {
            self.send(&mut pending, topic, key, bytes).await.map_err(|e| (at, e))?;
        }
        if let Some((point, job)) = &ready.fault {
            crate::runtime::fault::point(point, job);
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(consumed.topic, consumed.partition, Offset::Offset(consumed.offset + 1))
            .map_err(|e| (at, KafkaClientError::kafka("offsets", e)))?;
        let (sent, sent_rx) = oneshot::channel();
        let (committed, committed_rx) = oneshot::channel();
        let job = Job { offsets, group, fault: ready.fault, sent, committed };
        let jobs = self.txn.jobs.clone();
        let stuck = self.stuck.clone();
        // Deliveries are awaited before committing: librdkafka's commit would flush them too,
        // but its flush waits on the delivery-report poll interval (about 100 ms). The commit
        // blocks until the broker has written the markers, hence the producer's thread.
        let task = tokio::spawn(async move {
            delivered(pending).await?;
            // No answer to the offsets (or no thread to ask): the producer is stuck; it is
            // replaced and the record redone, which is safe because nothing was committed.
            let offsets_watch = SEND_OFFSETS_TIMEOUT + GRACE;
            let sent = match jobs.send(job) {
                Ok(()) => answer(sent_rx, offsets_watch).await,
                Err(_) => None,
            };
            let Some(sent) = sent else {
                stuck.store(true, Ordering::SeqCst);
                return Err(KafkaClientError::Stuck { operation: "send offsets to transaction", after: offsets_watch });
            };
            sent?;
            // No answer to the commit: it may have committed (the EndTxn reached the
            // coordinator), so redoing its records in place could emit them twice. Fatal: the
            // process stops and its successor fences this producer and resumes from the
            // committed offsets.
            let commit_watch = 2 * TXN_TIMEOUT + GRACE;
            answer(committed_rx, commit_watch).await.unwrap_or(Err(KafkaClientError::CommitUnknown { after: commit_watch }))
        });
        let replaced = ready.ledger.into_iter().map(|(key, entry)| (key.clone(), self.ledger.write_through(key, entry))).collect();
        self.state = State::Committing(Inflight { index: at, task, replaced, samples: ready.samples });
        Ok(())
    }

    /// Waits for the commit in flight, if any. Its samples are counted once it succeeded; if
    /// it failed, its ledger entries are taken back, the transaction stays open for the reset
    /// path, and the failed record's index is returned.
    pub async fn settle(&mut self) -> Result<(), (usize, KafkaClientError)> {
        // Awaited in place and taken only once complete: if this future is dropped while
        // waiting (a step cut short by shutdown), the commit stays in flight for the next
        // settle; the producer must not be used until it has finished.
        let State::Committing(f) = &mut self.state else {
            return Ok(());
        };
        let outcome = (&mut f.task).await;
        let State::Committing(f) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(());
        };
        match outcome.unwrap_or_else(|_| Err(KafkaClientError::kafka("commit transaction", KafkaError::Canceled))) {
            Ok(()) => {
                self.metrics.record(&f.samples);
                Ok(())
            }
            Err(e) => {
                // A commit of unknown outcome is left to the successor (see `commit`):
                // aborting it here could not succeed while the call is in flight.
                self.state = if matches!(e, KafkaClientError::CommitUnknown { .. }) { State::Idle } else { State::Open };
                for (key, previous) in f.replaced.into_iter().rev() {
                    self.ledger.restore(key, previous);
                }
                Err((f.index, e))
            }
        }
    }

    fn begin(&mut self) -> Result<(), KafkaClientError> {
        // A transaction a failed step could not abort (broker away) is aborted first.
        self.abort()?;
        if let Err(e) = self.txn.producer.begin_transaction() {
            let e = KafkaClientError::kafka("begin transaction", e);
            // No transaction is open for the reset path to abort; it replaces the producer.
            self.fenced = e.class() == ErrorClass::Fatal;
            return Err(e);
        }
        self.state = State::Open;
        Ok(())
    }

    /// Queues one record in the open transaction.
    async fn send(&self, pending: &mut Vec<DeliveryFuture>, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaClientError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            match self.txn.producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Let deliveries drain before queueing more.
                    record = r;
                    delivered(std::mem::take(pending)).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(KafkaClientError::kafka("send", e)),
            }
        }
    }

    /// Aborts the open transaction, if any (the producer side of the processor's one reset
    /// path). A commit still in flight is waited for first and, if it failed, aborted too. On
    /// error the transaction stays open, so the next reset or commit tries again; the error's
    /// class tells whether the processor must stop. `Ok(true)`: the producer was replaced (see
    /// the module doc), so a fenced producer's error is spent and the records can be redone.
    pub async fn reset(&mut self) -> Result<bool, KafkaClientError> {
        if let Err((_, e)) = self.settle().await {
            tracing::debug!(error = %e, "commit in flight failed; aborting it");
        }
        self.abort()
    }

    /// Aborts the open transaction, or replaces a producer that cannot abort it; `Ok(true)`
    /// when the producer was replaced.
    fn abort(&mut self) -> Result<bool, KafkaClientError> {
        // The flags are cleared only once a replacement succeeded: if it fails (broker away),
        // the next reset tries again.
        if self.stuck.load(Ordering::SeqCst) {
            self.abandoned.retain(|t| Arc::strong_count(t) > 1);
            if self.abandoned.len() >= MAX_STUCK {
                return Err(KafkaClientError::TooManyStuck(self.abandoned.len() + 1));
            }
            let old = self.txn.running.clone();
            self.replace("stuck")?;
            self.abandoned.push(old);
            self.stuck.store(false, Ordering::SeqCst);
            return Ok(true);
        }
        if self.fenced {
            let replaced = self.replace_fenced(None)?;
            self.fenced = false;
            return Ok(replaced);
        }
        if !matches!(self.state, State::Open) {
            return Ok(false);
        }
        match self.txn.producer.abort_transaction(TXN_TIMEOUT) {
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
                    ErrorClass::Fatal if is_fenced(&e) => self.replace_fenced(Some(e)),
                    // The producer cannot abort (e.g. an earlier call that timed out while the
                    // broker was away is still "in progress" inside librdkafka): replace it.
                    _ => {
                        tracing::warn!(error = %e, "transactional producer unusable; replacing it");
                        self.replace("unusable")?;
                        Ok(true)
                    }
                }
            }
        }
    }

    /// Replaces a fenced producer unless one was replaced within [`FENCE_WINDOW`].
    fn replace_fenced(&mut self, e: Option<KafkaClientError>) -> Result<bool, KafkaClientError> {
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
        self.replace("fenced")?;
        self.last_fenced = Some(Instant::now());
        Ok(true)
    }

    /// A new producer takes the transactional id (fencing the old one and aborting its open
    /// transaction broker-side); the old one is dropped, or left to its blocked thread.
    fn replace(&mut self, reason: &str) -> Result<(), KafkaClientError> {
        tracing::warn!(reason, "replacing the transactional producer");
        self.txn = Txn::start(&self.cfg)?;
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
