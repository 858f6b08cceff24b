//! Planning: a tick becomes a run. It is checked (decodable, a known job, a possible time and
//! parameters), then decided against the run ledger ([`attempt`]) and the job's state
//! ([`why_not`]); a run that goes ahead has its job stream fixed chunks of ids, which become
//! work items, a seal carrying the chunk count and a `PLANNED` ledger entry — one transaction
//! with the tick's offset. Planning only reads, so it can be abandoned at any point.
//!
//! A run planned as one chunk is applied right away instead, in the same transaction
//! (`processor.inline_one_chunk_runs`): one hop from tick to run result. Its chunk is
//! recorded in PostgreSQL before its effects, and that record is the decision: a retry of the
//! tick (its transaction did not commit) applies that chunk again, before and whatever the
//! checks below would decide now.
//!
//! Records that cannot be accepted become dead letters with the reason and the original bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use rdkafka::message::{Headers, Message, OwnedMessage};

use super::ledger::{run_key, skipped_key};
use super::bookkeeping;
use super::run::{new_run, work_item, Out, TxnPlan, SEAL};
use super::overlap::{self, Admit};
use super::{versions, Processor, ProcessorError};
use crate::runtime::control::Pause;
use crate::runtime::metrics::Sample;
use crate::error::ErrorClass;
use crate::jobs::{Job, JobError, Run};
use crate::wire::derived_id;
use crate::wire::internal::{DeadLetter, LedgerEntry, Outcome, RunState, WorkItem};
use crate::wire::tick::{Tick, Trigger};
use crate::wire::WireError;

/// Why a record goes to the dead-letter topic.
#[derive(Debug, Clone)]
pub(super) struct Reject {
    code: &'static str,
    reason: String,
}

pub(super) fn reject(code: &'static str, reason: impl Into<String>) -> Reject {
    Reject { code, reason: reason.into() }
}

/// Which attempt of its period a tick starts: `None` when the period is already recorded (a
/// duplicate tick or a replay: nothing runs again), the next attempt when a manual tick asks
/// for `force=true` — unless that tick is the one the recorded attempt came from (delivered
/// again: a replay, or a waiting tick released twice).
pub(super) fn attempt(tick: &Tick, recorded: Option<&LedgerEntry>) -> Option<i32> {
    let forced = tick.trigger == Trigger::Manual && tick.parameters.get("force").is_some_and(|v| v == "true");
    match recorded {
        None => Some(1),
        Some(prev) if forced && prev.tick_id != tick.tick_id => Some(prev.attempt + 1),
        Some(_) => None,
    }
}

/// Why a run that could go ahead does not: superseded by a newer tick of the same job queued
/// behind it, paused by an operator, or disabled in the configuration — in that order.
pub(super) enum NotNow {
    Superseded(String),
    Paused(Pause),
    Disabled,
}

pub(super) fn why_not(superseded_by: Option<&Tick>, paused: Option<Pause>, enabled: bool) -> Option<NotNow> {
    if let Some(newer) = superseded_by {
        return Some(NotNow::Superseded(format!("superseded by tick {} for {}", newer.tick_id, newer.scheduled_at.to_rfc3339())));
    }
    if let Some(p) = paused {
        return Some(NotNow::Paused(p));
    }
    (!enabled).then_some(NotNow::Disabled)
}

impl Processor {
    pub(super) async fn decode_tick(&self, m: &OwnedMessage) -> Result<Result<Tick, Reject>, ProcessorError> {
        let Some(bytes) = m.payload() else {
            return Ok(Err(reject("UNDECODABLE", "empty record value")));
        };
        let decoded = match self.codec.decode(bytes).await {
            Ok(d) => d,
            Err(e) if e.class() == ErrorClass::Retry => return Err(e.into()),
            Err(e) => return Ok(Err(reject("UNDECODABLE", e.to_string()))),
        };
        let name = match &decoded.schema {
            apache_avro::Schema::Record(r) => r.name.fullname(None),
            other => format!("{other:?}").chars().take(40).collect(),
        };
        if name != crate::wire::tick::RECORD {
            return Ok(Err(reject("WRONG_SCHEMA", format!("expected {} but the record is {name}", crate::wire::tick::RECORD))));
        }
        Ok(Tick::from_avro(decoded.value).map_err(|e: WireError| reject("WRONG_SCHEMA", e.to_string())))
    }

