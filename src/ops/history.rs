//! Run history, read back from Kafka: the run results (`scheduled-jobs.run-results`, one per
//! ended run, committed with the run's last transaction) and the run ledger for runs still in
//! progress. Read-only and read_committed: what it shows is exactly what was committed.
//! Used by `runs list`, `trigger --wait` and the report jobs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::kafka::codec::{Codec, CodecError};
use crate::config::{Settings, Topic};
use crate::kafka::read::{self, BoundedRead, ReadError};
use crate::kafka::{self, KafkaClientError, Role};
use crate::runtime::processor::ledger::{LedgerError, LedgerView};
use crate::wire::internal::{RunResult, RunState};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Kafka failed, or a topic is missing ([`KafkaClientError::NoSuchTopic`]).
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("reading {topic} did not reach its end within {secs} s")]
    Timeout { topic: String, secs: u64 },
    #[error("background task failed: {0}")]
    Task(String),
}

/// One run as `runs list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    /// The tick that planned the run.
    pub tick_id: String,
    pub job: String,
    pub period: String,
    /// IANA zone the run's schedule and date period were read in (its result's `timeZone`);
    /// `None` for a run still in progress (the ledger does not say).
    pub time_zone: Option<String>,
    pub trigger: String,
    /// SUCCEEDED, FAILED, TIMED_OUT, SKIPPED, or RUNNING (planned, no result yet).
    pub outcome: String,
    pub counts: std::collections::BTreeMap<String, i64>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

impl From<&RunResult> for RunRow {
    fn from(r: &RunResult) -> RunRow {
        RunRow {
            run_id: r.run_id.clone(),
            tick_id: r.tick_id.clone(),
            job: r.job.clone(),
            period: r.period.clone(),
            time_zone: Some(r.time_zone.clone()),
            trigger: r.trigger.clone(),
            outcome: r.outcome.as_str().to_string(),
            counts: r.counts.clone(),
            started_at: r.started_at,
            duration_ms: Some(r.duration_ms),
            message: r.message.clone(),
        }
    }
}

/// Committed payloads of `topic` written at or after `since`, up to the topic's end when
/// called (blocking). With `enable.partition.eof` a partition's read stops at what is
/// committed now rather than waiting for an open transaction.
fn payloads_since(settings: &Settings, topic: &str, since: DateTime<Utc>, timeout: Duration) -> Result<Vec<Vec<u8>>, HistoryError> {
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", format!("{}-history-{}", settings.kafka.client_id, uuid::Uuid::new_v4()))
        .set("fetch.wait.max.ms", "50");
    let consumer = read::eof_consumer(&cfg, "run history")?;
    let partitions = kafka::existing_partitions(&consumer, topic, KAFKA_TIMEOUT, kafka::RUN_TOPICS_APPLY)?;
    let starts = read::offsets_at(&consumer, topic, &partitions, since, KAFKA_TIMEOUT)?;
    let marks = read::watermarks(&consumer, topic, starts.iter().map(|(p, _)| *p), KAFKA_TIMEOUT)
        .map_err(|e| KafkaClientError::kafka("watermarks", e))?;
    // No record at or after `since`: nothing to read there.
    let ranges = starts.into_iter().filter_map(|(p, start)| Some((p, start?, marks.get(&p)?.1)));
    let deadline = Instant::now() + timeout;
    let records = BoundedRead::assign(&consumer, topic, ranges, deadline, "read")?
        .tolerate_transient()
        .collect()
        .map_err(|e| match e {
            ReadError::Kafka(e) => HistoryError::Kafka(e),
            ReadError::Timeout => HistoryError::Timeout { topic: topic.to_string(), secs: timeout.as_secs() },
        })?;
    Ok(records.into_iter().filter_map(|r| r.payload).collect())
}

/// Run results committed at or after `since`, in commit order per partition.
pub async fn results_since(settings: &Settings, since: DateTime<Utc>) -> Result<Vec<RunResult>, HistoryError> {
    let topic = settings.topic(Topic::RunResults);
    let s = settings.clone();
    let payloads = tokio::task::spawn_blocking(move || payloads_since(&s, &topic, since, Duration::from_secs(60)))
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))??;
    let codec = Codec::new(settings)?;
    let mut out = Vec::with_capacity(payloads.len());
    for p in payloads {
        match codec.decode(&p).await {
            Ok(d) => match RunResult::from_avro(d.value) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping a malformed run result"),
            },
            Err(e) if e.class() == crate::error::ErrorClass::Retry => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "skipping an undecodable run result"),
        }
    }
    Ok(out)
}

