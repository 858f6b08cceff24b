//! Issue 19's traffic under faults: a failing job that the system pauses after its streak, its
//! ticks while paused, its recovery; and a schedule changed while old and new tick producers
//! both run (a rolling deploy). Checked from the committed run results after the faults.

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::runtime::{control, streak};
use scheduled_jobs::wire::internal::{Outcome, RunResult};

use crate::verify::Report;

/// `jobs.noop.pause_after_failures` in the fault suite.
pub const PAUSE_AFTER: u32 = 2;
/// Ticks sent while the job is paused.
const WHILE_PAUSED: usize = 2;
/// The stock-sync schedule of the processors and the first tick producers, and the one the
/// producer started mid-run (the new deploy) computes its ticks from.
pub const OLD_STOCK_SYNC: &str = "15,45 * * * * *";
pub const NEW_STOCK_SYNC: &str = "5,35 * * * * *";

/// Where the failing job's traffic stands.
#[derive(Debug, Default)]
enum Phase {
    /// `PAUSE_AFTER` failing ticks, then waiting for the system to pause the job.
    #[default]
    Failing,
    /// Paused: plain ticks, which must be SKIPPED.
    Paused,
    /// Resumed by the operator: one plain tick, which must succeed and say how many failed.
    Resumed,
    Done,
}

/// The noop job's ticks under faults: failing until paused, plain while paused, then one after
/// `resume`. One step per call, between the other traffic's steps.
#[derive(Debug, Default)]
pub struct Failing {
    phase: Phase,
    pub failing: Vec<String>,
    pub paused: Vec<String>,
    pub recovered: Option<String>,
    pub paused_seen: bool,
    waited_since: Option<Instant>,
    /// Set once the faults are over: the resume and the run after it wait for that, so no
    /// fault can time that run out (a TIMED_OUT run would extend the streak and pause the job
    /// again).
    pub faults_over: bool,
}

