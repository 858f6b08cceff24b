//! Applying: a work item's chunk gets its job's idempotent effects, its records, a chunk
//! ledger entry and its offset in one transaction; the chunk that completes the run also
//! writes the run result.

use std::sync::Arc;

use chrono::Utc;
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use super::bookkeeping::{self, ChunkOutcome};
use super::ledger::{chunk_key, run_key};
use super::{record_span, record_work_item, reject, Processor, ProcessorError, SEAL};
use crate::error::ErrorClass;
use crate::jobs::{ChunkOutput, Job, JobCtx, Run};
use crate::wire::internal::{Outcome, RunState, WorkItem};
use crate::wire::tick::{Tick, Trigger};

/// What a chunk's effects came to: the records to emit and how the chunk ended.
pub(super) struct Effects {
    output: ChunkOutput,
    outcome: ChunkOutcome,
    message: Option<String>,
}

/// A chunk's effects — marked started, then applied by its job unless its run is past its
/// deadline — with owned inputs, so they can run as a task of their own ahead of their turn.
///
/// The deadline is checked before a chunk starts, never during, and never again once it has
/// started: a chunk whose effects may have begun (an earlier attempt whose commit failed)
/// always completes them and emits what they imply.
async fn effects(db: sqlx::PgPool, instance: String, job: Arc<dyn Job>, ctx: JobCtx, item: WorkItem) -> Result<Effects, ProcessorError> {
    let timeout_secs = ctx.settings.timeout_secs;
    let deadline = item.planned_at + chrono::TimeDelta::seconds(timeout_secs as i64);
    let timed_out = match bookkeeping::start_chunk(&db, &item.run_id, item.chunk_index, &instance, Utc::now() > deadline).await? {
        bookkeeping::Start::Fresh => false,
        bookkeeping::Start::Again(previous) => previous == ChunkOutcome::TimedOut,
        bookkeeping::Start::PastDeadline => true,
    };
    if timed_out {
        let message = Some(format!("run exceeded its timeout of {timeout_secs} s"));
        return Ok(Effects { output: ChunkOutput::default(), outcome: ChunkOutcome::TimedOut, message });
    }
    match job.apply(&ctx, &item).await {
        Ok(output) => Ok(Effects { output, outcome: ChunkOutcome::Applied, message: None }),
        Err(e) if e.class() == ErrorClass::Retry => Err(ProcessorError::Job { job: item.job.clone(), source: e }),
        Err(e) => {
            tracing::error!(run_id = %item.run_id, chunk = item.chunk_index, error = %e, "chunk failed");
            Ok(Effects { output: ChunkOutput::default(), outcome: ChunkOutcome::Failed, message: Some(e.to_string()) })
        }
    }
}

/// A later work item of the batch whose effects run while the current one is applied (see
/// [`Processor::apply_ahead`]). Dropping it stops them at their next await point, as a crash
/// would, so they never outlive the step that started them.
pub(super) struct Ahead {
    /// The record it belongs to: topic, partition, offset.
    at: (String, i32, i64),
    /// That record's work item, decoded once.
    item: WorkItem,
    task: tokio::task::JoinHandle<Result<Effects, ProcessorError>>,
}