    /// Checks a decoded tick against what this processor can run; gives its job and period.
    pub(super) fn validate_tick(&self, tick: &Tick) -> Result<(Arc<dyn Job>, String), Reject> {
        let job = self.jobs.get(&tick.job).cloned().ok_or_else(|| {
            reject("UNKNOWN_JOB", format!("unknown job `{}` (known: {})", tick.job, self.jobs.names().join(", ")))
        })?;
        if tick.trigger == Trigger::Unknown {
            // A newer producer's trigger: its meaning (e.g. whether it may force a re-run) is
            // not known here, so the tick is not guessed into a run.
            return Err(reject("IMPOSSIBLE_VALUE", "trigger is none of SCHEDULED, CATCH_UP, MANUAL (a newer tick producer's?)"));
        }
        let max_future = self.env.settings.processor.max_future_secs;
        if tick.scheduled_at > Utc::now() + chrono::TimeDelta::seconds(max_future as i64) {
            let at = tick.scheduled_at.to_rfc3339();
            return Err(reject("IMPOSSIBLE_VALUE", format!("scheduledAt {at} is more than {max_future} s in the future")));
        }
        if tick.scheduled_at.timestamp() < 946_684_800 {
            return Err(reject("IMPOSSIBLE_VALUE", format!("scheduledAt {} is before 2000", tick.scheduled_at.to_rfc3339())));
        }
        crate::jobs::check_tick(job.as_ref(), tick).map_err(|e| reject("IMPOSSIBLE_VALUE", e.to_string()))?;
        let period = job.period(tick, self.env.tz).map_err(|e| reject("IMPOSSIBLE_VALUE", e.to_string()))?;
        Ok((job, period))
    }

    /// The newest tick of the same job queued behind `decoded` that will itself run, if the
    /// job coalesces (looks at current state). Manual ticks are explicit requests: never
    /// coalesced, never superseding.
    pub(super) fn superseding(&self, decoded: &Result<Tick, Reject>, behind: &[Option<Result<Tick, Reject>>]) -> Option<Tick> {
        let t = decoded.as_ref().ok()?;
        if t.trigger == Trigger::Manual || !self.jobs.get(&t.job).is_some_and(|j| j.coalesce()) {
            return None;
        }
        behind
            .iter()
            .flatten()
            .flatten()
            .filter(|n| n.job == t.job && n.trigger != Trigger::Manual && n.scheduled_at > t.scheduled_at && self.validate_tick(n).is_ok())
            .max_by_key(|n| n.scheduled_at)
            .cloned()
    }

    /// The transaction of tick `m` (decoded up front), given the newer tick of the same job
    /// queued behind it that supersedes it, if any.
    pub(super) async fn tick_plan(&mut self, m: &OwnedMessage, decoded: Result<Tick, Reject>, superseded_by: Option<Tick>) -> Result<TxnPlan, ProcessorError> {
        let tick = match decoded {
            Ok(t) => t,
            Err(r) => return Ok(self.dead_letter(m, r)),
        };
        let span = tracing::Span::current();
        span.record("job", tick.job.as_str());
        span.record("tick_id", tick.tick_id.as_str());
        let (job, period) = match self.validate_tick(&tick) {
            Ok(v) => v,
            Err(r) => return Ok(self.dead_letter(m, r)),
        };
        let recorded = self.committer.ledger().get(&run_key(&tick.job, &period));
        let Some(attempt) = attempt(&tick, recorded) else {
            // A duplicate of a recorded period changes nothing, whatever its schedule version
            // (a waiting copy of it leaves the queue).
            tracing::info!(job = %tick.job, period = %period, tick_id = %tick.tick_id, "run already recorded, tick ignored");
            let state = recorded.map(|e| e.state).unwrap_or(RunState::Done);
            let mut plan = TxnPlan::offset_only();
            plan.out.extend(self.close_waiting(&tick, &period, state).await?);
            return Ok(plan);
        };
        let run = new_run(tick, period, attempt);
        // A run whose one chunk an earlier attempt of this tick began applying is carried out,
        // whatever is decided now (its effects may have happened).
        let begun = match self.inline_eligible(&run.job) {
            true => bookkeeping::inline_begun(&self.env.db, &run.run_id).await?,
            false => None,
        };
        let versions = match versions::decide(self.committer.ledger(), &run.tick) {
            versions::Decision::Superseded { current } if begun.is_none() => {
                let mut plan = versions::skip_superseded(self.committer.ledger(), &run.tick, run.period.clone(), &current, self.env.tz);
                plan.out.extend(self.close_waiting(&run.tick, &run.period, RunState::Skipped).await?);
                return Ok(plan);
            }
            versions::Decision::Superseded { .. } | versions::Decision::Current => Vec::new(),
            versions::Decision::New { entries } => entries,
        };
        let mut plan = match begun {
            Some(item) => {
                tracing::info!(job = %run.job, run_id = %run.run_id, "run begun by an earlier attempt of this tick: applying its chunk again");
                let span = tracing::Span::current();
                span.record("run_id", run.run_id.as_str());
                self.apply_inline(run, item, job).await?
            }
            None => self.decide_run(m, run, job, superseded_by).await?,
        };
        // A new schedule version becomes current with this tick's transaction, whatever the
        // tick itself leads to.
        plan.out.splice(0..0, versions);
        Ok(plan)
    }

