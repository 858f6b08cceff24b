//! Run history, read back from Kafka: the run results (`scheduled-jobs.run-results`, one per
//! ended run, committed with the run's last transaction) and the run ledger for runs still in
//! progress. Read-only and read_committed: what it shows is exactly what was committed.
//! Used by `runs list`, `trigger --wait`, the report jobs and (as a [`Feed`]) the console.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    pub counts: BTreeMap<String, i64>,
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
///
/// `next` makes the read incremental: a partition found there is read from that offset
/// instead, and after the read each partition's entry is one past the last record read from
/// it. A record of a transaction still open when the read stopped lies past that, so the next
/// read finds it once it commits.
pub(crate) fn payloads_since(
    settings: &Settings,
    topic: &str,
    since: DateTime<Utc>,
    next: &mut BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, HistoryError> {
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", format!("{}-history-{}", settings.kafka.client_id, uuid::Uuid::new_v4()))
        .set("fetch.wait.max.ms", "50");
    let consumer = read::eof_consumer(&cfg, "run history")?;
    let partitions = kafka::existing_partitions(&consumer, topic, KAFKA_TIMEOUT, kafka::RUN_TOPICS_APPLY)?;
    let unseen: Vec<i32> = partitions.iter().copied().filter(|p| !next.contains_key(p)).collect();
    let mut starts: Vec<(i32, Option<i64>)> = partitions.iter().filter_map(|p| next.get(p).map(|o| (*p, Some(*o)))).collect();
    if !unseen.is_empty() {
        starts.extend(read::offsets_at(&consumer, topic, &unseen, since, KAFKA_TIMEOUT)?);
    }
    let marks = read::watermarks(&consumer, topic, starts.iter().map(|(p, _)| *p), KAFKA_TIMEOUT)
        .map_err(|e| KafkaClientError::kafka("watermarks", e))?;
    // No record at or after `since`: nothing to read there (asked again next time).
    let ranges = starts.into_iter().filter_map(|(p, start)| Some((p, start?, marks.get(&p)?.1)));
    let deadline = Instant::now() + timeout;
    let records = BoundedRead::assign(&consumer, topic, ranges, deadline, "read")?
        .tolerate_transient()
        .collect()
        .map_err(|e| match e {
            ReadError::Kafka(e) => HistoryError::Kafka(e),
            ReadError::Timeout => HistoryError::Timeout { topic: topic.to_string(), secs: timeout.as_secs() },
        })?;
    for r in &records {
        let at = next.entry(r.partition).or_insert(0);
        *at = (*at).max(r.offset + 1);
    }
    Ok(records.into_iter().filter_map(|r| r.payload).collect())
}

/// Decodes run results, skipping (and logging) what is not one; a registry that cannot be
/// reached is an error.
async fn decode_results(codec: &Codec, payloads: Vec<Vec<u8>>) -> Result<Vec<RunResult>, HistoryError> {
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

/// Run results committed at or after `since`, in commit order per partition.
pub async fn results_since(settings: &Settings, since: DateTime<Utc>) -> Result<Vec<RunResult>, HistoryError> {
    let topic = settings.topic(Topic::RunResults);
    let s = settings.clone();
    let payloads = tokio::task::spawn_blocking(move || payloads_since(&s, &topic, since, &mut BTreeMap::new(), Duration::from_secs(60)))
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))??;
    decode_results(&Codec::new(settings)?, payloads).await
}

/// The run history kept current for a long-lived reader (the console): each
/// [`Feed::refresh`] reads only the run results committed since the last one, and catches
/// its own view of the run ledger up, instead of reading both again from the start.
pub struct Feed {
    settings: Settings,
    codec: Codec,
    ledger: LedgerView,
    /// Per run-results partition, the offset to read from next.
    next: BTreeMap<i32, i64>,
    /// Ended runs by run id, and since when they are kept.
    ended: HashMap<String, RunRow>,
    window: chrono::TimeDelta,
}

impl Feed {
    /// A feed of the runs of the last `window`.
    pub fn new(settings: &Settings, window: chrono::TimeDelta) -> Result<Feed, HistoryError> {
        let codec = Codec::new(settings)?;
        Ok(Feed { settings: settings.clone(), ledger: LedgerView::new(settings, codec.clone())?, codec, next: BTreeMap::new(), ended: HashMap::new(), window })
    }

    /// Reads what was committed since the last refresh and returns every run of the window,
    /// newest first, as [`recent_runs`] does.
    pub async fn refresh(&mut self) -> Result<Vec<RunRow>, HistoryError> {
        let since = Utc::now() - self.window;
        let topic = self.settings.topic(Topic::RunResults);
        let (s, mut next) = (self.settings.clone(), std::mem::take(&mut self.next));
        let (payloads, next) = tokio::task::spawn_blocking(move || {
            let read = payloads_since(&s, &topic, since, &mut next, Duration::from_secs(60));
            (read, next)
        })
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))?;
        self.next = next;
        for r in decode_results(&self.codec, payloads?).await? {
            self.ended.insert(r.run_id.clone(), RunRow::from(&r));
        }
        self.ended.retain(|_, r| r.started_at >= since);
        self.ledger.catch_up(Duration::from_secs(60)).await?;
        let mut rows: Vec<RunRow> = self.ended.values().cloned().collect();
        rows.extend(running(&self.ledger, since, |id| self.ended.contains_key(id)));
        sort_newest_first(&mut rows);
        Ok(rows)
    }
}

/// The runs the ledger shows planned since `since` without a result yet (RUNNING).
fn running<'a>(ledger: &'a LedgerView, since: DateTime<Utc>, ended: impl Fn(&str) -> bool + 'a) -> impl Iterator<Item = RunRow> + 'a {
    ledger.runs().filter(move |e| e.state == RunState::Planned && e.updated_at >= since && !ended(&e.run_id)).map(|e| RunRow {
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
    })
}

fn sort_newest_first(rows: &mut [RunRow]) {
    rows.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.run_id.cmp(&b.run_id)));
}

/// Recent runs, newest first: ended runs from their results, and runs the ledger shows
/// planned without a result yet (RUNNING). `job` filters by job name.
pub async fn recent_runs(settings: &Settings, since: DateTime<Utc>, job: Option<&str>) -> Result<Vec<RunRow>, HistoryError> {
    let results = results_since(settings, since).await?;
    let mut rows: Vec<RunRow> = results.iter().map(RunRow::from).collect();
    let ended: HashSet<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
    let mut ledger = LedgerView::new(settings, Codec::new(settings)?)?;
    ledger.catch_up(Duration::from_secs(60)).await?;
    rows.extend(running(&ledger, since, |id| ended.contains(id)));
    if let Some(job) = job {
        rows.retain(|r| r.job == job);
    }
    sort_newest_first(&mut rows);
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