impl Ahead {
    /// A job that panics takes the processor down as it would applying in turn (a panic is a
    /// bug, not something to retry).
    async fn effects(mut self) -> Result<Effects, ProcessorError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ProcessorError::Task(e.to_string())),
        }
    }

    /// Stops the effects and waits until they have stopped.
    async fn cancel(mut self) {
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
    /// Stops effects started ahead, if any, and waits until they have: their record will be
    /// consumed again (reset, shutdown) and their effects are idempotent — stopped part-way,
    /// as by a crash, they are completed by the retry — but they must never run beside it.
    pub(super) async fn cancel_ahead(&mut self) {
        if let Some(a) = self.ahead.take() {
            a.cancel().await;
        }
    }

    /// Starts the effects of `next` (the batch's next work item) as a task of their own, so
    /// they overlap the current chunk's bookkeeping, encoding and sending. Safe because
    /// effects may always run before their Kafka commit (a crash does the same) and are
    /// idempotent; skipped when `next` is the chunk being handled (a duplicate) or already
    /// applied, and for anything that is not a plain chunk — those are handled in turn.
    async fn apply_ahead(&mut self, next: &OwnedMessage, current: &str) {
        if next.topic() != self.names.work_items || self.ahead.is_some() {
            return;
        }
        let Some(item) = (match next.payload() {
            Some(bytes) => self.codec.decode(bytes).await.ok().and_then(|d| WorkItem::from_avro(d.value).ok()),
            None => None,
        }) else {
            return;
        };
        let key = chunk_key(&item.run_id, item.chunk_index);
        let Some(job) = self.jobs.get(&item.job).cloned() else { return };
        if item.chunk_index == SEAL || key == current || self.ledger.get(&key).is_some() {
            return;
        }
        let span = record_span(next);
        record_work_item(&span, &item);
        let ctx = self.job_ctx(&item.job);
        let task = tokio::spawn(effects(self.db.clone(), self.instance.clone(), job, ctx, item.clone()).instrument(span));
        self.ahead = Some(Ahead { at: position(next), item, task });
    }

    /// `next` is the batch's next work item, if any, whose effects may start ahead. Effects
    /// started ahead for a record are stopped if that record fails (by the reset path) or
    /// turns out not to be the one handled next (here).
    pub(super) async fn handle_work_item(&mut self, m: &OwnedMessage, next: Option<&OwnedMessage>) -> Result<(), ProcessorError> {
        if self.ahead.as_ref().is_some_and(|a| a.at != position(m)) {
            self.cancel_ahead().await;
        }
        let item = match &self.ahead {
            // Decoded when its effects were started.
            Some(a) => a.item.clone(),
            None => {
                let Some(bytes) = m.payload() else {
                    return self.dead_letter(m, reject("UNDECODABLE", "empty work item")).await;
                };
                match self.codec.decode(bytes).await {
                    Ok(d) => match WorkItem::from_avro(d.value) {
                        Ok(i) => i,
                        Err(e) => return self.dead_letter(m, reject("WRONG_SCHEMA", e.to_string())).await,
                    },
                    Err(e) if e.class() == ErrorClass::Retry => return Err(e.into()),
                    Err(e) => return self.dead_letter(m, reject("UNDECODABLE", e.to_string())).await,
                }
            }
        };
        record_work_item(&tracing::Span::current(), &item);
        let Some(job) = self.jobs.get(&item.job).cloned() else {
            return self.dead_letter(m, reject("UNKNOWN_JOB", format!("work item of unknown job `{}`", item.job))).await;
        };
        let ckey = chunk_key(&item.run_id, item.chunk_index);
        if self.ledger.get(&ckey).is_some() {
            // Started again ahead of its turn: stopped (idempotent, so nothing changes either way).
            self.cancel_ahead().await;
            tracing::info!(run_id = %item.run_id, chunk = item.chunk_index, "chunk already applied, work item ignored");
            return self.commit_offset_only(m).await;
        }

        let started = std::time::Instant::now();
        let mut chunk_sample = None;
        // (start + apply, + bookkeeping and encoding) for the debug timing line.
        let mut prepared = None;
        let (output, state, finalized) = if item.chunk_index == SEAL {
            bookkeeping::seal(&self.db, &item.run_id, &item.job, &item.period, item.chunk_count, item.planned_at).await?;
            let finalized = bookkeeping::try_finalize(&self.db, &item.run_id, item.chunk_index).await?;
            (Vec::new(), RunState::Done, finalized)
        } else {
            let mine = self.ahead.take();
            // The next chunk's effects overlap everything this one still has to do.
            if let Some(next) = next {
                self.apply_ahead(next, &ckey).await;
            }
            let Effects { output, outcome, message } = match mine {
                Some(a) => a.effects().await?,
                None => effects(self.db.clone(), self.instance.clone(), job.clone(), self.job_ctx(&item.job), item.clone()).await?,
            };
            // The chunk's records are encoded while PostgreSQL records the chunk (the
            // bookkeeping future is polled first, so its query is in flight during encoding).
            let bookkeeping = async {
                bookkeeping::record_chunk(&self.db, &item.run_id, item.chunk_index, outcome, &output.counts, message.as_deref(), &self.instance)
                    .await?;
                bookkeeping::try_finalize(&self.db, &item.run_id, item.chunk_index).await
            };
            let applied = started.elapsed();
            let (finalized, encoded) = tokio::join!(bookkeeping, self.encode_emits(output.records));
            prepared = Some((applied, started.elapsed()));
            chunk_sample = Some((outcome.metric_label(), output.counts));
            let state = match outcome {
                ChunkOutcome::Applied => RunState::Done,
                ChunkOutcome::TimedOut => RunState::TimedOut,
                ChunkOutcome::Failed | ChunkOutcome::Started => RunState::Failed,
            };
            (encoded?, state, finalized?)
        };

        self.begin().await?;
        let begun = started.elapsed();
        self.send_encoded(output).await?;
        let run = Run {
            run_id: item.run_id.clone(),
            job: item.job.clone(),
            period: item.period.clone(),
            attempt: 0,
            tick: Tick {
                tick_id: item.tick_id.clone(),
                job: item.job.clone(),
                scheduled_at: item.scheduled_at,
                produced_at: item.planned_at,
                trigger: Trigger::parse(&item.trigger).unwrap_or(Trigger::Scheduled),
                parameters: item.parameters.clone(),
                producer: None,
            },
            planned_at: item.planned_at,
        };
        let chunk_entry = self.ledger_entry(&run, state, item.chunk_count.max(0));
        self.send_ledger(&ckey, &chunk_entry).await?;
        let mut run_entry = None;
        if let Some(f) = finalized {
            let (state, outcome) = match f.outcome {
                ChunkOutcome::Applied => (RunState::Done, Outcome::Succeeded),
                ChunkOutcome::TimedOut => (RunState::TimedOut, Outcome::TimedOut),
                ChunkOutcome::Failed | ChunkOutcome::Started => (RunState::Failed, Outcome::Failed),
            };
            let rkey = run_key(&item.job, &item.period);
            let mut entry = self.ledger_entry(&run, state, f.chunk_count);
            entry.attempt = self.ledger.get(&rkey).map(|e| e.attempt).unwrap_or(1);
            self.send_ledger(&rkey, &entry).await?;
            let ctx = self.job_ctx(&item.job);
            let extra = job.finalize(&ctx, &run).await.map_err(|source| ProcessorError::Job { job: item.job.clone(), source })?;
            let records = self.encode_emits(extra.records).await?;
            self.send_encoded(records).await?;
            let mut counts = f.counts;
            if !extra.counts.is_empty() {
                self.pending.push(crate::metrics::Sample::Counts { job: item.job.clone(), counts: extra.counts.clone() });
            }
            counts.extend(extra.counts);
            let result = self.run_result(&run, outcome, counts, f.message);
            self.send_result(&result).await?;
            tracing::info!(job = %item.job, run_id = %item.run_id, outcome = outcome.as_str(), "run finished");
            run_entry = Some((rkey, entry));
        }
        if let Some((outcome, counts)) = chunk_sample {
            self.pending.push(crate::metrics::Sample::Chunk {
                job: item.job.clone(),
                outcome,
                counts,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        if item.chunk_index != SEAL {
            crate::fault::point(crate::fault::BEFORE_APPLY_COMMIT, &item.job);
        }
        self.commit(m).await?;
        if let Some((applied, encoded)) = prepared {
            // Where a chunk's time goes: its effects, then bookkeeping and encoding, then the
            // wait for the previous record's Kafka commit, then queueing its records.
            tracing::debug!(
                run_id = %item.run_id, chunk = item.chunk_index,
                apply_ms = applied.as_millis() as u64,
                bookkeeping_ms = (encoded - applied).as_millis() as u64,
                commit_wait_ms = (begun - encoded).as_millis() as u64,
                send_ms = (started.elapsed() - begun).as_millis() as u64,
                "chunk timings"
            );
        }
        self.write_through(ckey, chunk_entry);
        if let Some((k, e)) = run_entry {
            self.write_through(k, e);
        }
        Ok(())
    }

}
