//! `trigger <job> --from T1 --to T2`: a backfill after an outage. One manual tick per fire time
//! of the job's schedule in `[T1, T2]` (read in `scheduler.time_zone`, DST as the schedule
//! has it), at most [`MAX_FIRE_TIMES`]. A period the run ledger already records is reported
//! and not published again unless `--force` (then its tick carries `force=true`: a new
//! attempt). `--dry-run` lists the plan and publishes nothing.
//!
//! Delivery: the processor's rules are unchanged. Each tick is an ordinary manual tick, so a
//! period recorded after the plan was read (a tick producer catching up at the same moment)
//! is still run once: the ledger answers the duplicate.

use chrono::{DateTime, Utc};

use crate::config::{job_key, Settings};
use crate::jobs::{Registry, FORCE};
use crate::kafka::codec::Codec;
use crate::runtime::processor::ledger::{run_key, LedgerError, LedgerView};
use crate::runtime::tick::{manual_tick, TickError};
use crate::schedule::Schedule;
use crate::wire::internal::RunState;
use crate::wire::tick::Tick;

/// A backfill publishes at most this many ticks: a longer range is refused with its size, so
/// a typo in a date cannot flood the processors with a year of order-expiration runs.
pub const MAX_FIRE_TIMES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("--from {from} is after --to {to}")]
    Reversed { from: String, to: String },
    #[error("job `{job}` has no schedule (it runs only when triggered): there are no fire times to backfill; use --at")]
    NoSchedule { job: String },
    #[error("no fire time of `{job}` (`{schedule}` in {tz}) between {from} and {to}")]
    Empty { job: String, schedule: String, tz: String, from: String, to: String },
    #[error("more than {MAX_FIRE_TIMES} fire times of `{job}` between {from} and {to} (the first past the limit: {past}); backfill a shorter range")]
    TooMany { job: String, from: String, to: String, past: String },
    #[error(transparent)]
    Tick(#[from] TickError),
    #[error("run ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Other(String),
}

impl BackfillError {
    /// A range or job the user got wrong (exit status 2), as opposed to a failure on the way.
    pub fn is_usage(&self) -> bool {
        match self {
            BackfillError::Tick(e) => matches!(e, TickError::UnknownJob { .. } | TickError::JobDisabled { .. } | TickError::InvalidTick(_)),
            BackfillError::Reversed { .. } | BackfillError::NoSchedule { .. } | BackfillError::Empty { .. } | BackfillError::TooMany { .. } => true,
            BackfillError::Ledger(_) | BackfillError::Other(_) => false,
        }
    }
}

/// One fire time of the range: the period it stands for and, if the ledger records that
/// period, its state.
#[derive(Debug, Clone)]
pub struct Planned {
    pub tick: Tick,
    pub period: String,
    pub recorded: Option<RunState>,
}

impl Planned {
    /// Whether the backfill publishes this tick.
    pub fn publish(&self, force: bool) -> bool {
        self.recorded.is_none() || force
    }
}

/// The fire times of `job` in `[from, to]`, oldest first.
pub fn fire_times(settings: &Settings, job: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<DateTime<Utc>>, BackfillError> {
    if from > to {
        return Err(BackfillError::Reversed { from: from.to_rfc3339(), to: to.to_rfc3339() });
    }
    // The job must exist and be enabled: the same refusal as a single trigger.
    let probe = manual_tick(settings, job, Some(from), Default::default())?;
    let key = job_key(&probe.job);
    let expr = settings.jobs.get(&key).map(|j| j.schedule.trim().to_string()).unwrap_or_default();
    if expr.is_empty() {
        return Err(BackfillError::NoSchedule { job: probe.job });
    }
    let tz = settings.time_zone().map_err(|e| BackfillError::Other(e.to_string()))?;
    let schedule = Schedule::parse(&expr, tz).map_err(|source| TickError::Schedule { key: key.clone(), source })?;
    // `fire_times` is (after, until]: start a millisecond before `from` so `from` itself counts.
    let mut times = Vec::new();
    for at in schedule.fire_times(from - chrono::TimeDelta::milliseconds(1), to) {
        if times.len() == MAX_FIRE_TIMES {
            return Err(BackfillError::TooMany { job: probe.job, from: from.to_rfc3339(), to: to.to_rfc3339(), past: at.to_rfc3339() });
        }
        times.push(at);
    }
    if times.is_empty() {
        return Err(BackfillError::Empty { job: probe.job, schedule: expr, tz: tz.to_string(), from: from.to_rfc3339(), to: to.to_rfc3339() });
    }
    Ok(times)
}

/// The ticks of a backfill of `job` at `times`, each with the period it stands for and what
/// the run ledger records for that period (read to its end now). `force`: a recorded period's
/// tick carries `force=true`.
pub async fn plan(
    settings: &Settings,
    job: &str,
    times: &[DateTime<Utc>],
    params: &std::collections::BTreeMap<String, String>,
    force: bool,
) -> Result<Vec<Planned>, BackfillError> {
    let tz = settings.time_zone().map_err(|e| BackfillError::Other(e.to_string()))?;
    let codec = Codec::new(settings).map_err(|e| BackfillError::Other(e.to_string()))?;
    let mut ledger = LedgerView::new(settings, codec)?;
    ledger.catch_up(std::time::Duration::from_secs(60)).await?;
    let registry = Registry::builtin();
    let mut out = Vec::with_capacity(times.len());
    for at in times {
        let mut tick = manual_tick(settings, job, Some(*at), params.clone())?;
        let j = registry.get(&tick.job).ok_or_else(|| BackfillError::Other(format!("job `{}` is not in this build", tick.job)))?;
        let period = j.period(&tick, tz).map_err(|e| BackfillError::Other(format!("the period of {}: {e}", at.to_rfc3339())))?;
        let recorded = ledger.get(&run_key(&tick.job, &period)).map(|e| e.state);
        if recorded.is_some() && force {
            tick.parameters.insert(FORCE.name.to_string(), "true".to_string());
        }
        out.push(Planned { tick, period, recorded });
    }
    Ok(out)
}

/// One line per fire time: when, the period, and what the backfill does with it.
pub fn describe(p: &Planned, force: bool) -> String {
    let what = match (p.recorded, force) {
        (None, _) => "to run".to_string(),
        (Some(state), false) => format!("already recorded ({}): not run again (--force runs it as a new attempt)", state.as_str()),
        (Some(state), true) => format!("already recorded ({}): run again (force)", state.as_str()),
    };
    format!("{}  {}  {what}", p.tick.scheduled_at.to_rfc3339(), p.period)
}