    /// The rest of the transaction of a valid tick whose period is not recorded (or forced):
    /// superseded, paused, disabled, or `run` planned.
    async fn decide_run(&mut self, m: &OwnedMessage, run: Run, job: Arc<dyn Job>, superseded_by: Option<Tick>) -> Result<TxnPlan, ProcessorError> {
        let span = tracing::Span::current();
        span.record("run_id", run.run_id.as_str());
        let paused = match superseded_by {
            None => crate::runtime::control::paused(&self.env.db, &run.job).await?,
            Some(_) => None,
        };
        let settings = self.env.job_settings(&run.job);
        let (mut plan, state) = match why_not(superseded_by.as_ref(), paused, settings.enabled) {
            Some(NotNow::Superseded(message)) => {
                tracing::info!(job = %run.job, period = %run.period, "{message}");
                (TxnPlan::ended(&run, self.env.tz, RunState::Coalesced, Outcome::Coalesced, Some(message)), RunState::Coalesced)
            }
            Some(NotNow::Paused(pause)) => (skip_paused(&run, self.env.tz, pause), RunState::Skipped),
            Some(NotNow::Disabled) => {
                let message = format!("job disabled (setting `jobs.{}.enabled` is false)", crate::config::job_key(&run.job));
                (TxnPlan::ended(&run, self.env.tz, RunState::Skipped, Outcome::Skipped, Some(message)), RunState::Skipped)
            }
            None => return self.admit_and_plan(m, run, job).await,
        };
        // A waiting tick that came back to a paused or disabled job, or was superseded.
        plan.out.extend(self.close_waiting(&run.tick, &run.period, state).await?);
        Ok(plan)
    }

    /// A run that may go ahead, through the job's overlap policy, then planned.
    async fn admit_and_plan(&mut self, m: &OwnedMessage, run: Run, job: Arc<dyn Job>) -> Result<TxnPlan, ProcessorError> {
        let admitted = match self.admit(m, &run).await? {
            Admit::Go(out) => out,
            Admit::Instead(plan) => return Ok(plan),
        };
        let waited = !admitted.is_empty();
        let (job_name, period) = (run.job.clone(), run.period.clone());
        let mut plan = self.plan_run(m, run, job).await?;
        plan.out.splice(0..0, admitted);
        if waited && !plan.out.iter().any(|o| matches!(o, Out::WorkItem(_))) {
            // A waiting tick whose run ended at planning (or whose tick became a dead letter):
            // no chunk will finish it, so the next waiting tick is released here.
            let settings = self.env.job_settings(&job_name);
            let own = super::ledger::buffered_key(&job_name, &period);
            plan.out.extend(overlap::release_next(self.committer.ledger(), &job_name, &settings, None, Some(&own)));
        }
        Ok(plan)
    }

