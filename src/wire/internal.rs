//! The processor's own records: work items, run-ledger entries, run results, dead letters.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use super::{enum_value, long_map, opt_string, string_map, ts, Fields, WireError};

/// One fixed chunk of a planned run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub run_id: String,
    pub job: String,
    pub period: String,
    pub tick_id: String,
    pub trigger: String,
    pub chunk_index: i32,
    /// Not known while the plan streams; the run's bookkeeping has the final count.
    pub chunk_count: i32,
    pub ids: Vec<String>,
    pub parameters: BTreeMap<String, String>,
    pub scheduled_at: DateTime<Utc>,
    pub planned_at: DateTime<Utc>,
    /// `None` for a chunk's first part; for a continuation, the job's cursor after the records
    /// its previous part emitted (see [`crate::jobs::ChunkOutput::more`]).
    pub resume_after: Option<String>,
    /// A continuation's counts from the chunk's earlier parts.
    pub carried_counts: BTreeMap<String, i64>,
}

impl WorkItem {
    pub fn key(&self) -> String {
        format!("{}/{}", self.run_id, self.chunk_index)
    }

    pub fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("runId".into(), Value::String(self.run_id.clone())),
            ("job".into(), Value::String(self.job.clone())),
            ("period".into(), Value::String(self.period.clone())),
            ("tickId".into(), Value::String(self.tick_id.clone())),
            ("trigger".into(), Value::String(self.trigger.clone())),
            ("chunkIndex".into(), Value::Int(self.chunk_index)),
            ("chunkCount".into(), Value::Int(self.chunk_count)),
            ("ids".into(), Value::Array(self.ids.iter().cloned().map(Value::String).collect())),
            ("parameters".into(), string_map(&self.parameters)),
            ("scheduledAt".into(), ts(self.scheduled_at)),
            ("plannedAt".into(), ts(self.planned_at)),
            ("resumeAfter".into(), opt_string(&self.resume_after)),
            ("carriedCounts".into(), long_map(&self.carried_counts)),
        ])
    }

    pub fn from_avro(value: Value) -> Result<WorkItem, WireError> {
        let mut f = Fields::of(value, "WorkItem")?;
        Ok(WorkItem {
            run_id: f.string("runId")?,
            job: f.string("job")?,
            period: f.string("period")?,
            tick_id: f.string("tickId")?,
            trigger: f.string("trigger")?,
            chunk_index: f.int("chunkIndex")?,
            chunk_count: f.int("chunkCount")?,
            ids: f.string_array("ids")?,
            parameters: f.string_map("parameters")?,
            scheduled_at: f.timestamp("scheduledAt")?,
            planned_at: f.timestamp("plannedAt")?,
            resume_after: f.opt_string("resumeAfter")?,
            carried_counts: f.long_map("carriedCounts")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Planned,
    Done,
    Failed,
    TimedOut,
    Skipped,
}

const RUN_STATES: [&str; 5] = ["PLANNED", "DONE", "FAILED", "TIMED_OUT", "SKIPPED"];

impl RunState {
    pub fn as_str(self) -> &'static str {
        RUN_STATES[self as usize]
    }
    pub fn parse(s: &str) -> Option<RunState> {
        Some(match s {
            "PLANNED" => RunState::Planned,
            "DONE" => RunState::Done,
            "FAILED" => RunState::Failed,
            "TIMED_OUT" => RunState::TimedOut,
            "SKIPPED" => RunState::Skipped,
            _ => return None,
        })
    }
}

/// A run's (or one chunk's) state in the compacted ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub run_id: String,
    pub job: String,
    pub period: String,
    pub tick_id: String,
    pub trigger: String,
    pub state: RunState,
    pub chunk_count: i32,
    pub attempt: i32,
    pub updated_at: DateTime<Utc>,
}

