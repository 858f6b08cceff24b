//! Bounded reads: reading a topic from given positions up to the end it had when the read
//! began, within a deadline, under the consumer's `read_committed` isolation.
//!
//! Every command that must "see everything committed so far" reads this way: the tick
//! producer learning each job's last tick, `runs list` reading run results, and the
//! processor's ledger view catching up before it decides anything. The ends are fixed up front
//! (the partitions' high watermarks, or any offset the caller picks), so a topic that keeps
//! growing cannot keep a read going, and the deadline bounds one that cannot get there (an
//! open transaction holds a `read_committed` position back until it commits or aborts).
//!
//! A partition has reached its end when the first of these happens:
//! - a record at or past `end - 1` is delivered;
//! - the consumer's position (the next offset it will hand out) is at or past `end`: under
//!   `read_committed` the last offsets may be transaction markers, never delivered, and
//!   librdkafka moves the position past them. Right after an assignment the position may
//!   still be the previous assignment's (librdkafka resets it asynchronously), so a read that
//!   assigns trusts a partition's position only once it has delivered a record of it;
//! - the consumer reports the end of the partition (only in a read that assigns, and only
//!   with `enable.partition.eof=true`; under `read_committed` that is the last stable offset,
//!   so such a read stops at what is committed now instead of waiting for an open
//!   transaction). A resumed read (the ledger view) must wait for it: there an end-of-partition
//!   event is a failed poll like any other.
//!
//! Nothing here commits offsets or joins a group: the consumers are assigned partitions.
//!
//! A consumer created for a read that stops at end-of-partition events gets [`EofContext`]:
//! rdkafka also reports each such event to the client context as a "global error", which its
//! default context logs at ERROR — on every `runs list`, once per partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaClientError;
use crate::error::ErrorClass;

/// How long one poll waits for a record: short, so the deadline and the position are checked
/// often and an async caller gives its thread back soon.
const POLL: Duration = Duration::from_millis(50);

/// The client context of a consumer with `enable.partition.eof=true`: the end of a partition
/// is where a bounded read stops, not an error, so it is not logged; any other client error
/// is logged at ERROR as rdkafka's default context does, naming `reader`.
pub struct EofContext {
    pub reader: &'static str,
}

impl ClientContext for EofContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error != KafkaError::Global(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(error = %error, reason, reader = self.reader, "kafka client error");
        }
    }
}

impl ConsumerContext for EofContext {}

/// A consumer of `cfg` that reports end-of-partition events (they end a read that assigns)
/// and does not log them; `reader` names it in the errors it does log.
pub fn eof_consumer(cfg: &ClientConfig, reader: &'static str) -> Result<BaseConsumer<EofContext>, KafkaClientError> {
    let mut cfg = cfg.clone();
    cfg.set("enable.partition.eof", "true");
    cfg.create_with_context(EofContext { reader }).map_err(|e| KafkaClientError::kafka("create consumer", e))
}

/// A bounded read that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// Some partition did not reach its end by the deadline; callers say which topic and
    /// what may hold it back, in their own error.
    #[error("the read did not reach the end by its deadline")]
    Timeout,
}

/// One record, copied out of the consumer so the caller may await while holding it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What one [`BoundedRead::poll`] found.
#[derive(Debug)]
pub enum Polled {
    Record(Record),
    /// Nothing arrived within the poll; not at the end yet.
    Idle,
    /// Every partition reached its end.
    Done,
}

/// A read of `topic` on `consumer` up to fixed ends per partition, by a deadline.
pub struct BoundedRead<'c, C: ConsumerContext + 'static> {
    consumer: &'c BaseConsumer<C>,
    topic: String,
    /// The partitions not at their end yet: their ends (exclusive), and whether their
    /// position can be trusted yet.
    ends: BTreeMap<i32, (i64, bool)>,
    deadline: Instant,
    /// Names a failed poll (`kafka {operation}: …`).
    operation: &'static str,
    /// Whether a failed poll classed retriable is read past (see [`Self::tolerate_transient`]).
    tolerate_transient: bool,
    /// Whether an end-of-partition event ends that partition's read (a read that assigns).
    eof_ends: bool,
}

