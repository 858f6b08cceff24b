//! A run's identity and what one record's transaction writes about it: the decisions of the
//! handlers, as plain data, before anything is encoded or sent.
//!
//! [`Run`] is the one run-identity type: every work item, ledger entry and run result of a run
//! is built from it here, and a work item gives it back ([`run_of`]). A handler returns a
//! [`TxnPlan`]; the processor encodes it and the committer writes it in one transaction with
//! the consumed record's offset. An empty plan commits the offset alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use chrono_tz::Tz;

use super::bookkeeping::ChunkOutcome;
use super::ledger::run_key;
use crate::jobs::Run;
use crate::runtime::metrics::Sample;
use crate::wire::derived_id;
use crate::wire::internal::{DeadLetter, LedgerEntry, Outcome, RunResult, RunState, WorkItem};
use crate::wire::tick::{Tick, Trigger};

/// Chunk index of the seal work item that closes a plan.
pub const SEAL: i32 = -1;

/// One record to write in a transaction.
#[derive(Debug, Clone)]
pub enum Out {
    /// A job's event, already encoded (encoding overlaps the chunk's bookkeeping).
    Event { topic: Arc<str>, key: String, bytes: Vec<u8> },
    WorkItem(WorkItem),
    Ledger(String, LedgerEntry),
    Result(RunResult),
    DeadLetter { key: String, letter: DeadLetter },
    /// A buffered tick published again to the tick topic, as it first arrived.
    Tick { key: String, bytes: Vec<u8> },
}

/// What one consumed record's transaction writes, besides its offset.
#[derive(Debug, Default)]
pub struct TxnPlan {
    pub out: Vec<Out>,
    /// Metric samples of the job's work (records and results are counted from `out`).
    pub samples: Vec<Sample>,
    /// A fault point to pass right before the commit (crash tests), with the job's name.
    pub fault: Option<(&'static str, String)>,
}

impl TxnPlan {
    /// The record is consumed and nothing else is written (a duplicate).
    pub fn offset_only() -> TxnPlan {
        TxnPlan::default()
    }

    /// A run that ends here: its ledger entry and its result (`tz`: the configured zone).
    pub fn finish(&mut self, run: &Run, tz: Tz, end: RunEnd, counts: BTreeMap<String, i64>, message: Option<String>) {
        let entry = ledger_entry(run, end.state, end.chunk_count);
        self.out.push(Out::Ledger(run_key(&run.job, &run.period), entry));
        self.out.push(Out::Result(run_result(run, tz, end.outcome, counts, message)));
    }

    /// A run that ends at planning (skipped, failed, timed out), with no chunks.
    pub fn ended(run: &Run, tz: Tz, state: RunState, outcome: Outcome, message: Option<String>) -> TxnPlan {
        let mut plan = TxnPlan::default();
        plan.finish(run, tz, RunEnd { state, outcome, chunk_count: 0 }, BTreeMap::new(), message);
        plan
    }
}

/// How a run ends: its ledger state, its result's outcome and its chunk count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    pub state: RunState,
    pub outcome: Outcome,
    pub chunk_count: i32,
}

impl RunEnd {
    /// The one mapping from how chunks ended to how a run (or the chunk's entry) ends.
    pub fn of_chunks(outcome: ChunkOutcome, chunk_count: i32) -> RunEnd {
        let (state, outcome) = match outcome {
            ChunkOutcome::Applied => (RunState::Done, Outcome::Succeeded),
            ChunkOutcome::TimedOut => (RunState::TimedOut, Outcome::TimedOut),
            ChunkOutcome::Cancelled => (RunState::Cancelled, Outcome::Cancelled),
            ChunkOutcome::Failed | ChunkOutcome::Started => (RunState::Failed, Outcome::Failed),
        };
        RunEnd { state, outcome, chunk_count }
    }
}

/// A new run of `tick` for `period`; attempt `n` of it gets its own deterministic id.
pub fn new_run(tick: Tick, period: String, attempt: i32) -> Run {
    Run {
        run_id: derived_id(&["run", &tick.job, &period, &attempt.to_string()]).to_string(),
        job: tick.job.clone(),
        period,
        attempt,
        tick,
        planned_at: Utc::now(),
    }
}

/// The run a work item belongs to (its attempt is in the ledger, not in the item).
pub fn run_of(item: &WorkItem) -> Run {
    Run {
        run_id: item.run_id.clone(),
        job: item.job.clone(),
        period: item.period.clone(),
        attempt: 0,
        tick: Tick {
            tick_id: item.tick_id.clone(),
            job: item.job.clone(),
            scheduled_at: item.scheduled_at,
            produced_at: item.planned_at,
            trigger: Trigger::parse(&item.trigger),
            parameters: item.parameters.clone(),
            producer: None,
            schedule_version: None,
        },
        planned_at: item.planned_at,
    }
}

/// Chunk `index` of `run` (or its [`SEAL`]).
pub fn work_item(run: &Run, index: i32, ids: Vec<String>) -> WorkItem {
    WorkItem {
        run_id: run.run_id.clone(),
        job: run.job.clone(),
        period: run.period.clone(),
        tick_id: run.tick.tick_id.clone(),
        trigger: run.tick.trigger.as_str().to_string(),
        chunk_index: index,
        chunk_count: -1,
        ids,
        parameters: run.tick.parameters.clone(),
        scheduled_at: run.tick.scheduled_at,
        planned_at: run.planned_at,
        resume_after: None,
        carried_counts: BTreeMap::new(),
    }
}

