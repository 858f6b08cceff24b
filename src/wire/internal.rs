//! The processor's own records: work items, run-ledger entries, run results, dead letters.
//!
//! Enums follow the schemas' evolution rule (docs/decisions/2026-11-29-schema-evolution.md):
//! each has an `Unknown` variant for the schema's default symbol `UNKNOWN`, which decoding
//! gives for any symbol this build does not know (a record from a newer processor) instead of
//! failing; the processor never writes it.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use super::{enum_value, long_map, opt_string, string_map, ts, Fields, WireError};

/// One fixed chunk of a planned run. Also kept as JSON (same field names) in PostgreSQL for a
/// run applied in its tick's transaction (`job_runs.inline_item`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
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
    /// No tick arrived for the fire time within its grace period (key `missed/...`: the
    /// period stays runnable by a late tick).
    Missed,
    /// Superseded by a newer tick of the same job queued behind it.
    Coalesced,
    /// Stopped at a chunk boundary by a newer tick of the job (`overlap = cancel_other`); the
    /// chunks applied before it are kept.
    Cancelled,
    /// A tick waiting for the job's running run to end (key `buffered/<job>/<period>`,
    /// `overlap = buffer_one | buffer_all`); the entry carries the tick.
    Buffered,
    /// A buffered tick published again to the tick topic, to run next.
    Released,
    /// A state this build does not know (written by a newer processor): the period is
    /// recorded, so a duplicate tick does not run it again. Never written.
    Unknown,
}

const RUN_STATES: [&str; 11] =
    ["PLANNED", "DONE", "FAILED", "TIMED_OUT", "SKIPPED", "MISSED", "COALESCED", "CANCELLED", "BUFFERED", "RELEASED", "UNKNOWN"];

impl RunState {
    pub fn as_str(self) -> &'static str {
        RUN_STATES[self as usize]
    }
    /// The state of a symbol; `Unknown` for one this build does not know.
    pub fn parse(s: &str) -> RunState {
        match s {
            "PLANNED" => RunState::Planned,
            "DONE" => RunState::Done,
            "FAILED" => RunState::Failed,
            "TIMED_OUT" => RunState::TimedOut,
            "SKIPPED" => RunState::Skipped,
            "MISSED" => RunState::Missed,
            "COALESCED" => RunState::Coalesced,
            "CANCELLED" => RunState::Cancelled,
            "BUFFERED" => RunState::Buffered,
            "RELEASED" => RunState::Released,
            _ => RunState::Unknown,
        }
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
    /// A buffered tick's record value as it arrived (schema id included), published again
    /// when it is released; `None` for every other entry.
    pub tick: Option<Vec<u8>>,
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
            ("tick".into(), opt_bytes(&self.tick)),
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
            state: RunState::parse(&state),
            chunk_count: f.int("chunkCount")?,
            attempt: f.int("attempt")?,
            updated_at: f.timestamp("updatedAt")?,
            tick: f.opt_bytes("tick")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Skipped,
    /// No tick arrived for a fire time of the schedule within the job's grace period.
    Missed,
    /// Superseded by a newer tick of the same job queued behind it (a job that looks at
    /// current state runs once for both).
    Coalesced,
    /// Stopped at a chunk boundary by a newer tick of the job (`overlap = cancel_other`); the
    /// chunks applied before it are kept and emitted.
    Cancelled,
    /// An outcome this build does not know (written by a newer processor). Never written.
    Unknown,
}

const OUTCOMES: [&str; 8] = ["SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "MISSED", "COALESCED", "CANCELLED", "UNKNOWN"];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        OUTCOMES[self as usize]
    }
    /// The outcome of a symbol; `Unknown` for one this build does not know.
    pub fn parse(s: &str) -> Outcome {
        match s {
            "SUCCEEDED" => Outcome::Succeeded,
            "FAILED" => Outcome::Failed,
            "TIMED_OUT" => Outcome::TimedOut,
            "SKIPPED" => Outcome::Skipped,
            "MISSED" => Outcome::Missed,
            "COALESCED" => Outcome::Coalesced,
            "CANCELLED" => Outcome::Cancelled,
            _ => Outcome::Unknown,
        }
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
    /// IANA name of the zone the run was scheduled in and its date period read in
    /// (`scheduler.time_zone`); `UTC` for a result written before the field existed.
    pub time_zone: String,
}

