//! The run ledger: a compacted topic (`scheduled-jobs.run-ledger`) written only inside the
//! processor's transactions, and this in-memory view of it, read with read_committed.
//!
//! Keys: `run/<job>/<period>` for a run, `chunk/<runId>/<index>` for an applied chunk; and
//! what became of fire times without a run: `skipped/<job>/<period>` (a tick skipped while the
//! job was paused), `missed/<job>/<period>` (no tick within the grace period), and
//! `accounted/<job>` (how far the job's fire times are accounted; `period` is that fire
//! time). The view answers "already planned / already applied?" for duplicate ticks, replays
//! of the tick topic and redelivered work items, and "what became of each fire time?"
//! ([`super::accounting`]). It is caught up to the end of the topic whenever this
//! instance gains partitions, so decisions made by the previous owner are seen before any
//! record of those partitions is handled; this instance's own commits are written through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::codec::Codec;
use crate::config::{Settings, Topic};
use crate::kafka::read::{self, BoundedRead, Polled, ReadError};
use crate::kafka::{self, KafkaClientError, Role};
use crate::wire::internal::{LedgerEntry, RunState};
use crate::wire::tick::Tick;

pub fn run_key(job: &str, period: &str) -> String {
    format!("run/{job}/{period}")
}

pub fn chunk_key(run_id: &str, index: i32) -> String {
    format!("chunk/{run_id}/{index}")
}

pub fn skipped_key(job: &str, period: &str) -> String {
    format!("skipped/{job}/{period}")
}

pub fn missed_key(job: &str, period: &str) -> String {
    format!("missed/{job}/{period}")
}

pub fn accounted_key(job: &str) -> String {
    format!("accounted/{job}")
}

/// The entry of a key that records a value about a job rather than a run (`accounted/...`,
/// `schedule/...`): the value in `period`, and the tick that decided it, if one did.
pub fn marker_entry(job: &str, value: String, state: RunState, tick: Option<&Tick>) -> LedgerEntry {
    LedgerEntry {
        run_id: String::new(),
        job: job.to_string(),
        period: value,
        tick_id: tick.map(|t| t.tick_id.clone()).unwrap_or_default(),
        trigger: tick.map(|t| t.trigger.as_str().to_string()).unwrap_or_default(),
        state,
        chunk_count: 0,
        attempt: 1,
        updated_at: chrono::Utc::now(),
    }
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
    /// abort (bounded by the transaction timeout). The view's consumer has no end-of-partition
    /// events: only the position passing the high watermark ends the read, so an open
    /// transaction is waited for rather than stopped at.
    pub async fn catch_up(&mut self, timeout: Duration) -> Result<usize, LedgerError> {
        let deadline = Instant::now() + timeout;
        let assignment = self.consumer.assignment().map_err(|e| KafkaClientError::kafka("ledger assignment", e))?;
        let partitions = assignment.elements().iter().map(|el| el.partition()).collect::<Vec<_>>();
        let ends = read::watermarks(&self.consumer, &self.topic, partitions, Duration::from_secs(10))
            .map_err(|e| match e.rdkafka_error_code() {
                // The partition was in the metadata a moment ago: a broker still loading
                // after a restart answers this way. Retried, not fatal.
                Some(RDKafkaErrorCode::UnknownPartition | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    KafkaClientError::kafka("ledger watermarks", KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable))
                }
                _ => KafkaClientError::kafka("ledger watermarks", e),
            })?
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect();
        let mut reader = BoundedRead::resume(&self.consumer, &self.topic, ends, deadline, "ledger read");
        let mut read = 0;
        loop {
            let record = match reader.poll() {
                Ok(Polled::Done) => return Ok(read),
                Ok(Polled::Idle) => {
                    // The poll blocked this worker briefly: let other tasks run.
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Polled::Record(r)) => r,
                Err(ReadError::Timeout) => return Err(LedgerError::Timeout(timeout)),
                Err(ReadError::Kafka(e)) => return Err(e.into()),
            };
            read += 1;
            match (record.key.map(|k| String::from_utf8_lossy(&k).into_owned()), record.payload) {
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