impl Failing {
    pub async fn step(&mut self, s: &Settings, db: &sqlx::PgPool) {
        loop {
            match self.phase {
                Phase::Failing => {
                    let pause = control::paused(db, "noop").await.ok().flatten();
                    if pause.is_some_and(|p| p.paused_by == streak::PAUSED_BY) {
                        self.paused_seen = true;
                        self.phase = Phase::Paused;
                        continue;
                    }
                    // Exactly `PAUSE_AFTER` failing ticks, then wait for the pause. More would
                    // race it: noop allows overlapping runs, so a tick sent while the first ones
                    // are held up by a fault runs (and fails) before any of them ends.
                    if self.failing.len() < PAUSE_AFTER as usize {
                        if let Some(id) = crate::trigger(s, "noop", &[("fail", "0")]).await {
                            self.failing.push(id);
                        }
                    }
                    return;
                }
                Phase::Paused => {
                    if self.paused.len() < WHILE_PAUSED {
                        while self.paused.len() < WHILE_PAUSED {
                            match crate::trigger(s, "noop", &[]).await {
                                Some(id) => self.paused.push(id),
                                None => break,
                            }
                            // A manual tick's period is its millisecond: keep the two apart.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        return;
                    }
                    // Resume only once the paused ticks are decided (a stalled processor could
                    // otherwise meet them after the resume and run them).
                    if !self.faults_over {
                        return;
                    }
                    let results = results(s).await;
                    if self.paused.iter().all(|t| results.iter().any(|r| &r.tick_id == t)) {
                        if control::resume(db, "noop").await.is_ok() {
                            self.phase = Phase::Resumed;
                            continue;
                        }
                    } else if self.waited_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(90) {
                        eprintln!("[faults] the ticks sent while noop was paused got no result within 90 s: not resuming");
                        self.phase = Phase::Done;
                    }
                    return;
                }
                Phase::Resumed => {
                    if let Some(id) = crate::trigger(s, "noop", &[]).await {
                        self.recovered = Some(id);
                    }
                    self.phase = Phase::Done;
                    return;
                }
                Phase::Done => return,
            }
        }
    }

    /// Whether the story is over (resumed and the last tick sent, or given up).
    pub fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    pub fn verify(&self, results: &[RunResult], r: &mut Report) {
        let of = |t: &String| results.iter().find(|x| &x.tick_id == t);
        // A failing run held past its timeout by a fault ends TIMED_OUT, which the streak counts too.
        let failed = self.failing.iter().filter_map(of).filter(|x| matches!(x.outcome, Outcome::Failed | Outcome::TimedOut)).count();
        r.row("failing job: ticks / runs FAILED / paused by the system", format!("{} / {failed} / {}", self.failing.len(), self.paused_seen));
        if !self.paused_seen {
            r.violation(format!("noop was not paused by the system after {} failing ticks", self.failing.len()));
            return;
        }
        if failed != PAUSE_AFTER as usize {
            r.violation(format!("noop: {failed} of its {} failing ticks ran and failed before its pause, not pause_after_failures = {PAUSE_AFTER}", self.failing.len()));
        }
        for t in &self.paused {
            match of(t) {
                Some(x) if x.outcome == Outcome::Skipped && x.message.as_deref().is_some_and(|m| m.contains(streak::PAUSED_BY)) => {}
                other => r.violation(format!("noop tick {t} sent while paused by the system: {:?}", other.map(|x| (x.outcome, x.message.clone())))),
            }
        }
        r.row("failing job: run after resume", self.recovered.as_ref().and_then(of).map_or("not reached".to_string(), |x| x.outcome.as_str().to_string()));
        if let Some(t) = &self.recovered {
            match of(t) {
                Some(x) if x.outcome == Outcome::Succeeded && x.counts.get("failedBefore") == Some(&i64::from(PAUSE_AFTER)) => {}
                other => r.violation(format!("noop's run after resume: {:?}", other.map(|x| (x.outcome, x.counts.clone())))),
            }
        }
    }
}

/// The committed run results so far.
/// Empty while the broker is down (a fault): `read_all` panics then, and the caller only
/// waits longer.
async fn results(s: &Settings) -> Vec<RunResult> {
    let codec = Codec::new(s).expect("codec");
    let mut out = Vec::new();
    let (settings, topic) = (s.clone(), s.topic(Topic::RunResults));
    let Ok(records) = tokio::task::spawn_blocking(move || crate::common::read_all(&settings, &topic, "read_committed")).await else {
        return out;
    };
    for (_, _, v) in records {
        if let Some(r) = match v {
            Some(v) => codec.decode(&v).await.ok().and_then(|d| RunResult::from_avro(d.value).ok()),
            None => None,
        } {
            out.push(r);
        }
    }
    out
}

/// A scheduled or caught-up run of stock-sync whose period is a fire time of `cron`'s seconds.
fn at_seconds(x: &RunResult, seconds: [u32; 2]) -> Option<DateTime<Utc>> {
    if x.job != "stock-sync" || !matches!(x.trigger.as_str(), "SCHEDULED" | "CATCH_UP") {
        return None;
    }
    let at = DateTime::parse_from_rfc3339(&x.period).ok()?.to_utc();
    seconds.contains(&at.second()).then_some(at)
}

/// The schedule change: once the new version's first tick is decided, no tick of the old
/// schedule runs; the old producers' ticks are recorded SKIPPED as superseded.
pub fn verify_schedule_change(results: &[RunResult], r: &mut Report) {
    let switch = results.iter().filter(|x| at_seconds(x, [5, 35]).is_some()).map(|x| x.started_at).min();
    let Some(switch) = switch else {
        r.violation("stock-sync: no tick of the new schedule was decided");
        return;
    };
    let ran = |x: &&RunResult| matches!(x.outcome, Outcome::Succeeded | Outcome::Failed | Outcome::TimedOut | Outcome::Cancelled);
    let new_runs = results.iter().filter(|x| at_seconds(x, [5, 35]).is_some()).filter(ran).count();
    let old_after: Vec<&RunResult> = results.iter().filter(|x| at_seconds(x, [15, 45]).is_some()).filter(ran).filter(|x| x.started_at > switch).collect();
    let superseded = results
        .iter()
        .filter(|x| x.job == "stock-sync" && x.outcome == Outcome::Skipped && x.message.as_deref().is_some_and(|m| m.contains("superseded by version")))
        .count();
    r.row("schedule change: new-schedule runs / old ticks SKIPPED as superseded / old runs after the switch", format!("{new_runs} / {superseded} / {}", old_after.len()));
    if !old_after.is_empty() {
        r.violation(format!("stock-sync ran {} tick(s) of the old schedule after the new one became current: {:?}", old_after.len(), old_after.iter().map(|x| &x.period).collect::<Vec<_>>()));
    }
    if new_runs == 0 {
        r.violation("stock-sync: no run of the new schedule");
    }
    if superseded == 0 {
        r.violation("stock-sync: no tick of the old schedule was recorded SKIPPED as superseded (were the old producers still running?)");
    }
}
