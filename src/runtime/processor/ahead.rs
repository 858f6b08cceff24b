//! A chunk's effects under its run's deadline ([`effects`]), and effects ahead: while a work
//! item is applied, the batch's next work items (up to `processor.effects_ahead` of them) have
//! their effects started as tasks of their own, so several chunks' database and Redis round
//! trips overlap. Safe for the reason the whole design is: effects are idempotent, keyed by
//! their decision, and may precede their Kafka commit (a crash does the same). Kafka still
//! sees the records, and their offsets, strictly in order: only the effects run early.
//!
//! Effects ahead never outlive the step that started them nor run beside a retry of their
//! record: on a failed record, on shutdown, at the end of the batch, or when a record after
//! theirs is handled first, they are stopped at their next await (as a crash would stop
//! them) and waited for. Everything about them lives here.
//!
//! A statement stopped at its await may still run to its end in PostgreSQL (idempotent, as
//! above). Its connection is not reused half-way: sqlx 0.8 pings a connection returned to the
//! pool, which first reads the stopped statement's answers up to its `ReadyForQuery`, and closes
//! it if that fails; a dropped transaction is rolled back, and a dropped `COPY` sends `CopyFail`
//! (sqlx-core `pool/connection.rs` `return_to_pool`, sqlx-postgres `wait_until_ready`,
//! `PgCopyIn`'s `Drop`). One await is not covered by sqlx: a transaction stopped while its
//! BEGIN is in flight is not rolled back, so jobs begin theirs with [`crate::db::begin`],
//! which lets the BEGIN finish and the transaction be dropped.

use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use super::bookkeeping::{self, ChunkOutcome};
use super::ledger::chunk_key;
use super::run::SEAL;
use super::{record_span, record_work_item, Processor, ProcessorError};
use crate::jobs::{ChunkOutput, Deadline, Job, JobCtx, JobError};
use crate::wire::internal::WorkItem;

/// What a chunk's effects came to: the records to emit and how the chunk ended.
pub(super) struct Effects {
    pub output: ChunkOutput,
    pub outcome: ChunkOutcome,
    pub message: Option<String>,
}

/// A chunk's effects — marked started, then applied by its job under the run's deadline
/// unless the run is already past it — with owned inputs, so they can run as a task of their
/// own ahead of their turn.
///
/// The deadline (planned time + the job's `timeout_secs`, a [`Deadline`] in the job's
/// context) holds inside the chunk: SQL statements, Redis commands and the job's loops stop at
/// it, and the job reports [`JobError::DeadlineReached`] with what its effects so far imply;
/// the chunk is recorded TIMED_OUT and those records are emitted, so no effect is left
/// without its event. Which deadline an attempt gets:
/// - a first attempt within the deadline: the deadline;
/// - a first attempt past it: none started, TIMED_OUT, nothing emitted (no effect happened);
/// - a first attempt of a run cancelled by a newer tick (`overlap = cancel_other`): none
///   started, CANCELLED, nothing emitted;
/// - a retry (an earlier attempt's Kafka transaction did not commit) of a chunk recorded
///   STARTED, APPLIED or FAILED: its effects may have begun, so past the deadline it runs
///   without a limit and completes them, emitting what they imply (within the deadline it
///   keeps the deadline); one recorded APPLIED has completed them, so the job is told
///   ([`JobCtx::effects_done`]) and the chunk keeps its recorded counts;
/// - a retry of a chunk recorded TIMED_OUT: under the (passed) deadline, so the job starts
///   nothing new and emits what the cut attempt did, recorded TIMED_OUT again.
///
/// A job error that is not transient fails the chunk (and so the run); a transient one is
/// returned and the record is retried.
pub(super) async fn effects(db: sqlx::PgPool, instance: String, job: Arc<dyn Job>, mut ctx: JobCtx, item: WorkItem) -> Result<Effects, ProcessorError> {
    let timeout_secs = ctx.settings.timeout_secs;
    let deadline = Deadline::of_run(item.planned_at, timeout_secs);
    let past = deadline.passed();
    let start = bookkeeping::start_chunk(&db, &item.run_id, item.chunk_index, &instance, past).await?;
    ctx.effects_done = start == bookkeeping::Start::Again(ChunkOutcome::Applied);
    ctx.deadline = match start {
        bookkeeping::Start::Fresh => deadline,
        bookkeeping::Start::Again(ChunkOutcome::TimedOut) => deadline,
        bookkeeping::Start::Again(_) if past => Deadline::none(),
        bookkeeping::Start::Again(_) => deadline,
        bookkeeping::Start::PastDeadline => {
            let message = Some(format!("run exceeded its timeout of {timeout_secs} s before this chunk started"));
            return Ok(Effects { output: ChunkOutput::default(), outcome: ChunkOutcome::TimedOut, message });
        }
        bookkeeping::Start::Cancelled { reason } => {
            tracing::info!(run_id = %item.run_id, chunk = item.chunk_index, "run cancelled, chunk not started");
            return Ok(Effects { output: ChunkOutput::default(), outcome: ChunkOutcome::Cancelled, message: Some(reason) });
        }
    };
    match job.apply(&ctx, &item).await {
        Ok(mut output) => {
            if ctx.effects_done && item.resume_after.is_none() {
                // The counts describe the effects, which the earlier attempt made (its totals,
                // carried on through any continuation; a continuation adds its own part to
                // what it carries, so it keeps the counts it returns).
                if let Some(counts) = bookkeeping::chunk_counts(&db, &item.run_id, item.chunk_index).await? {
                    output.counts = counts;
                }
            }
            Ok(Effects { output, outcome: ChunkOutcome::Applied, message: None })
        }
        Err(JobError::DeadlineReached(done)) => {
            tracing::warn!(run_id = %item.run_id, chunk = item.chunk_index, records = done.records.len(), "chunk stopped at the run's deadline");
            let message = Some(format!("run exceeded its timeout of {timeout_secs} s inside this chunk; what it did is emitted"));
            Ok(Effects { output: *done, outcome: ChunkOutcome::TimedOut, message })
        }
        Err(e) if e.is_transient() => Err(ProcessorError::Job { job: item.job.clone(), source: e }),
        Err(e) => {
            tracing::error!(run_id = %item.run_id, chunk = item.chunk_index, error = %e, "chunk failed");
            Ok(Effects { output: ChunkOutput::default(), outcome: ChunkOutcome::Failed, message: Some(e.to_string()) })
        }
    }
}

