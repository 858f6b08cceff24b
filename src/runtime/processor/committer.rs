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

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::ledger::LedgerView;
use crate::config::Settings;
use crate::error::ErrorClass;
use crate::kafka::{self, KafkaClientError, Role};
use crate::runtime::metrics::{Metrics, Sample};
use crate::wire::internal::LedgerEntry;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

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
    producer: FutureProducer,
    /// To replace a producer left unusable (see [`Committer::abort`]).
    cfg: rdkafka::ClientConfig,
    state: State,
    ledger: LedgerView,
    metrics: Metrics,
    /// Records in the largest transaction begun (diagnostics, benchmarks).
    largest: usize,
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
        let producer = Committer::producer(&cfg)?;
        Ok(Committer { producer, cfg, state: State::Idle, ledger, metrics, largest: 0 })
    }

    /// A transactional producer that has fenced every earlier one with the same id, aborting
    /// whatever they left open.
    fn producer(cfg: &rdkafka::ClientConfig) -> Result<FutureProducer, KafkaClientError> {
        let producer: FutureProducer = kafka::create(cfg)?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| KafkaClientError::kafka("init transactions", e))?;
        Ok(producer)
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
        let producer = self.producer.clone();
        // Deliveries are awaited before committing: librdkafka's commit would flush them too,
        // but its flush waits on the delivery-report poll interval (about 100 ms). The commit
        // blocks until the broker has written the markers, hence the blocking thread.
        let task = tokio::spawn(async move {
            delivered(pending).await?;
            tokio::task::spawn_blocking(move || {
                producer
                    .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                    .map_err(|e| KafkaClientError::kafka("send offsets to transaction", e))?;
                producer.commit_transaction(TXN_TIMEOUT).map_err(|e| KafkaClientError::kafka("commit transaction", e))
            })
            .await
            .unwrap_or_else(|_| Err(KafkaClientError::kafka("commit transaction", KafkaError::Canceled)))
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
                self.state = State::Open;
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
        self.producer.begin_transaction().map_err(|e| KafkaClientError::kafka("begin transaction", e))?;
        self.state = State::Open;
        Ok(())
    }

    /// Queues one record in the open transaction.
    async fn send(&self, pending: &mut Vec<DeliveryFuture>, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaClientError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send_result(record) {
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
    /// class tells whether the producer is unusable (fenced, fatal) and the processor must stop.
    pub async fn reset(&mut self) -> Result<(), KafkaClientError> {
        if let Err((_, e)) = self.settle().await {
            tracing::debug!(error = %e, "commit in flight failed; aborting it");
        }
        self.abort()
    }

    fn abort(&mut self) -> Result<(), KafkaClientError> {
        if !matches!(self.state, State::Open) {
            return Ok(());
        }
        match self.producer.abort_transaction(TXN_TIMEOUT) {
            Ok(()) => {
                self.aborted();
                Ok(())
            }
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                self.aborted();
                Ok(())
            }
            Err(e) => {
                let e = KafkaClientError::kafka("abort transaction", e);
                match e.class() {
                    // Still open: the next reset or begin tries again.
                    ErrorClass::Retry => Err(e),
                    // Another incarnation owns the transactional id: this one must stop.
                    ErrorClass::Fatal if is_fenced(&e) => Err(e),
                    // The producer cannot abort (e.g. an earlier call that timed out while the
                    // broker was away is still "in progress" inside librdkafka): replace it.
                    // Its successor's init_transactions aborts the open transaction broker-side.
                    _ => {
                        tracing::warn!(error = %e, "transactional producer unusable; replacing it");
                        self.producer = Committer::producer(&self.cfg)?;
                        self.aborted();
                        Ok(())
                    }
                }
            }
        }
    }

    fn aborted(&mut self) {
        self.state = State::Idle;
        self.metrics.aborted();
    }
}
