//! The run ledger: a compacted topic (`scheduled-jobs.run-ledger`) written only inside the
//! processor's transactions, and this in-memory view of it, read with read_committed.
//!
//! Keys: `run/<job>/<period>` for a run, `chunk/<runId>/<index>` for an applied chunk; and
//! what became of fire times without a run: `skipped/<job>/<period>` (a tick skipped while the
//! job was paused), `missed/<job>/<period>` (no tick within the grace period), and
//! `accounted/<job>` (how far the job's fire times are accounted; `period` is that fire
//! time); `schedule/<job>` (the current schedule version, [`super::versions`]);
//! `buffered/<job>/<period>` (a tick waiting for the job's running run, [`super::overlap`]).
//! The view answers "already planned / already applied?" for duplicate ticks, replays
//! of the tick topic and redelivered work items, "what became of each fire time?"
//! ([`super::accounting`]) and "what of this job is running or waiting?" (an index kept
//! beside the entries, so the question costs no scan). It is caught up to the end of the topic whenever this
//! instance gains partitions, so decisions made by the previous owner are seen before any
//! record of those partitions is handled; this instance's own commits are written through.

use std::collections::{BTreeSet, HashMap};
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

pub fn buffered_key(job: &str, period: &str) -> String {
    format!("buffered/{job}/{period}")
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
        tick: None,
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
    /// Asks for the ledger's ends; never assigned, so it never has a fetch in flight. The
    /// broker answers a connection's requests in order, and `consumer` always has a long-poll
    /// fetch pending (up to `fetch.wait.max.ms`, 500 ms by default): asked on `consumer`, the
    /// ends came only after it, and every catch-up (each accounting pass, each overlap check)
    /// held the processor for up to half a second.
    ends: BaseConsumer,
    codec: Codec,
    entries: Entries,
}

/// The entries by key, and per job the keys of its open entries: runs PLANNED (running) and
/// buffered ticks BUFFERED or RELEASED (waiting).
#[derive(Default)]
struct Entries {
    by_key: HashMap<String, LedgerEntry>,
    open: HashMap<String, BTreeSet<String>>,
}

impl Entries {
    /// Sets (or with `None` removes) the entry of `key`, keeping the index of open entries;
    /// returns the entry it replaces.
    fn set(&mut self, key: String, entry: Option<LedgerEntry>) -> Option<LedgerEntry> {
        let previous = match entry {
            Some(e) => {
                if is_open(&key, &e) {
                    self.open.entry(e.job.clone()).or_default().insert(key.clone());
                }
                self.by_key.insert(key.clone(), e)
            }
            None => self.by_key.remove(&key),
        };
        if let Some(p) = &previous {
            let still = self.by_key.get(&key).is_some_and(|e| e.job == p.job && is_open(&key, e));
            if !still {
                if let Some(keys) = self.open.get_mut(&p.job) {
                    keys.remove(&key);
                }
            }
        }
        previous
    }
}

/// Whether `entry` under `key` is open: a running run or a waiting tick.
fn is_open(key: &str, entry: &LedgerEntry) -> bool {
    (key.starts_with("run/") && entry.state == RunState::Planned)
        || (key.starts_with("buffered/") && matches!(entry.state, RunState::Buffered | RunState::Released))
}

impl LedgerView {
    pub fn new(settings: &Settings, codec: Codec) -> Result<LedgerView, LedgerError> {
        let topic = settings.topic(Topic::RunLedger);
        let mut cfg = kafka::client_config(settings, Role::Consumer);
        cfg.set("group.id", format!("{}-ledger-view", settings.processor.group_id));
        let consumer: BaseConsumer = kafka::create(&cfg)?;
        let ends: BaseConsumer = kafka::create(&cfg)?;
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
        Ok(LedgerView { topic, consumer, ends, codec, entries: Entries::default() })
    }

    pub fn get(&self, key: &str) -> Option<&LedgerEntry> {
        self.entries.by_key.get(key)
    }

    /// Records an entry this instance is committing; returns the one it replaces.
    pub fn write_through(&mut self, key: String, entry: LedgerEntry) -> Option<LedgerEntry> {
        self.entries.set(key, Some(entry))
    }

    /// Takes back a write-through whose transaction failed.
    pub fn restore(&mut self, key: String, previous: Option<LedgerEntry>) {
        self.entries.set(key, previous);
    }

    /// The job's open entries, by key: its runs still PLANNED (`run/...`) and its buffered
    /// ticks (`buffered/...`), as this view knows them.
    pub fn open(&self, job: &str) -> Vec<(&str, &LedgerEntry)> {
        self.entries
            .open
            .get(job)
            .into_iter()
            .flatten()
            .filter_map(|k| self.entries.by_key.get(k).map(|e| (k.as_str(), e)))
            .collect()
    }

    /// The run entries (keys `run/...`), not the chunk entries.
    pub fn runs(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.by_key.iter().filter(|(k, _)| k.starts_with("run/")).map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.entries.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.by_key.is_empty()
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
        let ends = read::watermarks(&self.ends, &self.topic, partitions, Duration::from_secs(10))
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
        // Connection errors queued on this consumer while it was not polled (a broker outage
        // leaves one per failed reconnect) are read past: librdkafka recovers by itself, and
        // returning each one failed a step per queued error, minutes of resets after a long
        // outage (long fault profile, session 14). A broker still away ends at the deadline.
        let mut reader = BoundedRead::resume(&self.consumer, &self.topic, ends, deadline, "ledger read").tolerate_transient();
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
                    self.entries.set(k, None);
                }
                (Some(k), Some(p)) => match self.codec.decode(&p).await {
                    Ok(d) => match LedgerEntry::from_avro(d.value) {
                        Ok(e) => {
                            self.entries.set(k, Some(e));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(job: &str, state: RunState) -> LedgerEntry {
        let mut e = marker_entry(job, "p".into(), state, None);
        e.run_id = "r".into();
        e
    }

    fn open(entries: &Entries, job: &str) -> Vec<String> {
        entries.open.get(job).into_iter().flatten().cloned().collect()
    }

    #[test]
    fn the_open_index_follows_every_change_of_an_entry() {
        let mut entries = Entries::default();
        entries.set(run_key("a", "p1"), Some(entry("a", RunState::Planned)));
        entries.set(buffered_key("a", "p2"), Some(entry("a", RunState::Buffered)));
        entries.set(run_key("b", "p1"), Some(entry("b", RunState::Done)));
        entries.set(skipped_key("a", "p3"), Some(entry("a", RunState::Planned)));
        assert_eq!(open(&entries, "a"), ["buffered/a/p2", "run/a/p1"], "a run PLANNED and a tick waiting; no other key");
        assert!(open(&entries, "b").is_empty());
        entries.set(buffered_key("a", "p2"), Some(entry("a", RunState::Released)));
        assert_eq!(open(&entries, "a").len(), 2, "a released tick still waits");
        // The run ends; the tick leaves the queue; a failed write is taken back.
        let previous = entries.set(run_key("a", "p1"), Some(entry("a", RunState::Done)));
        entries.set(buffered_key("a", "p2"), Some(entry("a", RunState::Planned)));
        assert!(open(&entries, "a").is_empty());
        entries.set(run_key("a", "p1"), previous);
        assert_eq!(open(&entries, "a"), ["run/a/p1"]);
        entries.set(run_key("a", "p1"), None);
        assert!(open(&entries, "a").is_empty(), "a tombstone closes it");
    }
}
