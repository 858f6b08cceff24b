//! Overlap policies (`jobs.<job>.overlap`): what a tick does when a run of its job is still
//! running — planned, on any instance, and not yet finished.
//!
//! - `skip`: the tick's run is recorded SKIPPED, naming the running run;
//! - `cancel_other`: the running run is asked to stop (a row in `job_run_cancels`, written
//!   before the tick's transaction, keyed by that run); its chunks not yet started are recorded
//!   CANCELLED at their start, so it ends CANCELLED with what it applied kept; the tick's run
//!   is planned at once;
//! - `allow_all`: runs overlap (the `noop` test job's default);
//! - `buffer_one` / `buffer_all`: the tick waits in the ledger (`buffered/<job>/<period>`,
//!   BUFFERED, carrying the tick's bytes), in the order ticks came. With `buffer_one` a newer
//!   tick replaces a waiting one, which is recorded COALESCED.
//!
//! # Release, and why a waiting tick runs exactly once
//! A waiting tick is released — published again to the tick topic and marked RELEASED, in one
//! transaction — by whichever comes first: the transaction that finishes the running run, the
//! planning of a tick that finds nothing running but ticks waiting, or the accounting pass
//! ([`super::accounting`]), which catches the race where a tick was buffered just after the
//! finishing transaction read the ledger. Two releases of one tick are harmless: the first to
//! arrive is planned and its entry leaves the queue, and the second is a duplicate of a
//! recorded period. A released tick that finds a run still running waits again (BUFFERED).
//! Only the instance that owns the job's tick partition plans, so the queue has one writer
//! besides the releases.
//!
//! "Running" is read from the ledger: a run entry PLANNED. The view is caught up first when
//! it shows one, since the run may have finished on another instance. A PLANNED entry older
//! than twice the job's timeout (plus a minute) no longer counts: its chunks are past their
//! deadline and end it TIMED_OUT, so it cannot hold the job for good.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};

use super::ledger::{buffered_key, run_key, LedgerView};
use super::run::{new_run, run_result, Out, TxnPlan};
use super::{Processor, ProcessorError};
use crate::config::{JobSettings, Overlap};
use crate::jobs::Run;
use crate::wire::internal::{LedgerEntry, Outcome, RunState};
use crate::wire::tick::Tick;

/// How long a look at other instances' commits may take before the tick is retried.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Whether a tick whose run could go ahead does.
pub(super) enum Admit {
    /// Plan the run; these records go in the same transaction.
    Go(Vec<Out>),
    /// The tick's transaction is this instead (skipped, waiting).
    Instead(TxnPlan),
}

/// The job's runs still running, as `ledger` knows them (stale entries left out).
pub(super) fn running(ledger: &LedgerView, job: &str, settings: &JobSettings) -> Vec<LedgerEntry> {
    let limit = chrono::TimeDelta::seconds(settings.timeout_secs.saturating_mul(2).saturating_add(60).min(i64::MAX as u64) as i64);
    let now = Utc::now();
    ledger
        .open(job)
        .into_iter()
        .filter(|(k, _)| k.starts_with("run/"))
        .filter(|(k, e)| {
            let live = now - e.updated_at <= limit;
            if !live {
                tracing::warn!(key = k, planned = %e.updated_at.to_rfc3339(), "run PLANNED for longer than twice its timeout: no longer counted as running");
            }
            live
        })
        .map(|(_, e)| e.clone())
        .collect()
}

/// The job's waiting ticks, oldest first (an entry keeps the time it was first buffered).
pub(super) fn waiting(ledger: &LedgerView, job: &str) -> Vec<(String, LedgerEntry)> {
    let mut queue: Vec<(String, LedgerEntry)> =
        ledger.open(job).into_iter().filter(|(k, _)| k.starts_with("buffered/")).map(|(k, e)| (k.to_string(), e.clone())).collect();
    queue.sort_by(|a, b| (a.1.updated_at, &a.0).cmp(&(b.1.updated_at, &b.0)));
    queue
}

/// `entry` with another state, keeping its place in the queue.
fn with_state(entry: &LedgerEntry, state: RunState) -> LedgerEntry {
    LedgerEntry { state, ..entry.clone() }
}

