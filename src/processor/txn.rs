//! The one place Kafka transactions live: a transactional producer bound to the processor's
//! consumer group (EOS v2, KIP-447). A transaction is begun, records are sent, the consumed
//! offsets are added with the group metadata, and it is committed — or aborted through
//! [`Txn::abort`], the single reset path for the producer side.
//!
//! Fencing: a zombie (an instance that lost its partitions while paused) fails at
//! `send_offsets_to_transaction`/`commit` because its group generation is stale, so nothing it
//! wrote becomes visible under read_committed.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

use crate::config::Settings;
use crate::error::ErrorClass;
use crate::kafka::{self, KafkaClientError, Role};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A commit in progress on a blocking thread. Awaiting it by reference keeps it owned, so a
/// caller cancelled while waiting (a step cut short by shutdown) can wait for it again.
pub struct Committing(pub tokio::task::JoinHandle<Result<(), KafkaClientError>>);

pub struct Txn {
    producer: FutureProducer,
    /// To replace a producer left unusable (see [`Txn::abort`]).
    cfg: rdkafka::ClientConfig,
    pending: Vec<DeliveryFuture>,
    open: bool,
}

impl Txn {
    /// Creates the producer with `transactional.id` = prefix + instance id and fences any
    /// previous incarnation of this instance (aborting what it left open).
    pub fn new(settings: &Settings) -> Result<Txn, KafkaClientError> {
        let mut cfg = kafka::client_config(settings, Role::Producer);
        cfg.set(
            "transactional.id",
            format!("{}-{}", settings.processor.transactional_id_prefix, settings.instance_id()),
        )
        .set("transaction.timeout.ms", settings.processor.transaction_timeout_ms.to_string());
        let producer = Txn::producer(&cfg)?;
        Ok(Txn { producer, cfg, pending: Vec::new(), open: false })
    }

    /// A transactional producer that has fenced every earlier one with the same id, aborting
    /// whatever they left open.
    fn producer(cfg: &rdkafka::ClientConfig) -> Result<FutureProducer, KafkaClientError> {
        let producer: FutureProducer = kafka::create(cfg)?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| KafkaClientError::kafka("init transactions", e))?;
        Ok(producer)
    }

    pub fn begin(&mut self) -> Result<(), KafkaClientError> {
        // A transaction a failed step could not abort (broker away) is aborted first.
        if self.open {
            self.abort()?;
        }
        self.producer.begin_transaction().map_err(|e| KafkaClientError::kafka("begin transaction", e))?;
        self.open = true;
        self.pending.clear();
        Ok(())
    }

    /// Queues one record in the open transaction.
    pub async fn send(&mut self, topic: &str, key: &str, payload: &[u8]) -> Result<(), KafkaClientError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Let deliveries drain before queueing more.
                    record = r;
                    self.await_pending().await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(KafkaClientError::kafka("send", e)),
            }
        }
    }

    async fn await_pending(&mut self) -> Result<(), KafkaClientError> {
        delivered(std::mem::take(&mut self.pending)).await
    }

    /// Starts committing everything sent since `begin`, with the consumed offsets, on a
    /// blocking thread: librdkafka's commit blocks until the broker has written the markers,
    /// and the processor prepares the next record's effects meanwhile (they are idempotent
    /// and keyed, so preparing them before this commit is known to succeed is safe). The
    /// producer must not be used again until [`Txn::finish_commit`] has returned.
    pub fn start_commit(&mut self, offsets: TopicPartitionList, group: ConsumerGroupMetadata) -> Committing {
        let pending = std::mem::take(&mut self.pending);
        let producer = self.producer.clone();
        Committing(tokio::spawn(async move {
            // Deliveries are awaited before committing: librdkafka's commit would flush them
            // too, but its flush waits on the delivery-report poll interval (≈ 100 ms).
            delivered(pending).await?;
            tokio::task::spawn_blocking(move || {
                producer
                    .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                    .map_err(|e| KafkaClientError::kafka("send offsets to transaction", e))?;
                producer.commit_transaction(TXN_TIMEOUT).map_err(|e| KafkaClientError::kafka("commit transaction", e))
            })
            .await
            .unwrap_or_else(|_| Err(KafkaClientError::kafka("commit transaction", KafkaError::Canceled)))
        }))
    }

    /// Records the outcome of a commit started by [`Txn::start_commit`]. On error the
    /// transaction is still open: the caller takes the reset path, which aborts it.
    pub fn finish_commit(&mut self, outcome: Result<Result<(), KafkaClientError>, tokio::task::JoinError>) -> Result<(), KafkaClientError> {
        let result = outcome.unwrap_or_else(|_| Err(KafkaClientError::kafka("commit transaction", KafkaError::Canceled)));
        if result.is_ok() {
            self.open = false;
        }
        result
    }

    /// Aborts the open transaction, if any. On error the transaction is still considered open,
    /// so the next reset or `begin` tries again; the error's class tells the caller whether
    /// the producer is unusable (fenced, fatal) and it must stop.
    pub fn abort(&mut self) -> Result<(), KafkaClientError> {
        self.pending.clear();
        if !self.open {
            return Ok(());
        }
        match self.producer.abort_transaction(TXN_TIMEOUT) {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                self.open = false;
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
                        self.producer = Txn::producer(&self.cfg)?;
                        self.open = false;
                        Ok(())
                    }
                }
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}
