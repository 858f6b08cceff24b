//! Applying: a work item's chunk gets its job's idempotent effects; its transaction carries
//! the records they imply, a chunk ledger entry and (through the committer) its offset. The
//! chunk that completes the run — claimed in PostgreSQL, see [`bookkeeping`] — also carries the
//! run's ledger entry, the job's whole-run records ([`crate::jobs::Job::finalize`]) and the run
//! result.
//!
//! A chunk whose records would not fit one transaction is applied in parts
//! ([`crate::jobs::ChunkOutput::more`]): each part's transaction carries its records and the
//! chunk's continuation work item (with its offset, atomically), so a part is emitted exactly
//! once and the effects, made by the first part, are never repeated once it committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};

use super::ahead::{effects, Ahead, Effects};
use super::bookkeeping::{self, ChunkOutcome, Finalized};
use super::ledger::{chunk_key, run_key};
use super::run::{carried, continuation, ledger_entry, run_of, run_result, Out, RunEnd, TxnPlan, SEAL};
use super::tick::{reject, Reject};
use super::{record_work_item, Processor, ProcessorError};
use crate::error::ErrorClass;
use crate::jobs::{Emit, Job, Run};
use crate::runtime::metrics::Sample;
use crate::wire::internal::{Outcome, WorkItem};
use crate::wire::Topic;

/// Count a continuation carries when an earlier part of its chunk stopped at the run's
/// deadline: the chunk then completes `TIMED_OUT` (shown in the run result's counts).
const TIMED_OUT_PARTS: &str = "timedOutParts";

impl Processor {
    /// The transaction of work item `m`. `rest` are the batch's records after it: the next
    /// work items' effects start while this one's are applied.
    pub(super) async fn work_item_plan(&mut self, m: &OwnedMessage, rest: &[OwnedMessage]) -> Result<TxnPlan, ProcessorError> {
        let ahead = self.take_ahead(m).await;
        let item = match &ahead {
            // Decoded when its effects were started.
            Some(a) => a.item.clone(),
            None => match self.decode_work_item(m).await? {
                Ok(item) => item,
                Err(r) => return Ok(self.dead_letter(m, r)),
            },
        };
        record_work_item(&tracing::Span::current(), &item);
        let Some(job) = self.jobs.get(&item.job).cloned() else {
            return Ok(self.dead_letter(m, reject("UNKNOWN_JOB", format!("work item of unknown job `{}`", item.job))));
        };
        let ckey = chunk_key(&item.run_id, item.chunk_index);
        if self.committer.ledger().get(&ckey).is_some() {
            // Started again ahead of its turn: stopped, and waited for so they do not outlive this
            // step (idempotent, so nothing changes either way).
            if let Some(a) = ahead {
                a.cancel().await;
            }
            tracing::info!(run_id = %item.run_id, chunk = item.chunk_index, "chunk already applied, work item ignored");
            return Ok(TxnPlan::offset_only());
        }
        let mut run = run_of(&item);
        run.attempt = self.committer.ledger().get(&run_key(&run.job, &run.period)).map(|e| e.attempt).unwrap_or(1);
        if item.chunk_index == SEAL {
            bookkeeping::seal(&self.env.db, &item.run_id, &item.job, &item.period, item.chunk_count, item.planned_at).await?;
            let finalized = bookkeeping::try_finalize(&self.env.db, &item.run_id, item.chunk_index).await?;
            let mut plan = TxnPlan::default();
            plan.out.push(Out::Ledger(ckey, ledger_entry(&run, RunEnd::of_chunks(ChunkOutcome::Applied, 0).state, item.chunk_count.max(0))));
            if let Some(f) = finalized {
                self.finish_run(&mut plan, job.as_ref(), &run, f).await?;
            }
            return Ok(plan);
        }
        self.apply_chunk(&run, item, job, ahead, rest).await
    }

