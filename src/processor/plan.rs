//! Planning: a tick becomes a run — checked against the ledger, its job's chunks written as
//! work items with a seal, a `PLANNED` entry and the tick's offset, in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use rdkafka::message::{Message, OwnedMessage};

use super::ledger::run_key;
use super::{reject, Processor, ProcessorError, Reject, SEAL};
use crate::error::ErrorClass;
use crate::jobs::{Job, JobError, Run};
use crate::wire::derived_id;
use crate::wire::internal::{Outcome, RunState, WorkItem};
use crate::wire::tick::{Tick, Trigger};
use crate::wire::WireError;

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

    /// Checks a decoded tick against what this processor can run.
    pub(super) fn validate_tick(&self, tick: &Tick) -> Result<(Arc<dyn Job>, String), Reject> {
        let job = self.jobs.get(&tick.job).cloned().ok_or_else(|| {
            reject("UNKNOWN_JOB", format!("unknown job `{}` (known: {})", tick.job, self.jobs.names().join(", ")))
        })?;
        let now = Utc::now();
        let horizon = now + chrono::TimeDelta::seconds(self.settings.processor.max_future_secs as i64);
        if tick.scheduled_at > horizon {
            return Err(reject(
                "IMPOSSIBLE_VALUE",
                format!(
                    "scheduledAt {} is more than {} s in the future",
                    tick.scheduled_at.to_rfc3339(),
                    self.settings.processor.max_future_secs
                ),
            ));
        }
        if tick.scheduled_at.timestamp() < 946_684_800 {
            return Err(reject("IMPOSSIBLE_VALUE", format!("scheduledAt {} is before 2000", tick.scheduled_at.to_rfc3339())));
        }
        job.validate(tick).map_err(|e| reject("IMPOSSIBLE_VALUE", e.to_string()))?;
        let period = job.period(tick, self.tz).map_err(|e| reject("IMPOSSIBLE_VALUE", e.to_string()))?;
        Ok((job, period))
    }

    pub(super) async fn handle_tick(
        &mut self,
        m: &OwnedMessage,
        decoded: Result<Tick, Reject>,
        superseded_by: Option<Tick>,
    ) -> Result<(), ProcessorError> {
        let tick = match decoded {
            Ok(t) => t,
            Err(r) => return self.dead_letter(m, r).await,
        };
        let span = tracing::Span::current();
        span.record("job", tick.job.as_str());
        span.record("tick_id", tick.tick_id.as_str());
        let (job, period) = match self.validate_tick(&tick) {
            Ok(v) => v,
            Err(r) => return self.dead_letter(m, r).await,
        };
        let key = run_key(&tick.job, &period);
        let forced = tick.trigger == Trigger::Manual && tick.parameters.get("force").is_some_and(|v| v == "true");
        let attempt = match self.ledger.get(&key) {
            Some(prev) if forced => prev.attempt + 1,
            Some(prev) => {
                tracing::info!(job = %tick.job, period = %period, tick_id = %tick.tick_id, state = prev.state.as_str(), "run already recorded, tick ignored");
                return self.commit_offset_only(m).await;
            }
            None => 1,
        };
        let run = Run {
            run_id: derived_id(&["run", &tick.job, &period, &attempt.to_string()]).to_string(),
            job: tick.job.clone(),
            period: period.clone(),
            attempt,
            tick: tick.clone(),
            planned_at: Utc::now(),
        };
        span.record("run_id", run.run_id.as_str());
        if let Some(newer) = superseded_by {
            let message = format!("superseded by tick {} for {}", newer.tick_id, newer.scheduled_at.to_rfc3339());
            tracing::info!(job = %run.job, period = %run.period, "{message}");
            return self.finish_without_chunks(m, &run, RunState::Skipped, Outcome::Skipped, Some(message)).await;
        }
        if let Some(pause) = crate::control::paused(&self.db, &run.job).await? {
            return self.skip_paused(m, &run, pause).await;
        }
        if !self.job_settings(&run.job).enabled {
            return self.finish_without_chunks(m, &run, RunState::Skipped, Outcome::Skipped, Some("job disabled".into())).await;
        }
        tracing::info!(job = %run.job, period = %run.period, run_id = %run.run_id, tick_id = %tick.tick_id, trigger = tick.trigger.as_str(), "planning run");
        let timeout = Duration::from_secs(self.job_settings(&run.job).timeout_secs);
        self.begin().await?;
        let planned = tokio::time::timeout(timeout, self.plan(job.as_ref(), &run)).await;
        match planned {
            Err(_) => {
                self.txn.abort()?;
                let message = format!("planning exceeded the job timeout of {} s", timeout.as_secs());
                self.finish_without_chunks(m, &run, RunState::TimedOut, Outcome::TimedOut, Some(message)).await
            }
            Ok(Err(ProcessorError::Job { source: JobError::InvalidTick(reason), .. })) => {
                self.txn.abort()?;
                self.dead_letter(m, reject("IMPOSSIBLE_VALUE", reason)).await
            }
            Ok(Err(ProcessorError::Job { source: JobError::Failed(reason), .. })) => {
                self.txn.abort()?;
                self.finish_without_chunks(m, &run, RunState::Failed, Outcome::Failed, Some(reason)).await
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(0)) => {
                // Nothing to do: the run is complete with its plan.
                let entry = self.ledger_entry(&run, RunState::Done, 0);
                self.send_ledger(&key, &entry).await?;
                let result = self.run_result(&run, Outcome::Succeeded, BTreeMap::from([("chunks".to_string(), 0)]), None);
                self.send_result(&result).await?;
                self.commit(m).await?;
                self.write_through(key, entry);
                Ok(())
            }
            Ok(Ok(chunks)) => {
                let entry = self.ledger_entry(&run, RunState::Planned, chunks);
                self.send_ledger(&key, &entry).await?;
                crate::fault::point(crate::fault::BEFORE_PLAN_COMMIT, &run.job);
                self.commit(m).await?;
                self.write_through(key, entry);
                tracing::info!(job = %run.job, run_id = %run.run_id, chunks, "run planned");
                Ok(())
            }
        }
    }

    /// A paused job's tick: committed with a SKIPPED result under a run id of its own tick,
    /// and no ledger entry, so the period stays runnable after `resume`.
    async fn skip_paused(&mut self, m: &OwnedMessage, run: &Run, pause: crate::control::Pause) -> Result<(), ProcessorError> {
        let mut run = run.clone();
        run.run_id = derived_id(&["paused", &run.tick.tick_id]).to_string();
        tracing::info!(job = %run.job, period = %run.period, tick_id = %run.tick.tick_id, paused_by = %pause.paused_by, "job paused, tick skipped");
        self.begin().await?;
        let result = self.run_result(&run, Outcome::Skipped, BTreeMap::new(), Some(pause.message()));
        self.send_result(&result).await?;
        self.commit(m).await
    }

    /// Streams the job's chunks into the open transaction as work items, then the seal.
    pub(super) async fn plan(&mut self, job: &dyn Job, run: &Run) -> Result<i32, ProcessorError> {
        let ctx = self.job_ctx(&run.job);
        let mut chunks = job.plan(&ctx, run);
        let mut index = 0i32;
        while let Some(chunk) = chunks.next().await {
            let ids = chunk.map_err(|source| ProcessorError::Job { job: run.job.clone(), source })?;
            let item = self.work_item(run, index, ids);
            self.send_work_item(&item).await?;
            index += 1;
        }
        if index > 0 {
            let mut seal = self.work_item(run, SEAL, Vec::new());
            seal.chunk_count = index;
            self.send_work_item(&seal).await?;
        }
        Ok(index)
    }

    pub(super) fn work_item(&self, run: &Run, index: i32, ids: Vec<String>) -> WorkItem {
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
        }
    }

    pub(super) async fn send_work_item(&mut self, item: &WorkItem) -> Result<(), ProcessorError> {
        let bytes = self.codec.encode(&self.names.work_items, item.to_avro()).await?;
        let topic = self.names.work_items.clone();
        self.txn.send(&topic, &item.key(), &bytes).await?;
        Ok(())
    }

}