/// What `timeZone` means when a record predates the field: the default configuration of that
/// time (the schemas' default).
pub const TIME_ZONE_BEFORE_THE_FIELD: &str = "UTC";

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
            ("timeZone".into(), Value::String(self.time_zone.clone())),
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
            outcome: Outcome::parse(&outcome),
            counts: f.long_map("counts")?,
            started_at: f.timestamp("startedAt")?,
            finished_at: f.timestamp("finishedAt")?,
            duration_ms: f.long("durationMs")?,
            message: f.opt_string("message")?,
            time_zone: f.opt_string("timeZone")?.unwrap_or_else(|| TIME_ZONE_BEFORE_THE_FIELD.into()),
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

    /// A dead letter read back (the console's page); fields added with defaults read as
    /// their default from older records.
    pub fn from_avro(value: Value) -> Result<DeadLetter, WireError> {
        let mut f = Fields::of(value, "DeadLetter")?;
        Ok(DeadLetter {
            event_id: f.string("eventId")?,
            event_timestamp: f.timestamp("eventTimestamp")?,
            source_topic: f.string("sourceTopic")?,
            source_partition: f.int("sourcePartition")?,
            source_offset: f.long("sourceOffset")?,
            reason_code: f.string("reasonCode")?,
            reason: f.string("reason")?,
            original_key: f.opt_bytes("originalKey")?,
            original_value: f.opt_bytes("originalValue")?,
            headers: f.string_map("headers")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tick::{Tick, Trigger};
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;

    fn schema_json(file: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(format!("{}/avro/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn result() -> RunResult {
        let t = DateTime::from_timestamp_millis(1_764_028_800_123).unwrap();
        RunResult {
            event_id: crate::wire::derived_id(&["run-result", "r"]).to_string(),
            event_timestamp: t,
            run_id: "r".into(),
            job: "daily-statistics".into(),
            period: "2026-11-24".into(),
            tick_id: "t".into(),
            trigger: "SCHEDULED".into(),
            outcome: Outcome::Succeeded,
            counts: BTreeMap::from([("datesAggregated".to_string(), 1)]),
            started_at: t,
            finished_at: t,
            duration_ms: 0,
            message: None,
            time_zone: "Asia/Seoul".into(),
        }
    }

    fn ledger_entry(state: RunState) -> LedgerEntry {
        LedgerEntry {
            run_id: "r".into(),
            job: "j".into(),
            period: "p".into(),
            tick_id: "t".into(),
            trigger: "SCHEDULED".into(),
            state,
            chunk_count: 1,
            attempt: 1,
            updated_at: result().started_at,
            tick: None,
        }
    }

    /// `writer` encodes `value`; a reader with today's `file` resolves and decodes it, as the
    /// tool's own readers (history, follow) meet records of other versions.
    fn written_with(writer: &serde_json::Value, value: Value, file: &str) -> Value {
        let writer = Schema::parse(writer).unwrap();
        let reader = Schema::parse(&schema_json(file)).unwrap();
        let bytes = GenericDatumWriter::builder(&writer).build().unwrap().write_value_to_vec(value).unwrap();
        GenericDatumReader::builder(&writer).reader_schema(&reader).build().unwrap().read_value(&mut bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_run_result_round_trips_with_its_time_zone() {
        let r = result();
        let schema = Schema::parse(&schema_json("RunResult.avsc")).unwrap();
        assert!(r.to_avro().validate(&schema));
        assert_eq!(RunResult::from_avro(written_with(&schema_json("RunResult.avsc"), r.to_avro(), "RunResult.avsc")).unwrap(), r);
    }

    /// A result written before `timeZone` existed reads as UTC, the schema's default.
    #[test]
    fn a_run_result_from_before_the_time_zone_reads_as_utc() {
        let mut old = schema_json("RunResult.avsc");
        let removed = old["fields"].as_array_mut().unwrap().pop().unwrap();
        assert_eq!(removed["name"], "timeZone");
        let Value::Record(mut fields) = result().to_avro() else { panic!() };
        fields.pop();
        let decoded = written_with(&old, Value::Record(fields.clone()), "RunResult.avsc");
        assert_eq!(RunResult::from_avro(decoded).unwrap().time_zone, "UTC");
        // Decoded with its writer schema only (no reader schema), as `codec` does: the same.
        assert_eq!(RunResult::from_avro(Value::Record(fields)).unwrap().time_zone, TIME_ZONE_BEFORE_THE_FIELD);
    }

    /// A symbol from a newer processor or producer: resolved to `UNKNOWN` by a reader with
    /// today's schema, and decoded to `Unknown` whether it arrives resolved or as written.
    #[test]
    fn newer_symbols_decode_as_unknown() {
        let mut newer = schema_json("RunResult.avsc");
        newer["fields"][7]["type"]["symbols"] = serde_json::json!(["SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "PARTIAL", "UNKNOWN"]);
        let Value::Record(mut fields) = result().to_avro() else { panic!() };
        fields[7].1 = Value::Enum(4, "PARTIAL".into());
        let resolved = written_with(&newer, Value::Record(fields.clone()), "RunResult.avsc");
        assert_eq!(RunResult::from_avro(resolved).unwrap().outcome, Outcome::Unknown);
        assert_eq!(RunResult::from_avro(Value::Record(fields)).unwrap().outcome, Outcome::Unknown);

        let entry = ledger_entry(RunState::Done);
        let Value::Record(mut fields) = entry.to_avro() else { panic!() };
        fields[5].1 = Value::Enum(5, "ARCHIVED".into());
        assert_eq!(LedgerEntry::from_avro(Value::Record(fields)).unwrap().state, RunState::Unknown);

        let tick = Tick::for_fire_time("noop", result().started_at, Trigger::Scheduled, None);
        let Value::Record(mut fields) = tick.to_avro() else { panic!() };
        fields[4].1 = Value::Enum(3, "BACKFILL".into());
        assert_eq!(Tick::from_avro(Value::Record(fields)).unwrap().trigger, Trigger::Unknown);
        for t in [Trigger::Scheduled, Trigger::CatchUp, Trigger::Manual] {
            assert_eq!(Trigger::parse(t.as_str()), t);
        }
        for o in [Outcome::Succeeded, Outcome::Failed, Outcome::TimedOut, Outcome::Skipped, Outcome::Missed, Outcome::Coalesced] {
            assert_eq!(Outcome::parse(o.as_str()), o);
        }
        for s in [RunState::Planned, RunState::Done, RunState::Failed, RunState::TimedOut, RunState::Skipped, RunState::Missed, RunState::Coalesced] {
            assert_eq!(RunState::parse(s.as_str()), s);
        }
    }

    /// Issue 19: a consumer built on the schemas as they were before MISSED, COALESCED and
    /// `scheduleVersion` existed reads today's records: the new symbols as its default
    /// (`UNKNOWN`), the new field ignored.
    #[test]
    fn a_consumer_on_the_schemas_before_issue_19_reads_todays_records() {
        let before = |file: &str, field: usize| {
            let mut json = schema_json(file);
            let symbols = json["fields"][field]["type"]["symbols"].as_array_mut().unwrap();
            symbols.retain(|s| s != "MISSED" && s != "COALESCED");
            Schema::parse(&json).unwrap()
        };
        let read_by = |reader: &Schema, file: &str, value: Value| {
            let writer = Schema::parse(&schema_json(file)).unwrap();
            let bytes = GenericDatumWriter::builder(&writer).build().unwrap().write_value_to_vec(value).unwrap();
            GenericDatumReader::builder(&writer).reader_schema(reader).build().unwrap().read_value(&mut bytes.as_slice()).unwrap()
        };
        let mut missed = result();
        missed.outcome = Outcome::Missed;
        let old = read_by(&before("RunResult.avsc", 7), "RunResult.avsc", missed.to_avro());
        assert_eq!(RunResult::from_avro(old).unwrap().outcome, Outcome::Unknown);

        let entry = ledger_entry(RunState::Coalesced);
        let old = read_by(&before("RunLedgerEntry.avsc", 5), "RunLedgerEntry.avsc", entry.to_avro());
        assert_eq!(LedgerEntry::from_avro(old).unwrap().state, RunState::Unknown, "still counts as recorded");

        let mut tick = Tick::for_fire_time("noop", result().started_at, Trigger::Scheduled, None);
        tick.schedule_version = Some("0123456789ab".into());
        let mut old_tick = schema_json("SchedulerTick.avsc");
        let removed = old_tick["fields"].as_array_mut().unwrap().pop().unwrap();
        assert_eq!(removed["name"], "scheduleVersion");
        let old = read_by(&Schema::parse(&old_tick).unwrap(), "SchedulerTick.avsc", tick.to_avro());
        let read = Tick::from_avro(old).unwrap();
        assert_eq!((read.tick_id, read.schedule_version), (tick.tick_id, None));
    }

    /// Overlap policies (issue 19 item 2) added CANCELLED to both enums, BUFFERED and RELEASED
    /// to the ledger's, and the ledger's optional `tick` bytes: a consumer on the schemas before
    /// reads today's records, the new symbols as UNKNOWN, without the new field.
    #[test]
    fn a_consumer_on_the_schemas_before_overlap_policies_reads_todays_records() {
        let before = |file: &str, field: usize, drop_tick: bool| {
            let mut json = schema_json(file);
            let symbols = json["fields"][field]["type"]["symbols"].as_array_mut().unwrap();
            symbols.retain(|s| !["CANCELLED", "BUFFERED", "RELEASED"].contains(&s.as_str().unwrap()));
            if drop_tick {
                let removed = json["fields"].as_array_mut().unwrap().pop().unwrap();
                assert_eq!(removed["name"], "tick");
            }
            Schema::parse(&json).unwrap()
        };
        let read_by = |reader: &Schema, file: &str, value: Value| {
            let writer = Schema::parse(&schema_json(file)).unwrap();
            let bytes = GenericDatumWriter::builder(&writer).build().unwrap().write_value_to_vec(value).unwrap();
            GenericDatumReader::builder(&writer).reader_schema(reader).build().unwrap().read_value(&mut bytes.as_slice()).unwrap()
        };
        let mut cancelled = result();
        cancelled.outcome = Outcome::Cancelled;
        let old = read_by(&before("RunResult.avsc", 7, false), "RunResult.avsc", cancelled.to_avro());
        assert_eq!(RunResult::from_avro(old).unwrap().outcome, Outcome::Unknown);

        let mut waiting = ledger_entry(RunState::Buffered);
        waiting.tick = Some(vec![0, 0, 0, 0, 7, 42]);
        let old = read_by(&before("RunLedgerEntry.avsc", 5, true), "RunLedgerEntry.avsc", waiting.to_avro());
        let read = LedgerEntry::from_avro(old).unwrap();
        assert_eq!((read.state, read.tick), (RunState::Unknown, None));
        // Today's reader gets the bytes back.
        let now = read_by(&Schema::parse(&schema_json("RunLedgerEntry.avsc")).unwrap(), "RunLedgerEntry.avsc", waiting.to_avro());
        assert_eq!(LedgerEntry::from_avro(now).unwrap(), waiting);
    }

    /// The Rust enums name the schemas' symbols, `UNKNOWN` last and the default.
    #[test]
    fn the_enums_match_their_schemas() {
        let symbols = |file: &str, field: usize| {
            let json = schema_json(file);
            let t = &json["fields"][field]["type"];
            assert_eq!(t["default"], "UNKNOWN", "{file}");
            serde_json::from_value::<Vec<String>>(t["symbols"].clone()).unwrap()
        };
        assert_eq!(symbols("RunResult.avsc", 7), OUTCOMES);
        assert_eq!(symbols("RunLedgerEntry.avsc", 5), RUN_STATES);
        assert_eq!(symbols("SchedulerTick.avsc", 4), crate::wire::tick::TRIGGERS);
    }

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
