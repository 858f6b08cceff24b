//! `noop`: the trivial built-in job that exercises the whole pipeline (plan → work items →
//! apply → run result) with no effect outside Kafka. Parameters: `chunks` (default 1),
//! `apply_sleep_ms` (a chunk's work, cut by the run's deadline) and `plan_sleep_ms` (to
//! exercise timeouts), `fail` (chunk index that
//! fails, to exercise FAILED runs), `fail_finalize` (`true`: the whole-run step fails).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{ChunkOutput, Job, JobCtx, JobError, JobSettings, Run};
use crate::wire::internal::WorkItem;

pub struct Noop;

fn param<T: std::str::FromStr>(params: &std::collections::BTreeMap<String, String>, name: &str, default: T) -> Result<T, JobError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| JobError::InvalidTick(format!("parameter `{name}` = `{v}` is not valid"))),
    }
}

impl Job for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    /// Never scheduled: triggered by tests and by hand.
    fn defaults(&self) -> JobSettings {
        JobSettings { timeout_secs: 60, ..JobSettings::default() }
    }

    fn validate(&self, tick: &crate::wire::tick::Tick) -> Result<(), JobError> {
        let p = &tick.parameters;
        let chunks = param::<u32>(p, "chunks", 1)?;
        if chunks > 100_000 {
            return Err(JobError::InvalidTick(format!("parameter `chunks` = {chunks} exceeds 100000")));
        }
        param::<u64>(p, "plan_sleep_ms", 0)?;
        param::<u64>(p, "apply_sleep_ms", 0)?;
        param::<i32>(p, "fail", -1)?;
        param::<bool>(p, "fail_finalize", false)?;
        Ok(())
    }

    fn plan<'a>(&'a self, _ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        let params = &run.tick.parameters;
        let setup = (param::<u32>(params, "chunks", 1), param::<u64>(params, "plan_sleep_ms", 0));
        futures::stream::once(async move {
            let (chunks, sleep) = (setup.0?, setup.1?);
            if chunks > 100_000 {
                return Err(JobError::InvalidTick(format!("parameter `chunks` = {chunks} exceeds 100000")));
            }
            if sleep > 0 {
                tokio::time::sleep(Duration::from_millis(sleep)).await;
            }
            Ok((0..chunks).map(|i| Ok(vec![format!("noop-{i}")])).collect::<Vec<_>>())
        })
        .flat_map(|r| match r {
            Ok(chunks) => futures::stream::iter(chunks).boxed(),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        })
        .boxed()
    }

    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(async move {
            let sleep = param::<u64>(&item.parameters, "apply_sleep_ms", 0)?;
            // The sleep stands for a chunk's work: the run's deadline cuts it (no effect, so
            // nothing to emit).
            ctx.deadline.check()?;
            if sleep > 0 {
                ctx.deadline.sleep_until(tokio::time::Instant::now() + Duration::from_millis(sleep)).await?;
            }
            if param::<i32>(&item.parameters, "fail", -1)? == item.chunk_index {
                return Err(JobError::Failed(format!("chunk {} failed on request (parameter `fail`)", item.chunk_index)));
            }
            let mut out = ChunkOutput::default();
            out.counts.insert("items".into(), item.ids.len() as i64);
            Ok(out)
        })
    }

    fn finalize<'a>(&'a self, _ctx: &'a JobCtx, run: &'a Run) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(async move {
            if param::<bool>(&run.tick.parameters, "fail_finalize", false)? {
                return Err(JobError::Failed("finalize failed on request (parameter `fail_finalize`)".into()));
            }
            Ok(ChunkOutput::default())
        })
    }
}