/// The next part of `item`'s chunk: the same chunk, resumed after `cursor`, carrying the counts
/// of every part so far (`counts` are this part's).
pub fn continuation(item: &WorkItem, cursor: String, counts: &BTreeMap<String, i64>) -> WorkItem {
    let mut next = item.clone();
    next.resume_after = Some(cursor);
    next.carried_counts = carried(item, counts);
    next
}

/// `item`'s carried counts plus this part's.
pub fn carried(item: &WorkItem, counts: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut all = item.carried_counts.clone();
    for (k, v) in counts {
        *all.entry(k.clone()).or_insert(0) += v;
    }
    all
}

pub fn ledger_entry(run: &Run, state: RunState, chunk_count: i32) -> LedgerEntry {
    LedgerEntry {
        run_id: run.run_id.clone(),
        job: run.job.clone(),
        period: run.period.clone(),
        tick_id: run.tick.tick_id.clone(),
        trigger: run.tick.trigger.as_str().to_string(),
        state,
        chunk_count,
        attempt: run.attempt.max(1),
        updated_at: Utc::now(),
        tick: None,
    }
}

/// The result of `run`; `tz` is the configured zone (`scheduler.time_zone`) it ran in, named in
/// the result so every consumer knows in which zone its schedule and date period were read.
pub fn run_result(run: &Run, tz: Tz, outcome: Outcome, counts: BTreeMap<String, i64>, message: Option<String>) -> RunResult {
    let now = Utc::now();
    RunResult {
        event_id: derived_id(&["run-result", &run.run_id]).to_string(),
        event_timestamp: now,
        run_id: run.run_id.clone(),
        job: run.job.clone(),
        period: run.period.clone(),
        tick_id: run.tick.tick_id.clone(),
        trigger: run.tick.trigger.as_str().to_string(),
        outcome,
        counts,
        started_at: run.planned_at,
        finished_at: now,
        duration_ms: (now - run.planned_at).num_milliseconds().max(0),
        message,
        time_zone: tz.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick() -> Tick {
        let at = chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let mut t = Tick::for_fire_time("noop", at, Trigger::Manual, None);
        t.parameters.insert("chunks".into(), "3".into());
        t
    }

    #[test]
    fn a_run_survives_its_way_through_a_work_item() {
        let run = new_run(tick(), "p".into(), 2);
        let back = run_of(&work_item(&run, 1, vec!["a".into()]));
        assert_eq!((back.run_id.as_str(), back.job.as_str(), back.period.as_str()), (run.run_id.as_str(), "noop", "p"));
        assert_eq!(back.tick.tick_id, run.tick.tick_id);
        assert_eq!(back.tick.trigger, Trigger::Manual);
        assert_eq!(back.tick.scheduled_at, run.tick.scheduled_at);
        assert_eq!(back.tick.parameters, run.tick.parameters);
        assert_eq!(back.planned_at, run.planned_at);
    }

    #[test]
    fn a_continuation_is_the_same_chunk_resumed_with_the_counts_so_far() {
        let run = new_run(tick(), "p".into(), 1);
        let first = work_item(&run, 4, vec!["a".into(), "z".into()]);
        let part = |n: i64| BTreeMap::from([("alerts".to_string(), n)]);
        let second = continuation(&first, "m".into(), &part(5));
        assert_eq!((second.key(), second.ids.clone(), second.resume_after.as_deref()), (first.key(), first.ids.clone(), Some("m")));
        let third = continuation(&second, "t".into(), &part(5));
        assert_eq!(third.carried_counts, part(10));
        assert_eq!(carried(&third, &part(2)), part(12), "the last part completes the chunk with every part's counts");
        let back = WorkItem::from_avro(third.to_avro()).unwrap();
        assert_eq!((back.key(), back.resume_after, back.carried_counts), (third.key(), third.resume_after, third.carried_counts), "survives the wire");
    }

    #[test]
    fn attempts_of_a_period_get_their_own_ids_and_the_same_period_the_same_id() {
        let a = new_run(tick(), "p".into(), 1);
        assert_eq!(a.run_id, new_run(tick(), "p".into(), 1).run_id);
        assert_ne!(a.run_id, new_run(tick(), "p".into(), 2).run_id);
        assert_ne!(a.run_id, new_run(tick(), "q".into(), 1).run_id);
    }

    #[test]
    fn a_run_that_ends_writes_its_ledger_entry_then_its_result() {
        let run = new_run(tick(), "p".into(), 3);
        let plan = TxnPlan::ended(&run, chrono_tz::Asia::Seoul, RunState::Skipped, Outcome::Skipped, Some("why".into()));
        let [Out::Ledger(key, entry), Out::Result(result)] = plan.out.as_slice() else { panic!("{:?}", plan.out) };
        assert_eq!(key, "run/noop/p");
        assert_eq!((entry.state, entry.attempt, entry.chunk_count), (RunState::Skipped, 3, 0));
        assert_eq!((result.outcome, result.message.as_deref()), (Outcome::Skipped, Some("why")));
        assert_eq!(result.time_zone, "Asia/Seoul", "the result names the zone the run was read in");
        assert_eq!(result.event_id, derived_id(&["run-result", &run.run_id]).to_string());
    }

    #[test]
    fn chunks_that_failed_fail_the_run_and_a_timeout_times_it_out() {
        assert_eq!(RunEnd::of_chunks(ChunkOutcome::Applied, 4).outcome, Outcome::Succeeded);
        assert_eq!(RunEnd::of_chunks(ChunkOutcome::TimedOut, 4).state, RunState::TimedOut);
        assert_eq!(RunEnd::of_chunks(ChunkOutcome::Failed, 4).outcome, Outcome::Failed);
        assert_eq!(RunEnd::of_chunks(ChunkOutcome::Started, 4).state, RunState::Failed);
    }
}