    /// The run's plan: its work items, seal and PLANNED entry; or its end, when planning
    /// fails, times out or finds nothing to do.
    async fn plan_run(&mut self, m: &OwnedMessage, run: Run, job: Arc<dyn Job>) -> Result<TxnPlan, ProcessorError> {
        tracing::info!(job = %run.job, period = %run.period, run_id = %run.run_id, trigger = run.tick.trigger.as_str(), "planning run");
        let timeout = Duration::from_secs(self.env.job_settings(&run.job).timeout_secs);
        match tokio::time::timeout(timeout, self.plan(job.as_ref(), &run)).await {
            Err(_) => {
                let message = format!("planning exceeded the job timeout of {} s", timeout.as_secs());
                self.ended_at_planning(&run, RunState::TimedOut, Outcome::TimedOut, BTreeMap::new(), Some(message)).await
            }
            Ok(Err(JobError::InvalidTick(reason))) => Ok(self.dead_letter(m, reject("IMPOSSIBLE_VALUE", reason))),
            Ok(Err(e)) if e.is_transient() => Err(ProcessorError::Job { job: run.job.clone(), source: e }),
            Ok(Err(e)) => self.ended_at_planning(&run, RunState::Failed, Outcome::Failed, BTreeMap::new(), Some(e.to_string())).await,
            Ok(Ok(items)) if items.is_empty() => {
                // Nothing to do: the run is complete with its plan (and ends a failure streak).
                let mut plan = self.ended_at_planning(&run, RunState::Done, Outcome::Succeeded, BTreeMap::from([("chunks".to_string(), 0)]), None).await?;
                plan.samples.extend(planned(&run));
                Ok(plan)
            }
            Ok(Ok(mut items)) if items.len() == 1 && self.inline_eligible(&run.job) => {
                let mut item = items.remove(0);
                item.chunk_count = 1;
                tracing::info!(job = %run.job, run_id = %run.run_id, "run planned as one chunk: applied in the tick's transaction");
                self.apply_inline(run, item, job).await
            }
            Ok(Ok(items)) => {
                let chunks = items.len() as i32;
                let mut seal = work_item(&run, SEAL, Vec::new());
                seal.chunk_count = chunks;
                let mut out: Vec<Out> = items.into_iter().map(Out::WorkItem).collect();
                out.push(Out::WorkItem(seal));
                out.push(Out::Ledger(run_key(&run.job, &run.period), super::run::ledger_entry(&run, RunState::Planned, chunks)));
                tracing::info!(job = %run.job, run_id = %run.run_id, chunks, "run planned");
                Ok(TxnPlan { out, samples: planned(&run).into_iter().collect(), fault: Some((crate::runtime::fault::BEFORE_PLAN_COMMIT, run.job.clone())) })
            }
        }
    }

    /// Whether a run of `job` planned as one chunk is applied in its tick's transaction
    /// (`processor.inline_one_chunk_runs`). Not for a job whose waiting ticks are released by
    /// the transaction that ends its run (`buffer_one`, `buffer_all`): that release reads the
    /// queue as committed, which the tick's own transaction is still changing.
    pub(super) fn inline_eligible(&self, job: &str) -> bool {
        self.env.settings.processor.inline_one_chunk_runs && !self.env.job_settings(job).overlap.buffers()
    }

    /// A run applied in its tick's transaction: its seal and its one chunk are recorded in
    /// PostgreSQL before the chunk's effects (the decision a retry of the tick carries out,
    /// [`bookkeeping::inline_begun`]), then the chunk is applied as a work item's would be.
    /// The transaction carries the chunk's records and entry and, when the chunk completes the
    /// run, the run's end; when the chunk continues in parts, the run's PLANNED entry and the
    /// continuation as a work item (the run ends with its last part).
    async fn apply_inline(&mut self, mut run: Run, item: WorkItem, job: Arc<dyn Job>) -> Result<TxnPlan, ProcessorError> {
        bookkeeping::seal_inline(&self.env.db, &item).await?;
        // The time the chunk was planned at, as recorded: the run's deadline counts from it.
        run.planned_at = item.planned_at;
        let mut plan = self.apply_chunk(&run, item, job, None, &[]).await?;
        if !plan.out.iter().any(|o| matches!(o, Out::Result(_))) {
            // The chunk goes on in parts (work items): the run is running until its last.
            plan.out.insert(0, Out::Ledger(run_key(&run.job, &run.period), super::run::ledger_entry(&run, RunState::Planned, 1)));
        }
        plan.samples.extend(planned(&run));
        Ok(plan)
    }

    /// A run that ends at planning (failed, timed out, or with nothing to do), with its place
    /// in the job's failure streak.
    async fn ended_at_planning(
        &self,
        run: &Run,
        state: RunState,
        outcome: Outcome,
        mut counts: BTreeMap<String, i64>,
        mut message: Option<String>,
    ) -> Result<TxnPlan, ProcessorError> {
        let samples = self.end_of_run(run, outcome, &mut counts, &mut message).await?;
        let mut plan = TxnPlan::default();
        plan.finish(run, self.env.tz, super::run::RunEnd { state, outcome, chunk_count: 0 }, counts, message);
        plan.samples.extend(samples);
        Ok(plan)
    }

    /// The run's work items, as its job streams its chunks.
    async fn plan(&self, job: &dyn Job, run: &Run) -> Result<Vec<WorkItem>, JobError> {
        let ctx = self.env.job_ctx(&run.job);
        let mut chunks = job.plan(&ctx, run);
        let mut items = Vec::new();
        while let Some(ids) = chunks.next().await {
            items.push(work_item(run, items.len() as i32, ids?));
        }
        Ok(items)
    }