/// The release of the job's oldest waiting tick, when nothing of the job runs but `ending`
/// (the run being finished, if any) and no tick is released already: its bytes published again
/// to the tick topic, and its entry RELEASED. `leaving`: the key of a waiting tick whose entry
/// leaves the queue in the same transaction (it ran, and ended at planning).
pub(super) fn release_next(ledger: &LedgerView, job: &str, settings: &JobSettings, ending: Option<&str>, leaving: Option<&str>) -> Vec<Out> {
    if running(ledger, job, settings).iter().any(|r| Some(r.run_id.as_str()) != ending) {
        return Vec::new();
    }
    let queue: Vec<_> = waiting(ledger, job).into_iter().filter(|(k, _)| Some(k.as_str()) != leaving).collect();
    if queue.iter().any(|(_, e)| e.state == RunState::Released) {
        return Vec::new();
    }
    let Some((key, head)) = queue.into_iter().next() else { return Vec::new() };
    let Some(bytes) = head.tick.clone() else {
        tracing::error!(key = %key, "buffered tick without its bytes: cannot be released");
        return Vec::new();
    };
    tracing::info!(job, period = %head.period, tick_id = %head.tick_id, "releasing the next waiting tick");
    vec![Out::Ledger(key, with_state(&head, RunState::Released)), Out::Tick { key: job.to_string(), bytes }]
}

/// A waiting tick decided some other way than running — its period recorded meanwhile (a
/// duplicate, a double release), or the job paused, disabled, or its schedule superseded when
/// it came back: its entry leaves the queue with `state`, so it holds no later tick back, and
/// the next waiting tick is released. Nothing when the tick was not waiting.
pub(super) fn close_waiting(ledger: &LedgerView, settings: &JobSettings, tick: &Tick, period: &str, state: RunState) -> Vec<Out> {
    let key = buffered_key(&tick.job, period);
    let Some(entry) = ledger.get(&key).filter(|e| matches!(e.state, RunState::Buffered | RunState::Released) && e.tick_id == tick.tick_id) else {
        return Vec::new();
    };
    let mut out = vec![Out::Ledger(key.clone(), with_state(entry, state))];
    out.extend(release_next(ledger, &tick.job, settings, None, Some(&key)));
    out
}

impl Processor {
    /// [`close_waiting`], with the ledger caught up first when the tick was waiting and the
    /// view still shows a run of its job running (it may have ended on another instance).
    pub(super) async fn close_waiting(&mut self, tick: &Tick, period: &str, state: RunState) -> Result<Vec<Out>, ProcessorError> {
        let settings = self.env.job_settings(&tick.job);
        let waiting = self.committer.ledger().get(&buffered_key(&tick.job, period)).is_some_and(|e| e.tick_id == tick.tick_id);
        if waiting && !running(self.committer.ledger(), &tick.job, &settings).is_empty() {
            self.committer.catch_up_ledger(CATCH_UP).await?;
        }
        Ok(close_waiting(self.committer.ledger(), &settings, tick, period, state))
    }

