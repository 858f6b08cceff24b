//! `trigger --wait`: follows one tick's run from outside the processor, reading what the
//! processor commits (read_committed): its work items (how many chunks were planned), the run
//! ledger's chunk entries (how many are applied) and the run result. A progress bar on a
//! terminal, one line per change otherwise. Read-only: following never affects the run.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::codec::Codec;
use crate::config::{Settings, Topic};
use crate::ops::history::HistoryError;
use crate::kafka::{self, read, KafkaClientError, Role};
use crate::runtime::processor::SEAL;
use crate::wire::internal::{LedgerEntry, Outcome, RunResult, RunState, WorkItem};
use crate::wire::tick::Tick;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// How a followed tick ended.
#[derive(Debug, Clone)]
pub enum Followed {
    /// Its run ended with this result.
    Ended(Box<RunResult>),
    /// The processor consumed the tick without running anything: the job's run for that
    /// period is already recorded.
    NoRun,
    /// Nothing ended within the timeout (or the wait was interrupted); the run goes on.
    StillRunning { planned: Option<i64>, applied: usize },
}

impl Followed {
    /// Succeeded, skipped or coalesced (a deliberate non-run).
    pub fn ok(&self) -> bool {
        match self {
            Followed::Ended(r) => matches!(r.outcome, Outcome::Succeeded | Outcome::Skipped | Outcome::Coalesced),
            Followed::NoRun => true,
            Followed::StillRunning { .. } => false,
        }
    }

    pub fn outcome_name(&self) -> &'static str {
        match self {
            Followed::Ended(r) => r.outcome.as_str(),
            Followed::NoRun => "NOT_RUN",
            Followed::StillRunning { .. } => "STILL_RUNNING",
        }
    }
}

/// The final line `trigger --wait` prints.
pub fn describe(f: &Followed) -> String {
    match f {
        Followed::Ended(r) => {
            let counts = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            let mut s = format!("run {} {} in {:.1}s: {}", r.run_id, r.outcome.as_str(), r.duration_ms as f64 / 1000.0, counts);
            if let Some(m) = &r.message {
                s.push_str(&format!(" ({m})"));
            }
            s
        }
        Followed::NoRun => "the tick was consumed without a run: this job's run for that period is already recorded \
                            (add --param force=true to run it again)"
            .into(),
        Followed::StillRunning { planned, applied } => format!(
            "stopped waiting: {applied} of {} chunk(s) applied so far; the run goes on (see `scheduled-jobs runs list`)",
            planned.map_or("?".into(), |p| p.to_string())
        ),
    }
}

struct Progress {
    bar: ProgressBar,
    interactive: bool,
    last: (Option<i64>, usize),
}