impl LedgerEntry {
    pub fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("runId".into(), Value::String(self.run_id.clone())),
            ("job".into(), Value::String(self.job.clone())),
            ("period".into(), Value::String(self.period.clone())),
            ("tickId".into(), Value::String(self.tick_id.clone())),
            ("trigger".into(), Value::String(self.trigger.clone())),
            ("state".into(), enum_value(&RUN_STATES, self.state.as_str())),
            ("chunkCount".into(), Value::Int(self.chunk_count)),
            ("attempt".into(), Value::Int(self.attempt)),
            ("updatedAt".into(), ts(self.updated_at)),
        ])
    }

    pub fn from_avro(value: Value) -> Result<LedgerEntry, WireError> {
        let mut f = Fields::of(value, "RunLedgerEntry")?;
        let state = f.string("state")?;
        Ok(LedgerEntry {
            run_id: f.string("runId")?,
            job: f.string("job")?,
            period: f.string("period")?,
            tick_id: f.string("tickId")?,
            trigger: f.string("trigger")?,
            state: RunState::parse(&state)
                .ok_or(WireError::Field { field: "state", message: format!("unknown state {state}") })?,
            chunk_count: f.int("chunkCount")?,
            attempt: f.int("attempt")?,
            updated_at: f.timestamp("updatedAt")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
}

const OUTCOMES: [&str; 4] = ["SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED"];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        OUTCOMES[self as usize]
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        OUTCOMES.iter().position(|o| *o == s).map(|i| [Outcome::Succeeded, Outcome::Failed, Outcome::TimedOut, Outcome::Skipped][i])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub event_id: String,
    pub event_timestamp: DateTime<Utc>,
    pub run_id: String,
    pub job: String,
    pub period: String,
    pub tick_id: String,
    pub trigger: String,
    pub outcome: Outcome,
    pub counts: BTreeMap<String, i64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub message: Option<String>,
}

impl RunResult {
    pub fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("eventId".into(), Value::String(self.event_id.clone())),
            ("eventTimestamp".into(), ts(self.event_timestamp)),
            ("runId".into(), Value::String(self.run_id.clone())),
            ("job".into(), Value::String(self.job.clone())),
            ("period".into(), Value::String(self.period.clone())),
            ("tickId".into(), Value::String(self.tick_id.clone())),
            ("trigger".into(), Value::String(self.trigger.clone())),
            ("outcome".into(), enum_value(&OUTCOMES, self.outcome.as_str())),
            ("counts".into(), long_map(&self.counts)),
            ("startedAt".into(), ts(self.started_at)),
            ("finishedAt".into(), ts(self.finished_at)),
            ("durationMs".into(), Value::Long(self.duration_ms)),
            ("message".into(), opt_string(&self.message)),
        ])
    }

    pub fn from_avro(value: Value) -> Result<RunResult, WireError> {
        let mut f = Fields::of(value, "RunResult")?;
        let outcome = f.string("outcome")?;
        Ok(RunResult {
            event_id: f.string("eventId")?,
            event_timestamp: f.timestamp("eventTimestamp")?,
            run_id: f.string("runId")?,
            job: f.string("job")?,
            period: f.string("period")?,
            tick_id: f.string("tickId")?,
            trigger: f.string("trigger")?,
            outcome: Outcome::parse(&outcome)
                .ok_or(WireError::Field { field: "outcome", message: format!("unknown outcome {outcome}") })?,
            counts: f.long_map("counts")?,
            started_at: f.timestamp("startedAt")?,
            finished_at: f.timestamp("finishedAt")?,
            duration_ms: f.long("durationMs")?,
            message: f.opt_string("message")?,
        })
    }
}

/// A record the processor could not accept.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_timestamp: DateTime<Utc>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub reason_code: String,
    pub reason: String,
    pub original_key: Option<Vec<u8>>,
    pub original_value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

fn opt_bytes(v: &Option<Vec<u8>>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(b) => Value::Union(1, Box::new(Value::Bytes(b.clone()))),
    }
}

impl DeadLetter {
    pub fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("eventId".into(), Value::String(self.event_id.clone())),
            ("eventTimestamp".into(), ts(self.event_timestamp)),
            ("sourceTopic".into(), Value::String(self.source_topic.clone())),
            ("sourcePartition".into(), Value::Int(self.source_partition)),
            ("sourceOffset".into(), Value::Long(self.source_offset)),
            ("reasonCode".into(), Value::String(self.reason_code.clone())),
            ("reason".into(), Value::String(self.reason.clone())),
            ("originalKey".into(), opt_bytes(&self.original_key)),
            ("originalValue".into(), opt_bytes(&self.original_value)),
            ("headers".into(), string_map(&self.headers)),
        ])
    }
}
