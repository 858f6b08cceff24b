//! `noop`: the trivial built-in job that exercises the whole pipeline (plan → work items →
//! apply → run result) with no effect outside Kafka. Parameters: `chunks` (default 1),
//! `apply_sleep_ms` (a chunk's work, cut by the run's deadline) and `plan_sleep_ms` (to
//! exercise timeouts), `fail` (chunk index that
//! fails, to exercise FAILED runs), `fail_finalize` (`true`: the whole-run step fails).
//!
//! A test job, not part of a production configuration: off unless the configuration says
//! `jobs.noop.enabled = true`. Until then `config show` and job lists leave it out, `trigger
//! noop` is refused saying how to enable it, and a noop tick is recorded SKIPPED.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{parses, true_or_false, ChunkOutput, Job, JobCtx, JobError, JobSettings, Overlap, Parameter, Run};
use crate::wire::internal::WorkItem;

pub struct Noop;

/// Most chunks one run may ask for.
const MAX_CHUNKS: u32 = 100_000;

const PARAMETERS: [Parameter; 5] = [
    Parameter { name: "chunks", about: "how many one-id chunks the run has (default 1, at most 100000)", check: check_chunks },
    Parameter { name: "plan_sleep_ms", about: "milliseconds planning sleeps", check: parses::<u64> },
    Parameter { name: "apply_sleep_ms", about: "milliseconds each chunk sleeps", check: parses::<u64> },
    Parameter { name: "fail", about: "index of the chunk that fails", check: parses::<i32> },
    Parameter { name: "fail_finalize", about: "true: the whole-run step fails", check: true_or_false },
];

fn check_chunks(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if n > MAX_CHUNKS => Err(format!("exceeds {MAX_CHUNKS}")),
        Ok(_) => Ok(()),
        Err(_) => Err("expected a whole number from 0 to 100000".into()),
    }
}

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

    /// Never scheduled, and off unless a configuration enables it (`jobs.noop.enabled =
    /// true`): a test job, not part of a production configuration. Its runs overlap unless a
    /// test sets a policy (tests publish many ticks at once).
    fn defaults(&self) -> JobSettings {
        JobSettings { enabled: false, timeout_secs: 60, overlap: Overlap::AllowAll, ..JobSettings::default() }
    }

    fn parameters(&self) -> &'static [Parameter] {
        &PARAMETERS
    }

    fn plan<'a>(&'a self, _ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        let params = &run.tick.parameters;
        let setup = (param::<u32>(params, "chunks", 1), param::<u64>(params, "plan_sleep_ms", 0));
        futures::stream::once(async move {
            let (chunks, sleep) = (setup.0?, setup.1?);
            if chunks > MAX_CHUNKS {
                return Err(JobError::InvalidTick(format!("parameter `chunks` = {chunks} exceeds {MAX_CHUNKS}")));
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
