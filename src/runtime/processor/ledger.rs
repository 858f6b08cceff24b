//! The run ledger: a compacted topic (`scheduled-jobs.run-ledger`) written only inside the
//! processor's transactions, and this in-memory view of it, read with read_committed.
//!
//! Keys: `run/<job>/<period>` for a run, `chunk/<runId>/<index>` for an applied chunk. The
//! view answers "already planned / already applied?" for duplicate ticks, replays of the tick
//! topic and redelivered work items. It is caught up to the end of the topic whenever this
//! instance gains partitions, so decisions made by the previous owner are seen before any
//! record of those partitions is handled; this instance's own commits are written through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::codec::Codec;
use crate::config::{Settings, Topic};
use crate::kafka::{self, KafkaClientError, Role};
use crate::wire::internal::LedgerEntry;

pub fn run_key(job: &str, period: &str) -> String {
    format!("run/{job}/{period}")
}

pub fn chunk_key(run_id: &str, index: i32) -> String {
    format!("chunk/{run_id}/{index}")
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error("ledger did not catch up within {0:?} (an open transaction on the ledger?)")]
    Timeout(Duration),
}

pub struct LedgerView {
    topic: String,
    consumer: BaseConsumer,
    codec: Codec,
    entries: HashMap<String, LedgerEntry>,
}

impl LedgerView {
    pub fn new(settings: &Settings, codec: Codec) -> Result<LedgerView, LedgerError> {
        let topic = settings.topic(Topic::RunLedger);
        let mut cfg = kafka::client_config(settings, Role::Consumer);
        cfg.set("group.id", format!("{}-ledger-view", settings.processor.group_id));
        let consumer: BaseConsumer = kafka::create(&cfg)?;
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| KafkaClientError::kafka("ledger metadata", e))?;
        let mut tpl = TopicPartitionList::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .map_err(|e| KafkaClientError::kafka("ledger assign", e))?;
            }
        }
        consumer.assign(&tpl).map_err(|e| KafkaClientError::kafka("ledger assign", e))?;
        Ok(LedgerView { topic, consumer, codec, entries: HashMap::new() })
    }

    pub fn get(&self, key: &str) -> Option<&LedgerEntry> {
        self.entries.get(key)
    }

    /// Records an entry this instance is committing; returns the one it replaces.
    pub fn write_through(&mut self, key: String, entry: LedgerEntry) -> Option<LedgerEntry> {
        self.entries.insert(key, entry)
    }

    /// Takes back a write-through whose transaction failed.
    pub fn restore(&mut self, key: String, previous: Option<LedgerEntry>) {
        match previous {
            Some(e) => self.entries.insert(key, e),
            None => self.entries.remove(&key),
        };
    }

    /// The run entries (keys `run/...`), not the chunk entries.
    pub fn runs(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.iter().filter(|(k, _)| k.starts_with("run/")).map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads the ledger up to its current end. Under read_committed the position cannot pass
    /// an open transaction, so this also waits for the previous owner's in-flight commit or
    /// abort (bounded by the transaction timeout).
    pub async fn catch_up(&mut self, timeout: Duration) -> Result<usize, LedgerError> {
        let deadline = Instant::now() + timeout;
        let assignment = self.consumer.assignment().map_err(|e| KafkaClientError::kafka("ledger assignment", e))?;
        let mut targets: HashMap<i32, i64> = HashMap::new();
        for el in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, el.partition(), Duration::from_secs(10))
                .map_err(|e| match e.rdkafka_error_code() {
                    // The partition was in the metadata a moment ago: a broker still loading
                    // after a restart answers this way. Retried, not fatal.
                    Some(RDKafkaErrorCode::UnknownPartition | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                        KafkaClientError::kafka("ledger watermarks", KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable))
                    }
                    _ => KafkaClientError::kafka("ledger watermarks", e),
                })?;
            targets.insert(el.partition(), high);
        }
        let mut read = 0;
        loop {
            let positions = self.consumer.position().ok();
            let done = targets.iter().all(|(p, high)| {
                let at = positions
                    .as_ref()
                    .and_then(|pos| pos.find_partition(&self.topic, *p))
                    .map(|e| e.offset());
                *high == 0 || matches!(at, Some(Offset::Offset(o)) if o >= *high)
            });
            if done {
                return Ok(read);
            }
            if Instant::now() > deadline {
                return Err(LedgerError::Timeout(timeout));
            }
            // Copy what is needed out of the borrowed message before any await.
            let (key, payload) = match self.consumer.poll(Duration::from_millis(50)) {
                None => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Some(Err(e)) => return Err(KafkaClientError::kafka("ledger read", e).into()),
                Some(Ok(m)) => (m.key().map(|k| String::from_utf8_lossy(k).into_owned()), m.payload().map(|p| p.to_vec())),
            };
            read += 1;
            match (key, payload) {
                (Some(k), None) => {
                    self.entries.remove(&k);
                }
                (Some(k), Some(p)) => match self.codec.decode(&p).await {
                    Ok(d) => match LedgerEntry::from_avro(d.value) {
                        Ok(e) => {
                            self.entries.insert(k, e);
                        }
                        Err(e) => tracing::warn!(key = %k, error = %e, "skipping malformed ledger entry"),
                    },
                    Err(e) => tracing::warn!(key = %k, error = %e, "skipping undecodable ledger entry"),
                },
                _ => {}
            }
        }
    }
}
