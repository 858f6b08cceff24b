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
    /// The original record's headers, as [`header_map`] writes them.
    pub headers: BTreeMap<String, String>,
}

/// Marks a header value of a dead letter that is written in base64 (see [`header_map`]).
pub const BASE64_PREFIX: &str = "base64:";

/// A record's headers, in their order, as the `headers` map of a dead letter — losslessly,
/// though the schema's map holds strings and a key once:
/// - a value that is UTF-8 is kept as it is, unless it begins with `base64:`;
/// - any other value (not UTF-8, or beginning with `base64:`) is written `base64:` followed by
///   its bytes in standard base64 with padding, so every value beginning with `base64:` is
///   encoded and [`header_value`] gives the original bytes back;
/// - a header without a value is written with the empty string;
/// - a key seen again keeps each later value under `<key>#2`, `<key>#3`, … (the first such
///   name not already taken).
pub fn header_map<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> BTreeMap<String, String> {
    use base64::Engine as _;
    let mut map = BTreeMap::new();
    for (key, value) in headers {
        let shown = match value.map(std::str::from_utf8) {
            None => String::new(),
            Some(Ok(text)) if !text.starts_with(BASE64_PREFIX) => text.to_string(),
            Some(_) => format!("{BASE64_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(value.unwrap_or_default())),
        };
        let name = std::iter::once(key.to_string())
            .chain((2..).map(|n| format!("{key}#{n}")))
            .find(|name| !map.contains_key(name))
            .unwrap_or_else(|| key.to_string());
        map.insert(name, shown);
    }
    map
}

/// The original bytes of a header value of a dead letter (the inverse of [`header_map`]);
/// `None` when a value marked `base64:` is not valid base64 (not written by this tool).
pub fn header_value(shown: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match shown.strip_prefix(BASE64_PREFIX) {
        Some(encoded) => base64::engine::general_purpose::STANDARD.decode(encoded).ok(),
        None => Some(shown.as_bytes().to_vec()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every header survives the map<string> of the schema: text as it is, anything else in
    /// base64 (also text that looks encoded), repeated keys under numbered names.
    #[test]
    fn dead_letter_headers_keep_every_header_losslessly() {
        let binary: &[u8] = &[0xff, 0x00, 0xfe];
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("traceparent", Some(b"00-abc-01")),
            ("bin", Some(binary)),
            ("tricky", Some(b"base64:AAAA")),
            ("dup", Some(b"one")),
            ("dup", Some(b"two")),
            ("none", None),
        ];
        let map = header_map(headers.clone());
        assert_eq!(map["traceparent"], "00-abc-01");
        assert_eq!(map["bin"], "base64:/wD+");
        assert_eq!(map["tricky"], "base64:YmFzZTY0OkFBQUE=");
        assert_eq!((map["dup"].as_str(), map["dup#2"].as_str()), ("one", "two"));
        assert_eq!(map["none"], "");
        assert_eq!(map.len(), 6);
        for (name, value) in [("traceparent", "00-abc-01".as_bytes()), ("bin", binary), ("tricky", b"base64:AAAA"), ("dup#2", b"two")] {
            assert_eq!(header_value(&map[name]).as_deref(), Some(value), "{name}");
        }
    }
}