/// Recent runs, newest first: ended runs from their results, and runs the ledger shows
/// planned without a result yet (RUNNING). `job` filters by job name.
pub async fn recent_runs(settings: &Settings, since: DateTime<Utc>, job: Option<&str>) -> Result<Vec<RunRow>, HistoryError> {
    let results = results_since(settings, since).await?;
    let mut rows: Vec<RunRow> = results.iter().map(RunRow::from).collect();
    let ended: std::collections::HashSet<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
    let mut ledger = LedgerView::new(settings, Codec::new(settings)?)?;
    ledger.catch_up(Duration::from_secs(60)).await?;
    for e in ledger.runs() {
        if e.state == RunState::Planned && e.updated_at >= since && !ended.contains(e.run_id.as_str()) {
            rows.push(RunRow {
                run_id: e.run_id.clone(),
                tick_id: e.tick_id.clone(),
                job: e.job.clone(),
                period: e.period.clone(),
                time_zone: None,
                trigger: e.trigger.clone(),
                outcome: "RUNNING".into(),
                counts: [("chunks".to_string(), i64::from(e.chunk_count))].into_iter().collect(),
                started_at: e.updated_at,
                duration_ms: None,
                message: None,
            });
        }
    }
    if let Some(job) = job {
        rows.retain(|r| r.job == job);
    }
    rows.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
    Ok(rows)
}

/// A run's non-zero counts (`key=value …`), then why it did not succeed, if it says.
pub fn counts_text(r: &RunRow) -> String {
    let counts = r.counts.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    match &r.message {
        Some(m) if r.outcome != "SUCCEEDED" => format!("{counts}{}{m}", if counts.is_empty() { "" } else { " | " }),
        _ => counts,
    }
}

/// A run's duration in seconds (`1.5s`), `-` while it runs.
pub fn duration_text(r: &RunRow) -> String {
    r.duration_ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

/// `runs list` output: an aligned table, newest first. STARTED is shown in `tz`; ZONE is the
/// zone each run was scheduled in and its date period read in, as its result says.
pub fn render(rows: &[RunRow], tz: chrono_tz::Tz) -> String {
    let header = ["STARTED", "JOB", "PERIOD", "ZONE", "TRIGGER", "OUTCOME", "DURATION", "COUNTS"];
    let mut table: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in rows {
        table.push([
            r.started_at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
            r.job.clone(),
            r.period.clone(),
            r.time_zone.clone().unwrap_or_else(|| "-".into()),
            r.trigger.clone(),
            r.outcome.clone(),
            duration_text(r),
            counts_text(r),
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|i| table.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &table {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", row[i], w = *w));
        }
        out.push_str(&row[7]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned_and_shows_why_a_run_did_not_succeed() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T00:00:01Z").unwrap().with_timezone(&Utc);
        let ok = RunRow {
            run_id: "a".into(),
            tick_id: "t".into(),
            job: "daily-statistics".into(),
            period: "2026-11-24".into(),
            time_zone: Some("Asia/Seoul".into()),
            trigger: "SCHEDULED".into(),
            outcome: "SUCCEEDED".into(),
            counts: [("datesAggregated".to_string(), 1i64), ("datesSkipped".to_string(), 0)].into_iter().collect(),
            started_at: at,
            duration_ms: Some(1234),
            message: None,
        };
        let failed = RunRow { run_id: "b".into(), job: "stock-sync".into(), outcome: "FAILED".into(), duration_ms: None, message: Some("redis down".into()), counts: Default::default(), ..ok.clone() };
        let text = render(&[ok, failed], chrono_tz::Asia::Seoul);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("STARTED"), "{text}");
        assert!(lines[1].contains("2026-11-25 09:00:01") && lines[1].contains("1.2s") && lines[1].ends_with("datesAggregated=1"), "{text}");
        assert!(lines[2].contains("FAILED") && lines[2].ends_with("redis down"), "{text}");
        assert!(lines[0].contains("ZONE") && lines[1].contains("2026-11-24  Asia/Seoul"), "the run's zone is shown: {text}");
        let col = lines[0].find("JOB").unwrap();
        assert_eq!(lines[2].find("stock-sync"), Some(col), "{text}");
    }
}