/// A later work item of the batch whose effects run while the current one is applied.
/// Dropping it stops them at their next await point, as a crash would.
pub(super) struct Ahead {
    /// The record it belongs to: topic, partition, offset.
    at: (String, i32, i64),
    /// That record's work item, decoded once.
    pub item: WorkItem,
    task: tokio::task::JoinHandle<Result<Effects, ProcessorError>>,
}

impl Ahead {
    /// A job that panics takes the processor down as it would applying in turn (a panic is a
    /// bug, not something to retry).
    pub async fn effects(mut self) -> Result<Effects, ProcessorError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ProcessorError::Task(e.to_string())),
        }
    }

    /// Stops the effects and waits until they have stopped.
    pub async fn cancel(mut self) {
        // Their work, finished or not, is thrown away (and done again if the record is handled
        // again): rare by design (a reset, a shutdown, a record handled another way), so worth
        // a line.
        let finished = self.task.is_finished();
        tracing::info!(run_id = %self.item.run_id, chunk = self.item.chunk_index, finished, "effects started ahead stopped before their record was handled");
        self.task.abort();
        match (&mut self.task).await {
            Ok(Err(e)) => tracing::debug!(error = %e, "effects started ahead failed; their record will be handled again"),
            Err(e) if e.is_panic() => tracing::warn!(error = %e, "effects started ahead panicked; their record will be handled again"),
            _ => {}
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn position(m: &OwnedMessage) -> (String, i32, i64) {
    (m.topic().to_string(), m.partition(), m.offset())
}

impl Processor {
    /// Stops every effect started ahead and waits until they have: their records will be
    /// consumed again (reset, shutdown) or were not handled (the batch ended) and must never
    /// run beside a later attempt.
    pub(super) async fn cancel_ahead(&mut self) {
        while let Some(a) = self.ahead.pop_front() {
            a.cancel().await;
        }
    }

    /// The effects started ahead for `m`, if they were. Those started for records before it
    /// (passed over: handled in another way) are stopped; those for records after it stay.
    pub(super) async fn take_ahead(&mut self, m: &OwnedMessage) -> Option<Ahead> {
        let at = position(m);
        let i = self.ahead.iter().position(|a| a.at == at)?;
        for stale in self.ahead.drain(..i).collect::<Vec<_>>() {
            stale.cancel().await;
        }
        self.ahead.pop_front()
    }

    /// Starts the effects of the batch's next work items in `rest` (the records after the
    /// current one), up to `processor.effects_ahead` started at a time, each as a task of its
    /// own, so they overlap the current chunk's. A work item is skipped when it is the chunk
    /// being handled or one already ahead (a duplicate), already applied, or not a plain chunk
    /// of a known job: those are handled in turn.
    pub(super) async fn start_ahead(&mut self, rest: &[OwnedMessage], current: &str) {
        let limit = self.env.settings.processor.effects_ahead as usize;
        for next in rest.iter().filter(|n| n.topic() == self.names.work_items).take(limit) {
            if self.ahead.len() >= limit {
                return;
            }
            if self.ahead.iter().any(|a| a.at == position(next)) {
                continue;
            }
            let Some(item) = (match next.payload() {
                Some(bytes) => self.codec.decode(bytes).await.ok().and_then(|d| WorkItem::from_avro(d.value).ok()),
                None => None,
            }) else {
                continue;
            };
            let key = chunk_key(&item.run_id, item.chunk_index);
            let Some(job) = self.jobs.get(&item.job).cloned() else { continue };
            let queued = self.ahead.iter().any(|a| a.item.run_id == item.run_id && a.item.chunk_index == item.chunk_index);
            if item.chunk_index == SEAL || key == current || queued || self.committer.ledger().get(&key).is_some() {
                continue;
            }
            let span = record_span(next);
            record_work_item(&span, &item);
            let ctx = self.env.job_ctx(&item.job);
            let task = tokio::spawn(effects(self.env.db.clone(), self.env.instance.clone(), job, ctx, item.clone()).instrument(span));
            // In record order: `rest` is, and every entry already queued is for a record before
            // the ones not yet started.
            self.ahead.push_back(Ahead { at: position(next), item, task });
        }
    }
}