    /// Decides `run` (not yet recorded, not paused, enabled) against the job's overlap policy.
    /// `m` is its tick's record.
    pub(super) async fn admit(&mut self, m: &OwnedMessage, run: &Run) -> Result<Admit, ProcessorError> {
        let job = run.job.as_str();
        if self.committer.ledger().open(job).is_empty() {
            return Ok(Admit::Go(Vec::new()));
        }
        let settings = self.env.job_settings(job);
        if settings.overlap == Overlap::AllowAll {
            // Runs overlap; a tick left waiting under an earlier policy leaves the queue.
            let own = buffered_key(job, &run.period);
            let close = self
                .committer
                .ledger()
                .get(&own)
                .filter(|e| matches!(e.state, RunState::Buffered | RunState::Released) && e.tick_id == run.tick.tick_id)
                .map(|e| Out::Ledger(own.clone(), with_state(e, RunState::Planned)));
            return Ok(Admit::Go(close.into_iter().collect()));
        }
        if !running(self.committer.ledger(), job, &settings).is_empty() {
            // Those runs may have finished on another instance since this view last read.
            self.committer.catch_up_ledger(CATCH_UP).await?;
        }
        let ledger = self.committer.ledger();
        let running = running(ledger, job, &settings);
        let own = buffered_key(job, &run.period);
        let queue: Vec<(String, LedgerEntry)> = waiting(ledger, job);
        let mine = queue.iter().find(|(k, e)| *k == own && e.tick_id == run.tick.tick_id).map(|(_, e)| e.clone());
        let others: Vec<&(String, LedgerEntry)> = queue.iter().filter(|(k, _)| *k != own).collect();

        if let Some(entry) = mine {
            // A released tick (or a duplicate of a waiting one).
            let ahead = others.iter().any(|(_, e)| e.updated_at < entry.updated_at || e.state == RunState::Released);
            if running.is_empty() && (entry.state == RunState::Released || !ahead) {
                tracing::info!(job, period = %run.period, "waiting tick runs now");
                return Ok(Admit::Go(vec![Out::Ledger(own, with_state(&entry, RunState::Planned))]));
            }
            tracing::info!(job, period = %run.period, running = running.len(), "tick waits again: a run of the job is still running");
            let mut plan = TxnPlan::offset_only();
            if entry.state == RunState::Released {
                plan.out.push(Out::Ledger(own, with_state(&entry, RunState::Buffered)));
            }
            return Ok(Admit::Instead(plan));
        }
        if let Some((_, same)) = queue.iter().find(|(k, _)| *k == own) {
            // Another tick of this period already waits: this one is its duplicate (a repeated
            // request), as it would be of a recorded run.
            tracing::info!(job, period = %run.period, waiting = %same.tick_id, "a tick of this period already waits, tick ignored");
            return Ok(Admit::Instead(TxnPlan::offset_only()));
        }
        let key = crate::config::job_key(job);
        match settings.overlap {
            _ if running.is_empty() && others.is_empty() => Ok(Admit::Go(Vec::new())),
            Overlap::AllowAll => Ok(Admit::Go(Vec::new())), // decided above
            Overlap::Skip | Overlap::CancelOther if running.is_empty() => Ok(Admit::Go(Vec::new())),
            Overlap::Skip => {
                let names: Vec<String> = running.iter().map(|r| format!("{} (period {})", r.run_id, r.period)).collect();
                let message = format!("run {} still running (jobs.{key}.overlap = skip)", names.join(", "));
                tracing::info!(job, period = %run.period, "{message}");
                if running.iter().any(|r| r.period == run.period) {
                    // A forced re-run of the period that is running: its entry stays the
                    // running run's.
                    let result = run_result(run, self.env.tz, Outcome::Skipped, BTreeMap::new(), Some(message));
                    return Ok(Admit::Instead(TxnPlan { out: vec![Out::Result(result)], ..TxnPlan::default() }));
                }
                Ok(Admit::Instead(TxnPlan::ended(run, self.env.tz, RunState::Skipped, Outcome::Skipped, Some(message))))
            }
            Overlap::CancelOther => {
                for r in &running {
                    let reason = format!(
                        "cancelled by tick {} for period {} (jobs.{key}.overlap = cancel_other); chunks applied before are kept",
                        run.tick.tick_id, run.period
                    );
                    sqlx::query(
                        "INSERT INTO job_run_cancels (run_id, job, requested_by, reason) VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING",
                    )
                    .bind(&r.run_id)
                    .bind(job)
                    .bind(&run.tick.tick_id)
                    .bind(&reason)
                    .execute(&self.env.db)
                    .await?;
                    tracing::info!(job, cancelled = %r.run_id, by = %run.run_id, "running run asked to stop at its next chunk");
                }
                Ok(Admit::Go(Vec::new()))
            }
            Overlap::BufferOne | Overlap::BufferAll => {
                let mut plan = TxnPlan::offset_only();
                if settings.overlap == Overlap::BufferOne {
                    for (k, e) in others.iter().filter(|(_, e)| e.state == RunState::Buffered) {
                        plan.out.extend(self.coalesce_waiting(k, e, run).await?);
                    }
                }
                let mut entry = super::run::ledger_entry(run, RunState::Buffered, 0);
                entry.tick = m.payload().map(|p| p.to_vec());
                tracing::info!(job, period = %run.period, running = running.len(), waiting = others.len(), "tick waits for the job's running run");
                plan.out.push(Out::Ledger(own, entry));
                if running.is_empty() {
                    // Nothing runs and nothing was released (a finishing run missed the queue):
                    // the oldest waiting tick goes now.
                    plan.out.extend(release_next(self.committer.ledger(), job, &settings, None, None));
                }
                Ok(Admit::Instead(plan))
            }
        }
    }

    /// A waiting tick replaced by a newer one (`buffer_one`): its period recorded COALESCED.
    async fn coalesce_waiting(&self, key: &str, entry: &LedgerEntry, newer: &Run) -> Result<Vec<Out>, ProcessorError> {
        let tick = match entry.tick.as_deref() {
            Some(bytes) => match self.codec.decode(bytes).await.map(|d| Tick::from_avro(d.value)) {
                Ok(Ok(t)) => t,
                _ => return Ok(vec![Out::Ledger(key.to_string(), with_state(entry, RunState::Coalesced))]),
            },
            None => return Ok(vec![Out::Ledger(key.to_string(), with_state(entry, RunState::Coalesced))]),
        };
        let old: Run = new_run(tick, entry.period.clone(), entry.attempt);
        let message = format!("superseded while waiting by tick {} for {} (jobs.{}.overlap = buffer_one)", newer.tick.tick_id, newer.period, crate::config::job_key(&old.job));
        tracing::info!(job = %old.job, period = %old.period, "{message}");
        Ok(vec![
            Out::Ledger(key.to_string(), with_state(entry, RunState::Coalesced)),
            Out::Ledger(run_key(&old.job, &old.period), super::run::ledger_entry(&old, RunState::Coalesced, 0)),
            Out::Result(run_result(&old, self.env.tz, Outcome::Coalesced, BTreeMap::new(), Some(message))),
        ])
    }
}