    /// Applies chunk `item` of `run` (its attempt known): its effects — started ahead already,
    /// or now — then its records, its chunk ledger entry and, if it completes the run, the
    /// run's end. `rest`: the batch's records after this one, whose work items' effects start
    /// meanwhile.
    pub(super) async fn apply_chunk(
        &mut self,
        run: &Run,
        item: WorkItem,
        job: Arc<dyn Job>,
        ahead: Option<Ahead>,
        rest: &[OwnedMessage],
    ) -> Result<TxnPlan, ProcessorError> {
        let ckey = chunk_key(&item.run_id, item.chunk_index);
        let started = Instant::now();
        // The next chunks' effects overlap everything this one still has to do.
        self.start_ahead(rest, &ckey).await;
        let Effects { output, outcome, message } = match ahead {
            Some(a) => a.effects().await?,
            None => effects(self.env.db.clone(), self.env.instance.clone(), job.clone(), self.env.job_ctx(&item.job), item.clone()).await?,
        };
        let applied = started.elapsed();
        if let (ChunkOutcome::Applied | ChunkOutcome::TimedOut, Some(cursor)) = (outcome, output.more.clone()) {
            // A part that filled its transaction: its records and the chunk's continuation, no
            // chunk record yet (the chunk completes with its last part). A part stopped at the
            // deadline still has its records emitted: the continuation carries the fact.
            let mut counts = output.counts.clone();
            if outcome == ChunkOutcome::TimedOut {
                counts.insert(TIMED_OUT_PARTS.into(), 1);
            }
            let mut out = self.encode_events(output.records).await?;
            out.push(Out::WorkItem(continuation(&item, cursor, &counts)));
            tracing::debug!(run_id = %item.run_id, chunk = item.chunk_index, records = out.len() - 1, "chunk continues in another transaction");
            return Ok(TxnPlan { out, samples: Vec::new(), fault: Some((crate::runtime::fault::BEFORE_APPLY_COMMIT, item.job.clone())) });
        }
        let counts = carried(&item, &output.counts);
        let (outcome, message) = match counts.get(TIMED_OUT_PARTS) {
            Some(n) if *n > 0 && outcome == ChunkOutcome::Applied => {
                (ChunkOutcome::TimedOut, Some("run exceeded its timeout inside this chunk; what it did is emitted".to_string()))
            }
            _ => (outcome, message),
        };
        // The chunk's records are encoded while PostgreSQL records the chunk (the bookkeeping
        // future is polled first, so its query is in flight during encoding).
        let bookkeeping = async {
            bookkeeping::record_chunk(&self.env.db, &item.run_id, item.chunk_index, outcome, &counts, message.as_deref(), &self.env.instance).await?;
            bookkeeping::try_finalize(&self.env.db, &item.run_id, item.chunk_index).await
        };
        let (finalized, events) = tokio::join!(bookkeeping, self.encode_events(output.records));
        let (finalized, mut out) = (finalized?, events?);
        out.push(Out::Ledger(ckey, ledger_entry(run, RunEnd::of_chunks(outcome, 0).state, item.chunk_count.max(0))));
        let mut plan = TxnPlan { out, samples: Vec::new(), fault: Some((crate::runtime::fault::BEFORE_APPLY_COMMIT, item.job.clone())) };
        if let Some(f) = finalized {
            self.finish_run(&mut plan, job.as_ref(), run, f).await?;
        }
        plan.samples.push(Sample::Chunk {
            job: item.job.clone(),
            outcome: outcome.metric_label(),
            counts,
            seconds: started.elapsed().as_secs_f64(),
        });
        // Where a chunk's time goes before its transaction: its effects, then bookkeeping and
        // encoding (the wait for the previous commit and the sending are the committer's).
        tracing::debug!(
            run_id = %item.run_id, chunk = item.chunk_index,
            apply_ms = applied.as_millis() as u64,
            bookkeeping_ms = (started.elapsed() - applied).as_millis() as u64,
            "chunk timings"
        );
        Ok(plan)
    }

