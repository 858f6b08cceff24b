//! Schedule versions: while old and new tick producers both run (a rolling deploy that
//! changes a job's cron, time zone or catch-up policy), only the newest schedule's ticks run.
//!
//! Every scheduled or caught-up tick names the version of the schedule it was computed from
//! (`scheduleVersion`, [`crate::wire::tick::schedule_version`]). The newest version seen wins:
//! the first tick of a version never seen before makes it the job's current one
//! (`schedule/<job>` in the run ledger) and marks the one it replaces superseded
//! (`schedule/<job>/<version>`), in that tick's transaction; a later tick of a superseded
//! version is recorded SKIPPED, naming both versions, and runs nothing. A period is never run
//! twice anyway (the run ledger is keyed by period); what this prevents is the old schedule's
//! fire times that the new one does not have (dagster#13597).
//!
//! Ticks without a version (manual ticks, producers that do not version) are never superseded
//! and change nothing. A superseded version stays superseded: going back to an earlier
//! schedule during a rollback needs a schedule that differs from it in something (the version
//! is a hash of its settings), or the old producers stopped first. The decision is made by the
//! instance planning the job's ticks, which holds the job's tick partition, so versions of one
//! job are decided in the order their ticks arrived.

use std::collections::BTreeMap;

use chrono_tz::Tz;

use super::ledger::{marker_entry, skipped_key, LedgerView};
use super::run::{new_run, run_result, Out, TxnPlan};
use crate::wire::derived_id;
use crate::wire::internal::{Outcome, RunState};
use crate::wire::tick::{Tick, Trigger};

pub fn current_key(job: &str) -> String {
    format!("schedule/{job}")
}

pub fn superseded_key(job: &str, version: &str) -> String {
    format!("schedule/{job}/{version}")
}

/// The job's current schedule version, as the ledger says.
pub fn current(ledger: &LedgerView, job: &str) -> Option<String> {
    ledger.get(&current_key(job)).map(|e| e.period.clone())
}

pub enum Decision {
    /// No version, or the current one.
    Current,
    /// A version never seen: these entries make it current.
    New { entries: Vec<Out> },
    /// A version replaced by `current`.
    Superseded { current: String },
}

pub fn decide(ledger: &LedgerView, tick: &Tick) -> Decision {
    let Some(version) = tick.schedule_version.as_deref().filter(|_| tick.trigger != Trigger::Manual) else {
        return Decision::Current;
    };
    let now = current(ledger, &tick.job);
    if now.as_deref() == Some(version) {
        return Decision::Current;
    }
    if ledger.get(&superseded_key(&tick.job, version)).is_some() {
        return Decision::Superseded { current: now.unwrap_or_default() };
    }
    let mut entries = vec![Out::Ledger(current_key(&tick.job), marker_entry(&tick.job, version.to_string(), RunState::Done, Some(tick)))];
    if let Some(previous) = now {
        tracing::info!(job = %tick.job, previous = %previous, current = %version, tick_id = %tick.tick_id, "new schedule version: the previous one's ticks are skipped from now on");
        entries.push(Out::Ledger(superseded_key(&tick.job, &previous), marker_entry(&tick.job, previous.clone(), RunState::Skipped, Some(tick))));
    }
    Decision::New { entries }
}

/// A superseded version's tick: a SKIPPED result under a run id of its own tick, and
/// `skipped/<job>/<period>` rather than a run entry (the period stays runnable by the current
/// schedule's tick); the same tick again (the old producers are redundant) is a duplicate.
pub fn skip_superseded(ledger: &LedgerView, tick: &Tick, period: String, current: &str, tz: Tz) -> TxnPlan {
    let version = tick.schedule_version.clone().unwrap_or_default();
    let mut run = new_run(tick.clone(), period, 1);
    run.run_id = derived_id(&["superseded-schedule", &tick.tick_id, &version]).to_string();
    let key = skipped_key(&tick.job, &run.period);
    if ledger.get(&key).is_some_and(|e| e.run_id == run.run_id) {
        return TxnPlan::offset_only();
    }
    let message = format!(
        "tick from schedule version {version}, superseded by version {current} (a tick producer with the previous schedule still runs?): not run"
    );
    tracing::info!(job = %tick.job, tick_id = %tick.tick_id, "{message}");
    let entry = super::run::ledger_entry(&run, RunState::Skipped, 0);
    TxnPlan { out: vec![Out::Ledger(key, entry), Out::Result(run_result(&run, tz, Outcome::Skipped, BTreeMap::new(), Some(message)))], ..TxnPlan::default() }
}