    /// A dead letter for `m` with the reason and its original bytes and headers.
    pub(super) fn dead_letter(&self, m: &OwnedMessage, r: Reject) -> TxnPlan {
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), code = r.code, reason = %r.reason, "record sent to dead letters");
        let letter = DeadLetter {
            event_id: derived_id(&["dead-letter", m.topic(), &m.partition().to_string(), &m.offset().to_string()]).to_string(),
            event_timestamp: Utc::now(),
            source_topic: m.topic().to_string(),
            source_partition: m.partition(),
            source_offset: m.offset(),
            reason_code: r.code.to_string(),
            reason: r.reason,
            original_key: m.key().map(|k| k.to_vec()),
            original_value: m.payload().map(|p| p.to_vec()),
            headers: crate::wire::internal::header_map(
                m.headers().into_iter().flat_map(|h| h.iter()).map(|h| (h.key, h.value)),
            ),
        };
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        TxnPlan { out: vec![Out::DeadLetter { key, letter }], ..TxnPlan::default() }
    }
}

/// How late a scheduled run was planned after its fire time (tick producer, broker and the
/// processor's own backlog together). Manual ticks name any time they like, so only the
/// schedule's own (and caught-up) ticks are measured.
fn planned(run: &Run) -> Option<Sample> {
    matches!(run.tick.trigger, Trigger::Scheduled | Trigger::CatchUp).then(|| Sample::TickDelay {
        job: run.job.clone(),
        seconds: (run.planned_at - run.tick.scheduled_at).num_milliseconds().max(0) as f64 / 1000.0,
    })
}

/// A paused job's tick: a SKIPPED result under a run id of its own tick, and the entry
/// `skipped/<job>/<period>` (what became of the fire time) rather than a run entry, so the
/// period stays runnable after `resume`.
fn skip_paused(run: &Run, tz: chrono_tz::Tz, pause: Pause) -> TxnPlan {
    let mut run = run.clone();
    run.run_id = derived_id(&["paused", &run.tick.tick_id]).to_string();
    tracing::info!(job = %run.job, period = %run.period, tick_id = %run.tick.tick_id, paused_by = %pause.paused_by, "job paused, tick skipped");
    let result = super::run::run_result(&run, tz, Outcome::Skipped, BTreeMap::new(), Some(pause.message()));
    let entry = super::run::ledger_entry(&run, RunState::Skipped, 0);
    TxnPlan { out: vec![Out::Ledger(skipped_key(&run.job, &run.period), entry), Out::Result(result)], ..TxnPlan::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(trigger: Trigger, force: bool) -> Tick {
        let mut t = Tick::for_fire_time("noop", chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap(), trigger, None);
        if force {
            t.parameters.insert("force".into(), "true".into());
        }
        t
    }

    fn recorded(attempt: i32) -> LedgerEntry {
        let mut earlier = tick(Trigger::Scheduled, false);
        earlier.tick_id = "the tick of the recorded attempt".into();
        let run = new_run(earlier, "p".into(), attempt);
        super::super::run::ledger_entry(&run, RunState::Done, 1)
    }

    #[test]
    fn a_recorded_period_runs_again_only_when_a_manual_tick_forces_it() {
        assert_eq!(attempt(&tick(Trigger::Scheduled, false), None), Some(1));
        assert_eq!(attempt(&tick(Trigger::Scheduled, false), Some(&recorded(1))), None);
        assert_eq!(attempt(&tick(Trigger::Manual, false), Some(&recorded(1))), None);
        assert_eq!(attempt(&tick(Trigger::Scheduled, true), Some(&recorded(1))), None, "force is manual only");
        assert_eq!(attempt(&tick(Trigger::Manual, true), Some(&recorded(2))), Some(3));
        let forced = tick(Trigger::Manual, true);
        let mut its_own = recorded(2);
        its_own.tick_id = forced.tick_id.clone();
        assert_eq!(attempt(&forced, Some(&its_own)), None, "the forcing tick delivered again is a duplicate");
    }

    #[test]
    fn superseded_wins_over_paused_which_wins_over_disabled() {
        let pause = || Pause { job: "noop".into(), paused_by: "op".into(), reason: None, paused_at: Utc::now() };
        let newer = tick(Trigger::Scheduled, false);
        assert!(matches!(why_not(Some(&newer), Some(pause()), false), Some(NotNow::Superseded(m)) if m.contains(&newer.tick_id)));
        assert!(matches!(why_not(None, Some(pause()), false), Some(NotNow::Paused(_))));
        assert!(matches!(why_not(None, None, false), Some(NotNow::Disabled)));
        assert!(why_not(None, None, true).is_none());
    }
}
