//! `replay`: moves a consumer group's committed offsets back (or forward) on a topic, so its
//! records are consumed again — safely.
//!
//! Safe means: refused while the group has active members (they would overwrite the new
//! offsets with their own commits, or the broker would reject ours); offsets are clamped to
//! what the partitions still hold; `--dry-run` shows the plan and changes nothing. What a
//! replay of the processor's tick topic redoes is decided by the run ledger, not by the
//! offsets: runs already recorded are not run again (see [`EXPLANATION`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::{self, read, KafkaClientError, Role};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the operator is told before and after a replay of the processor's input.
pub const EXPLANATION: &str = "\
What replay redoes: the group consumes the records from the new offsets again. For the
processor's tick topic, a tick whose run is already recorded in the run ledger is ignored
(one run per job and period, E3): nothing is cancelled, released or emitted twice. Ticks whose
runs are not recorded (lost, or skipped while the job was paused) are run now.
What it does not redo: recorded runs. To run a recorded period again, publish a manual tick
with a new attempt: `scheduled-jobs trigger <job> --at <fire time> --param force=true`.
Downstream consumers (Analytics, Notification) replay their own groups the same way and
deduplicate by eventId.";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("consumer group `{group}` has {count} active member(s) ({members}); stop them first (a live member would overwrite the reset with its own commits)")]
    ActiveMembers { group: String, count: usize, members: String },
    /// Kafka failed, or the topic is missing ([`KafkaClientError::NoSuchTopic`]).
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
}

/// Where to move each partition.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The same offset on every partition (clamped to what each holds).
    Offset(i64),
    /// The first record at or after this instant (the end where there is none).
    Time(DateTime<Utc>),
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: i32,
    /// The committed offset now; `None` if the group never committed there.
    pub from: Option<i64>,
    pub to: i64,
    /// Records the partition holds between `to` and its end (what will be consumed again,
    /// transaction markers included).
    pub records: i64,
}

/// The plan for `group` on `topic`; commits it unless `dry_run`.
pub fn replay(settings: &Settings, group: &str, topic: &str, target: Target, dry_run: bool) -> Result<Vec<Move>, ReplayError> {
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = kafka::create(&cfg)?;
    let groups = consumer.fetch_group_list(Some(group), KAFKA_TIMEOUT).map_err(|e| KafkaClientError::kafka("describe group", e))?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group) {
        if !g.members().is_empty() {
            let members = g.members().iter().map(|m| format!("{} on {}", m.client_id(), m.client_host())).collect::<Vec<_>>().join(", ");
            return Err(ReplayError::ActiveMembers { group: group.into(), count: g.members().len(), members });
        }
    }
    // `--topic` may name any topic, not only ours: no advice to create it.
    let partitions = kafka::existing_partitions(&consumer, topic, KAFKA_TIMEOUT, "")?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, KAFKA_TIMEOUT).map_err(|e| KafkaClientError::kafka("committed offsets", e))?;
    let by_time: HashMap<i32, Option<i64>> = match target {
        Target::Time(t) => read::offsets_at(&consumer, topic, &partitions, t, KAFKA_TIMEOUT)?.into_iter().collect(),
        Target::Offset(_) => HashMap::new(),
    };
    let marks = read::watermarks(&consumer, topic, partitions, KAFKA_TIMEOUT).map_err(|e| KafkaClientError::kafka("watermarks", e))?;
    let mut moves = Vec::new();
    let mut commit = TopicPartitionList::new();
    for (p, (low, high)) in marks {
        let wanted = match target {
            Target::Offset(o) => o,
            // No record at or after the time: nothing to replay there.
            Target::Time(_) => by_time.get(&p).copied().flatten().unwrap_or(high),
        };
        let to = wanted.clamp(low, high);
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        moves.push(Move { partition: p, from, to, records: high - to });
        commit.add_partition_offset(topic, p, Offset::Offset(to)).map_err(|e| KafkaClientError::kafka("offsets", e))?;
    }
    if !dry_run {
        consumer.commit(&commit, CommitMode::Sync).map_err(|e| KafkaClientError::kafka("commit offsets", e))?;
    }
    Ok(moves)
}

/// The plan as a table.
pub fn render(group: &str, topic: &str, moves: &[Move], dry_run: bool) -> String {
    let mut out = format!(
        "{} group `{group}` on `{topic}`:\nPARTITION  COMMITTED  NEW OFFSET  RECORDS AGAIN\n",
        if dry_run { "would move (dry run, nothing changed)" } else { "moved" }
    );
    for m in moves {
        out.push_str(&format!(
            "{:<9}  {:<9}  {:<10}  {}\n",
            m.partition,
            m.from.map_or("-".into(), |o| o.to_string()),
            m.to,
            m.records
        ));
    }
    out
}