    /// Adds the end of a run this chunk completed: the run's ledger entry, the job's whole-run
    /// records and the run result. A job whose finalisation fails for good fails the run; a
    /// transient failure retries the record.
    async fn finish_run(&mut self, plan: &mut TxnPlan, job: &dyn Job, run: &Run, f: Finalized) -> Result<(), ProcessorError> {
        let mut end = RunEnd::of_chunks(f.outcome, f.chunk_count);
        let (mut counts, mut message) = (f.counts, f.message);
        match job.finalize(&self.env.job_ctx(&run.job), run).await {
            Ok(extra) => {
                plan.out.extend(self.encode_events(extra.records).await?);
                if !extra.counts.is_empty() {
                    plan.samples.push(Sample::Counts { job: run.job.clone(), counts: extra.counts.clone() });
                }
                counts.extend(extra.counts);
            }
            Err(e) if e.is_transient() => return Err(ProcessorError::Job { job: run.job.clone(), source: e }),
            Err(e) => {
                tracing::error!(run_id = %run.run_id, error = %e, "finalising the run failed");
                end = RunEnd::of_chunks(ChunkOutcome::Failed, f.chunk_count);
                message = Some(format!("finalising the run failed: {e}"));
            }
        }
        tracing::info!(job = %run.job, run_id = %run.run_id, outcome = end.outcome.as_str(), "run finished");
        plan.samples.extend(self.end_of_run(run, end.outcome, &mut counts, &mut message).await?);
        plan.out.push(Out::Ledger(run_key(&run.job, &run.period), ledger_entry(run, end.state, end.chunk_count)));
        plan.out.push(Out::Result(run_result(run, self.env.tz, end.outcome, counts, message)));
        let settings = self.env.job_settings(&run.job);
        if settings.overlap.buffers() {
            // The job's next waiting tick runs now: read what the planner buffered (on
            // whichever instance) before deciding.
            self.committer.catch_up_ledger(std::time::Duration::from_secs(30)).await?;
            plan.out.extend(super::overlap::release_next(self.committer.ledger(), &run.job, &settings, Some(&run.run_id), None));
        }
        Ok(())
    }

    /// A run's end in its job's failure streak ([`crate::runtime::streak`]): after a recovery
    /// the result says how many runs failed before it (`failedBefore`); the run that makes the
    /// streak reach `jobs.<job>.pause_after_failures` pauses the job and says so.
    pub(super) async fn end_of_run(
        &self,
        run: &Run,
        outcome: Outcome,
        counts: &mut BTreeMap<String, i64>,
        message: &mut Option<String>,
    ) -> Result<Vec<Sample>, ProcessorError> {
        let db = &self.env.db;
        let Some(streak) = crate::runtime::streak::record_end(db, &run.run_id, &run.job, outcome, message.as_deref()).await? else {
            return Ok(Vec::new());
        };
        let limit = i64::from(self.env.job_settings(&run.job).pause_after_failures);
        let note = if streak.now == 0 && streak.failed_before > 0 {
            counts.insert("failedBefore".into(), streak.failed_before);
            Some(format!("recovered after {} failed run(s) in a row", streak.failed_before))
        } else if limit > 0 && streak.now >= limit {
            crate::runtime::streak::pause_after(db, &run.job, streak.now, message.as_deref()).await?;
            tracing::warn!(job = %run.job, streak = streak.now, "job paused after consecutive failed runs");
            let key = crate::config::job_key(&run.job);
            Some(format!(
                "{} runs in a row failed: job paused (jobs.{key}.pause_after_failures = {limit}); `scheduled-jobs resume {}` when fixed",
                streak.now, run.job
            ))
        } else {
            None
        };
        if let Some(note) = note {
            *message = Some(match message.take() {
                Some(m) => format!("{m} | {note}"),
                None => note,
            });
        }
        Ok(vec![Sample::Streak { job: run.job.clone(), failures: streak.now }])
    }

    /// Encodes job records with their topics' latest schemas. The records of one topic share
    /// its name (a chunk's thousands of records name one or two topics).
    pub(super) async fn encode_events(&self, records: Vec<Emit>) -> Result<Vec<Out>, ProcessorError> {
        let mut out = Vec::with_capacity(records.len());
        let mut names: Vec<(Topic, Arc<str>)> = Vec::new();
        for rec in records {
            let topic = match names.iter().find(|(t, _)| *t == rec.topic) {
                Some((_, name)) => name.clone(),
                None => {
                    let name: Arc<str> = self.env.settings.topic(rec.topic).into();
                    names.push((rec.topic, name.clone()));
                    name
                }
            };
            let bytes = self.codec.encode_payload(&topic, rec.value).await?;
            out.push(Out::Event { topic, key: rec.key, bytes });
        }
        Ok(out)
    }

    /// The work item `m` carries, or why it goes to dead letters.
    async fn decode_work_item(&self, m: &OwnedMessage) -> Result<Result<WorkItem, Reject>, ProcessorError> {
        let Some(bytes) = m.payload() else {
            return Ok(Err(reject("UNDECODABLE", "empty work item")));
        };
        match self.codec.decode(bytes).await {
            Ok(d) => Ok(WorkItem::from_avro(d.value).map_err(|e| reject("WRONG_SCHEMA", e.to_string()))),
            Err(e) if e.class() == ErrorClass::Retry => Err(e.into()),
            Err(e) => Ok(Err(reject("UNDECODABLE", e.to_string()))),
        }
    }
}