impl<'c, C: ConsumerContext + 'static> BoundedRead<'c, C> {
    /// Assigns `consumer` the `(partition, start, end)` ranges of `topic` (replacing its
    /// assignment) and reads them to their ends. A range with nothing in it (`start >= end`)
    /// is not assigned; with none left the read is done at once.
    pub fn assign(
        consumer: &'c BaseConsumer<C>,
        topic: &str,
        ranges: impl IntoIterator<Item = (i32, i64, i64)>,
        deadline: Instant,
        operation: &'static str,
    ) -> Result<Self, KafkaClientError> {
        let mut ends = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for (partition, start, end) in ranges {
            if start < end {
                ends.insert(partition, (end, false));
                tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                    .map_err(|e| KafkaClientError::kafka("assign", e))?;
            }
        }
        if !ends.is_empty() {
            consumer.assign(&tpl).map_err(|e| KafkaClientError::kafka("assign", e))?;
        }
        Ok(BoundedRead { consumer, topic: topic.to_string(), ends, deadline, operation, tolerate_transient: false, eof_ends: true })
    }

    /// Reads on from wherever `consumer`'s assignment of `topic` is now, up to `ends`: for a
    /// consumer kept between reads (the ledger view), whose position is its own from the
    /// start. A partition whose end is 0 is empty and done at once.
    pub fn resume(
        consumer: &'c BaseConsumer<C>,
        topic: &str,
        ends: BTreeMap<i32, i64>,
        deadline: Instant,
        operation: &'static str,
    ) -> Self {
        let ends = ends.into_iter().filter(|(_, end)| *end > 0).map(|(p, end)| (p, (end, true))).collect();
        BoundedRead { consumer, topic: topic.to_string(), ends, deadline, operation, tolerate_transient: false, eof_ends: false }
    }

    /// Reads past failed polls that are not fatal (a broker connection dropped, a leader
    /// moving), as librdkafka recovers from them by itself: for tools that would rather wait
    /// until the deadline than fail. By default every failed poll is returned.
    pub fn tolerate_transient(mut self) -> Self {
        self.tolerate_transient = true;
        self
    }

    /// The next record, [`Polled::Idle`] after a short poll with nothing, or [`Polled::Done`] once
    /// every partition is at its end (checked before polling, so a read with nothing to do
    /// returns at once). Blocks the thread for at most one short poll.
    ///
    /// Records past a partition's end, or of a partition already at its end, are handed out
    /// too: the consumer's position has moved past them, and a caller that keeps the consumer
    /// for the next read must not lose them. A failed poll is an error the caller may stop on
    /// or, calling again, read past (or, see [`Self::tolerate_transient`], never sees).
    pub fn poll(&mut self) -> Result<Polled, ReadError> {
        self.drop_reached();
        if self.ends.is_empty() {
            return Ok(Polled::Done);
        }
        if Instant::now() > self.deadline {
            return Err(ReadError::Timeout);
        }
        match self.consumer.poll(POLL) {
            None => Ok(Polled::Idle),
            Some(Ok(m)) => {
                if m.topic() == self.topic {
                    if let Some((end, trusted)) = self.ends.get_mut(&m.partition()) {
                        *trusted = true;
                        if m.offset() + 1 >= *end {
                            self.ends.remove(&m.partition());
                        }
                    }
                }
                Ok(Polled::Record(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                }))
            }
            Some(Err(KafkaError::PartitionEOF(p))) if self.eof_ends => {
                self.ends.remove(&p);
                Ok(Polled::Idle)
            }
            Some(Err(e)) => {
                let e = KafkaClientError::kafka(self.operation, e);
                if self.tolerate_transient && e.class() != ErrorClass::Fatal {
                    return Ok(Polled::Idle);
                }
                Err(e.into())
            }
        }
    }

    /// Every record up to the ends (blocking; for callers off the async workers). The first
    /// failed poll not tolerated ends the read.
    pub fn collect(mut self) -> Result<Vec<Record>, ReadError> {
        let mut out = Vec::new();
        loop {
            match self.poll()? {
                Polled::Record(r) => out.push(r),
                Polled::Idle => {}
                Polled::Done => return Ok(out),
            }
        }
    }

    /// Forgets the partitions whose (trusted) position has passed their end.
    fn drop_reached(&mut self) {
        if !self.ends.values().any(|(_, trusted)| *trusted) {
            return;
        }
        let Ok(positions) = self.consumer.position() else { return };
        let topic = &self.topic;
        self.ends.retain(|p, (end, trusted)| {
            !(*trusted
                && matches!(positions.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end))
        });
    }
}

/// The (low, high) watermarks of each of `partitions` of `topic`. Fetch them before assigning
/// the partitions to `consumer`: once assigned, the broker answers offset requests only after
/// the consumer's pending long-poll fetch. The raw error is returned so each caller can name
/// and class it.
///
/// A partition whose leader is moving or not elected yet (a topic created a moment ago, a
/// broker restarting) is asked again until its `timeout` is spent, rather than failing at once:
/// librdkafka answers `NotLeaderForPartition` from metadata it is about to refresh (seen in a
/// tick producer's start right after its topic was created).
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    const PAUSE: Duration = Duration::from_millis(100);
    partitions
        .into_iter()
        .map(|p| {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now()).max(PAUSE);
                match consumer.fetch_watermarks(topic, p, left) {
                    Err(e)
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable)
                        ) && Instant::now() + PAUSE < deadline =>
                    {
                        std::thread::sleep(PAUSE)
                    }
                    other => break other.map(|w| (p, w)),
                }
            }
        })
        .collect()
}

/// Per partition of `topic`, the offset of its first record written at or after `at`, or
/// `None` where there is none (the caller decides: nothing to read, or its end).
pub fn offsets_at<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    at: DateTime<Utc>,
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>, KafkaClientError> {
    let mut query = TopicPartitionList::new();
    for p in partitions {
        query
            .add_partition_offset(topic, *p, Offset::Offset(at.timestamp_millis()))
            .map_err(|e| KafkaClientError::kafka("offsets", e))?;
    }
    let found = consumer.offsets_for_times(query, timeout).map_err(|e| KafkaClientError::kafka("offsets for times", e))?;
    Ok(found
        .elements()
        .iter()
        .map(|e| {
            (e.partition(), match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
        .collect())
}