impl Progress {
    fn new(job: &str) -> Progress {
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = ProgressBar::with_draw_target(Some(0), if interactive { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} chunks ({elapsed})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{job}: waiting for the processor"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar, interactive, last: (None, usize::MAX) }
    }

    fn update(&mut self, job: &str, planned: Option<i64>, seen: usize, applied: usize) {
        let total = planned.map_or(seen as u64, |p| p.max(0) as u64);
        self.bar.set_length(total);
        self.bar.set_position(applied as u64);
        if planned.is_some() || seen > 0 {
            self.bar.set_message(format!("{job}: applying"));
        }
        if !self.interactive && self.last != (planned, applied) && (planned.is_some() || applied > 0) {
            eprintln!("{job}: {applied}/{} chunk(s) applied", planned.map_or(format!("{seen}+"), |p| p.to_string()));
        }
        self.last = (planned, applied);
    }

    /// The tick waits for a run of its job still running (`overlap = buffer_*`).
    fn waiting(&mut self, job: &str) {
        self.bar.set_message(format!("{job}: waiting for the job's running run to end"));
        if !self.interactive {
            eprintln!("{job}: waiting for the job's running run to end (overlap policy)");
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Assigns `topics` to `consumer` from the first record written at or after `since`. Not a
/// bounded read ([`crate::kafka::read`]): following has no end but the run's, so it reads on
/// past the topics' current ends.
fn assign_from(consumer: &BaseConsumer, topics: &[&str], since: DateTime<Utc>) -> Result<(), HistoryError> {
    let mut starts = TopicPartitionList::new();
    for topic in topics {
        let partitions = kafka::existing_partitions(consumer, topic, KAFKA_TIMEOUT, kafka::RUN_TOPICS_APPLY)?;
        for (p, found) in read::offsets_at(consumer, topic, &partitions, since, KAFKA_TIMEOUT)? {
            // A partition with nothing written since: start at its end (new records only).
            let at = found.map_or(Offset::End, Offset::Offset);
            starts.add_partition_offset(topic, p, at).map_err(|err| KafkaClientError::kafka("offsets", err))?;
        }
    }
    consumer.assign(&starts).map_err(|e| KafkaClientError::kafka("assign", e).into())
}

/// Whether the processor group has committed past everything on the tick topic that existed
/// when following started (so our tick, published before, has been handled).
fn tick_handled(group: &BaseConsumer, topic: &str, ends: &HashMap<i32, i64>) -> bool {
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    let Ok(committed) = group.committed_offsets(tpl, KAFKA_TIMEOUT) else { return false };
    ends.iter().all(|(p, end)| match committed.find_partition(topic, *p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o >= *end,
        _ => *end == 0,
    })
}

/// Follows `tick`'s run until it ends, `timeout` passes or `interrupt` completes.
pub async fn follow(
    settings: &Settings,
    tick: &Tick,
    timeout: Duration,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Followed, HistoryError> {
    follow_as(settings, tick, &tick.job, timeout, interrupt).await
}

/// [`follow`], the progress (bar or lines) labelled `label` instead of the job's name: a
/// backfill says which of its periods it is on (`noop [2/3]`).
pub async fn follow_as(
    settings: &Settings,
    tick: &Tick,
    label: &str,
    timeout: Duration,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Followed, HistoryError> {
    let codec = Codec::new(settings)?;
    let (work_items, ledger, results, ticks) = (
        settings.topic(Topic::WorkItems),
        settings.topic(Topic::RunLedger),
        settings.topic(Topic::RunResults),
        settings.topic(Topic::Tick),
    );
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", format!("{}-follow-{}", settings.kafka.client_id, uuid::Uuid::new_v4())).set("fetch.wait.max.ms", "50");
    let reader: BaseConsumer = kafka::create(&cfg)?;
    // Everything the run writes comes after the tick was produced (clocks allowing a second).
    let since = tick.produced_at - TimeDelta::seconds(1);
    assign_from(&reader, &[&work_items, &ledger, &results], since)?;
    let mut gcfg = kafka::client_config(settings, Role::Consumer);
    gcfg.set("group.id", &settings.processor.group_id).set("enable.auto.commit", "false");
    let group: BaseConsumer = kafka::create(&gcfg)?;
    let tick_ends: HashMap<i32, i64> = read::watermarks(&group, &ticks, kafka::partitions_of(&group, &ticks, KAFKA_TIMEOUT)?, KAFKA_TIMEOUT)
        .map_err(|e| KafkaClientError::kafka("watermarks", e))?
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect();

    let mut progress = Progress::new(label);
    let deadline = Instant::now() + timeout;
    let mut run_id: Option<String> = None;
    let mut planned: Option<i64> = None;
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    let mut applied: HashMap<String, BTreeSet<i32>> = HashMap::new();
    let mut last_group_check = Instant::now();
    // When the processor was seen past the tick with no run of it in sight.
    let mut handled_at: Option<Instant> = None;
    // Whether the tick waits in the ledger for a running run of its job.
    let mut waiting = false;
    tokio::pin!(interrupt);
    let outcome = loop {
        if Instant::now() > deadline {
            break None;
        }
        let polled = tokio::select! {
            _ = &mut interrupt => break None,
            m = poll_one(&reader) => m,
        };
        match polled? {
            Some((topic, key, payload)) => {
                if topic == ledger && key.starts_with("buffered/") {
                    // The tick waits for a run of its job still running (`overlap = buffer_*`):
                    // it was consumed, but its run is still to come.
                    if let Some(bytes) = payload {
                        if let Ok(entry) = codec.decode(&bytes).await.map(|d| LedgerEntry::from_avro(d.value)) {
                            if entry.as_ref().is_ok_and(|e| e.tick_id == tick.tick_id) {
                                waiting = entry.is_ok_and(|e| matches!(e.state, RunState::Buffered | RunState::Released));
                                if waiting {
                                    progress.waiting(label);
                                }
                            }
                        }
                    }
                } else if topic == ledger {
                    // Chunk entries: `chunk/<runId>/<index>`.
                    if let Some((run, index)) = key.strip_prefix("chunk/").and_then(|k| k.rsplit_once('/')) {
                        if let Ok(i) = index.parse::<i32>() {
                            if i != SEAL {
                                applied.entry(run.to_string()).or_default().insert(i);
                            }
                        }
                    }
                } else if let Some(bytes) = payload {
                    let Ok(decoded) = codec.decode(&bytes).await else { continue };
                    if topic == work_items {
                        if let Ok(item) = WorkItem::from_avro(decoded.value) {
                            if item.tick_id == tick.tick_id {
                                run_id = Some(item.run_id.clone());
                                if item.chunk_index == SEAL {
                                    planned = Some(i64::from(item.chunk_count));
                                } else {
                                    seen.insert(item.chunk_index);
                                }
                            }
                        }
                    } else if topic == results {
                        if let Ok(r) = RunResult::from_avro(decoded.value) {
                            if r.tick_id == tick.tick_id {
                                // A run ends after its last chunk: its entry may be read later.
                                // A run applied in its tick's transaction has no work item: its
                                // chunk count is in its result.
                                if r.outcome == Outcome::Succeeded {
                                    if let Some(p) = planned.or_else(|| r.counts.get("chunks").copied()) {
                                        let all = usize::try_from(p).unwrap_or(0);
                                        progress.update(label, Some(p), seen.len().max(all), all);
                                    }
                                }
                                break Some(Followed::Ended(Box::new(r)));
                            }
                        }
                    }
                }
            }
            None => {
                // Caught up with everything committed: has the processor taken the tick
                // without running anything?
                if run_id.is_none() && !waiting {
                    match handled_at {
                        // The tick's transaction committed its offset together with the run's
                        // first records; keep reading a moment before concluding there is none.
                        Some(at) if at.elapsed() > Duration::from_secs(2) => break Some(Followed::NoRun),
                        Some(_) => {}
                        None if last_group_check.elapsed() > Duration::from_millis(500) => {
                            last_group_check = Instant::now();
                            if tick_handled(&group, &ticks, &tick_ends) {
                                handled_at = Some(Instant::now());
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        let done = run_id.as_ref().and_then(|r| applied.get(r)).map_or(0, BTreeSet::len);
        progress.update(label, planned, seen.len(), done);
    };
    progress.finish();
    Ok(outcome.unwrap_or_else(|| Followed::StillRunning {
        planned,
        applied: run_id.as_ref().and_then(|r| applied.get(r)).map_or(0, BTreeSet::len),
    }))
}

/// One committed record (topic, key, payload), or None after a short wait with nothing new
/// (or a failed poll librdkafka recovers from by itself). Needs the multi-threaded runtime.
pub(crate) async fn poll_one(reader: &BaseConsumer) -> Result<Option<(String, String, Option<Vec<u8>>)>, HistoryError> {
    // A short poll keeps the interrupt responsive; librdkafka's poll blocks the thread.
    let r = tokio::task::block_in_place(|| match reader.poll(Duration::from_millis(100)) {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some((
            m.topic().to_string(),
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            m.payload().map(<[u8]>::to_vec),
        ))),
        Some(Err(e)) => {
            let e = KafkaClientError::kafka("read", e);
            if e.class() == crate::error::ErrorClass::Fatal {
                Err(e)
            } else {
                Ok(None)
            }
        }
    });
    Ok(r?)
}
