//! The job interface: each job is one module behind [`Job`], picked by name from a tick.
//!
//! A job does two things. `plan` turns a run into a stream of fixed chunks of ids, reading
//! only (no effects), so it can be abandoned at any point. `apply` performs one chunk's
//! effects outside Kafka — idempotently, keyed by the decision (run and ids) — and returns
//! the records to emit, derived from durable state, so re-applying a chunk after a crash
//! emits the same records. The processor writes those records in the Kafka transaction that
//! commits the chunk; it owns all transaction plumbing, jobs own none.

pub mod daily_statistics;
pub mod deadline;
pub mod noop;
pub mod order_expiration;
pub mod report;
pub mod settings;
pub mod stock;
pub mod stock_sync;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use deadline::Deadline;
pub use settings::{CatchUp, JobSettings, Overlap};
pub use crate::wire::Emit;
use crate::error::ErrorClass;
use crate::wire::internal::WorkItem;
use crate::wire::tick::Tick;

/// A run: one job for one logical period (e.g. one fire time, or one date).
#[derive(Debug, Clone)]
pub struct Run {
    pub run_id: String,
    pub job: String,
    pub period: String,
    pub attempt: i32,
    pub tick: Tick,
    pub planned_at: DateTime<Utc>,
}

/// What a job needs from the outside world.
#[derive(Clone)]
pub struct JobCtx {
    pub db: sqlx::PgPool,
    pub redis: Option<redis::aio::ConnectionManager>,
    pub tz: Tz,
    pub settings: JobSettings,
    /// When `apply` must stop (see [`deadline`]): the run's deadline for a chunk, no limit
    /// when planning and finalising (their time is bounded by the processor) and for a chunk
    /// that completes effects an earlier attempt may have begun after the deadline.
    pub deadline: Deadline,
    /// An earlier attempt of this chunk completed its effects (it is recorded APPLIED; only
    /// its Kafka transaction did not commit). `apply` must then make no new decision — emit
    /// what the recorded effects imply, as a continuation does — because the run may already
    /// be finalised from them (another chunk completed it meanwhile), and a new decision (a
    /// product that drifted since) would disagree with what finalisation read.
    pub effects_done: bool,
}

/// One applied chunk (or part of one): the records to emit and counters for the run result.
#[derive(Debug, Clone, Default)]
pub struct ChunkOutput {
    pub records: Vec<Emit>,
    pub counts: BTreeMap<String, i64>,
    /// More records follow (they would not fit one transaction): the processor commits these
    /// with a continuation of the chunk — the same work item with `resume_after` = this cursor
    /// and the counts so far — and the job's `apply` of that continuation emits the next
    /// records *without repeating any effect*. The chunk completes with the part that returns
    /// `None`. Records must be derived from durable state in a fixed order, so a retried part
    /// emits the same ones.
    pub more: Option<String>,
}

/// What can go wrong in a job. The processor acts on [`JobError::is_transient`]: a transient
/// error takes the reset path and the same record is handled again; [`JobError::DeadlineReached`]
/// records the chunk TIMED_OUT with what it carries; any other error ends the run recorded
/// FAILED (or, for [`JobError::InvalidTick`], sends the tick to dead letters) and processing
/// moves on. No job error stops the processor.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The tick asks for something this job cannot do (bad parameter, impossible period).
    #[error("invalid tick: {0}")]
    InvalidTick(String),
    /// A dependency is unavailable; the same step may succeed later.
    #[error("transient: {0}")]
    Transient(String),
    /// A bug or bad data; the run is recorded FAILED and the line moves on.
    #[error("{0}")]
    Failed(String),
    /// A PostgreSQL statement failed; transient when the connection or a lock was lost.
    #[error("postgres: {0}")]
    Db(#[source] sqlx::Error),
    /// A Redis command failed; transient when Redis says so (LOADING, TRYAGAIN, connection).
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// The run's deadline stopped the chunk ([`Deadline`]). It carries what the chunk's
    /// effects so far imply — records to emit (every effect made has its event) and counts —
    /// which the processor commits with the chunk recorded TIMED_OUT.
    #[error("run deadline reached")]
    DeadlineReached(Box<ChunkOutput>),
}

impl JobError {
    /// Whether the same step may succeed later (the processor retries it).
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::Transient(_) => true,
            JobError::InvalidTick(_) | JobError::Failed(_) | JobError::DeadlineReached(_) => false,
            JobError::Db(e) => crate::error::sqlx_class(e) == ErrorClass::Retry,
            JobError::Redis(e) => {
                // Redis says which of its errors are worth retrying (LOADING after a restart,
                // TRYAGAIN, dropped connections…); a wrong password is not, whatever it says.
                let retriable = e.kind() != redis::ErrorKind::AuthenticationFailed && !matches!(e.retry_method(), redis::RetryMethod::NoRetry);
                retriable || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
            }
        }
    }

    /// Retry when transient; otherwise the record is handled (the run fails), never fatal.
    pub fn class(&self) -> ErrorClass {
        if self.is_transient() {
            ErrorClass::Retry
        } else {
            ErrorClass::Abort
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Db(e)
    }
}

/// An event that does not fit its schema is the same on every attempt (a struct out of step
/// with its `.avsc`, or money beyond its decimal): retrying cannot help.
impl From<crate::wire::events::EventError> for JobError {
    fn from(e: crate::wire::events::EventError) -> Self {
        JobError::Failed(format!("event: {e}"))
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        JobError::Redis(e)
    }
}

/// A job: one module behind this interface, listed once in [`catalog`].
pub trait Job: Send + Sync {
    /// The job's name in ticks, work items, run results and `trigger <job>` (settings use it
    /// with `_` for `-`: `jobs.order_expiration`).
    fn name(&self) -> &'static str;

    /// The job's settings before configuration: its schedule, timeout, batch size, catch-up
    /// policy and its own options with their defaults ([`JobSettings::with_options`]).
    fn defaults(&self) -> JobSettings;

    /// Checks the configured settings beyond the common ones — the job's options — at
    /// start-up; an error names the option. A job without options refuses any.
    fn check(&self, settings: &JobSettings) -> Result<(), String> {
        settings.options::<settings::NoOptions>().map(|_| ())
    }

    /// The logical period a tick stands for; ticks of the same period are the same run.
    fn period(&self, tick: &Tick, tz: Tz) -> Result<String, JobError> {
        let _ = tz;
        Ok(tick.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }

    /// The tick parameters this job accepts besides [`FORCE`], which every job accepts. A
    /// tick naming any other parameter, or a value its check refuses, is sent to dead
    /// letters by [`check_tick`] — the one rule for every job. None by default.
    fn parameters(&self) -> &'static [Parameter] {
        &[]
    }

    /// Checks that involve more than one parameter or the tick itself, after every parameter
    /// passed [`check_tick`]; an error sends the tick to dead letters (impossible values).
    fn validate(&self, tick: &Tick) -> Result<(), JobError> {
        let _ = tick;
        Ok(())
    }

    /// Whether an older tick may be dropped when a newer tick of this job is already queued
    /// (true for jobs that look at current state; false when each period matters).
    fn coalesce(&self) -> bool {
        true
    }

    /// Streams the run's fixed chunks of ids. Reads only.
    fn plan<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>>;

    /// Applies one chunk idempotently and returns what to emit.
    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>>;

    /// Called in the transaction of the chunk that completes the run, for records that
    /// depend on the whole run (e.g. alert severity from the run's total). Reads durable
    /// state only, so a retried finalisation emits the same records. Its counts are added
    /// to the run result's.
    fn finalize<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        let _ = (ctx, run);
        Box::pin(async { Ok(ChunkOutput::default()) })
    }
}

/// A tick parameter a job accepts (see [`Job::parameters`]).
pub struct Parameter {
    pub name: &'static str,
    /// What it means, in a line: the declaration documents the parameter where it is checked.
    pub about: &'static str,
    /// Checks one value; the error says what is wrong with it (the caller names the parameter).
    pub check: fn(&str) -> Result<(), String>,
}

/// `force=true`: re-run a period already recorded (a new attempt). The processor honours it
/// for every job, on MANUAL ticks only.
pub const FORCE: Parameter =
    Parameter { name: "force", about: "true: run again a period already recorded (MANUAL ticks only)", check: true_or_false };

/// A [`Parameter::check`] accepting any value that parses as `T` (`u32`, `i32`, …).
pub fn parses<T: std::str::FromStr>(value: &str) -> Result<(), String> {
    value.parse::<T>().map(|_| ()).map_err(|_| format!("expected a value of type {}", std::any::type_name::<T>()))
}

/// A [`Parameter::check`] accepting `true` or `false`.
pub fn true_or_false(value: &str) -> Result<(), String> {
    parses::<bool>(value).map_err(|_| "expected true or false".to_string())
}

/// The one rule for a tick's parameters, whatever the job: each must be [`FORCE`] or one the
/// job declares, with a value its check accepts, and `force` only on a MANUAL tick; then the
/// job's own [`Job::validate`]. An error names the parameter; the processor sends such a
/// tick to dead letters and `trigger` refuses to publish it.
pub fn check_tick(job: &dyn Job, tick: &Tick) -> Result<(), JobError> {
    for (name, value) in &tick.parameters {
        let declared = std::iter::once(&FORCE).chain(job.parameters()).find(|p| p.name == name);
        let Some(parameter) = declared else {
            let accepted: Vec<&str> = std::iter::once(&FORCE).chain(job.parameters()).map(|p| p.name).collect();
            return Err(JobError::InvalidTick(format!(
                "unknown parameter `{name}` ({} accepts: {})",
                job.name(),
                accepted.join(", ")
            )));
        };
        (parameter.check)(value).map_err(|why| JobError::InvalidTick(format!("parameter `{name}` = `{value}`: {why}")))?;
    }
    // The processor honours `force` only on MANUAL ticks; elsewhere it would be silently
    // ignored, which is worse than saying so.
    if tick.parameters.contains_key(FORCE.name) && tick.trigger != crate::wire::tick::Trigger::Manual {
        return Err(JobError::InvalidTick(format!(
            "parameter `force` is only accepted on MANUAL ticks, not {}",
            tick.trigger.as_str()
        )));
    }
    job.validate(tick)
}

/// The jobs this build knows, by name.
#[derive(Clone)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn Job>>,
}

/// Every job this build knows: adding a job is its module and one line here.
pub fn catalog() -> Vec<Arc<dyn Job>> {
    vec![
        Arc::new(noop::Noop),
        Arc::new(order_expiration::OrderExpiration),
        Arc::new(stock_sync::StockSync),
        Arc::new(daily_statistics::DailyStatistics),
        Arc::new(report::Report(report::Kind::StockSync)),
        Arc::new(report::Report(report::Kind::DailyStatistics)),
    ]
}

impl Registry {
    /// The jobs of [`catalog`].
    pub fn builtin() -> Registry {
        let mut r = Registry { jobs: BTreeMap::new() };
        for job in catalog() {
            r.add(job);
        }
        r
    }

    pub fn add(&mut self, job: Arc<dyn Job>) {
        self.jobs.insert(job.name(), job);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Job>> {
        self.jobs.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.jobs.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    /// Regression (found by the fault suite): a chunk that met Redis still loading its data
    /// after a restart was recorded FAILED instead of being retried.
    #[test]
    fn redis_errors_worth_retrying_are_transient() {
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "Redis is loading the dataset in memory"));
        assert!(JobError::from(loading).is_transient());
        let script = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR script error"));
        assert!(!JobError::from(script).is_transient());
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(!JobError::from(auth).is_transient());
    }

    /// The one parameter rule, for jobs with and without parameters of their own: only
    /// declared names (and `force`, on MANUAL ticks), only values their check accepts, and
    /// the refusal names the parameter.
    #[test]
    fn every_job_refuses_unknown_parameters_and_bad_values_naming_them() {
        use crate::wire::tick::Trigger;
        let tick = |job: &str, trigger: Trigger, params: &[(&str, &str)]| {
            let mut t = Tick::for_fire_time(job, chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap(), trigger, None);
            t.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            t
        };
        let refusal = |job: &dyn Job, t: &Tick| match check_tick(job, t) {
            Err(JobError::InvalidTick(why)) => why,
            other => panic!("{} {:?} accepted: {other:?}", job.name(), t.parameters),
        };
        for job in catalog() {
            let job = job.as_ref();
            check_tick(job, &tick(job.name(), Trigger::Scheduled, &[])).unwrap();
            check_tick(job, &tick(job.name(), Trigger::Manual, &[("force", "true")])).unwrap();
            let why = refusal(job, &tick(job.name(), Trigger::Scheduled, &[("batch", "-1")]));
            assert!(why.starts_with("unknown parameter `batch`") && why.contains("accepts: force"), "{why}");
            let why = refusal(job, &tick(job.name(), Trigger::Manual, &[("force", "maybe")]));
            assert!(why.contains("parameter `force` = `maybe`"), "{why}");
            let why = refusal(job, &tick(job.name(), Trigger::Scheduled, &[("force", "true")]));
            assert!(why.contains("only accepted on MANUAL ticks"), "{why}");
        }
        let noop = noop::Noop;
        check_tick(&noop, &tick("noop", Trigger::Scheduled, &[("chunks", "100000"), ("fail", "-1")])).unwrap();
        assert!(refusal(&noop, &tick("noop", Trigger::Scheduled, &[("chunks", "100001")])).contains("parameter `chunks` = `100001`: exceeds"));
        assert!(refusal(&noop, &tick("noop", Trigger::Scheduled, &[("apply_sleep_ms", "-5")])).contains("`apply_sleep_ms`"));
    }

    /// A job error keeps its cause (for logs and `source()` chains) and is never fatal: the
    /// run fails, the processor goes on.
    #[test]
    fn job_errors_keep_their_source_and_are_never_fatal() {
        use std::error::Error as _;
        let e = JobError::from(sqlx::Error::RowNotFound);
        assert!(e.source().is_some());
        assert_eq!(e.class(), ErrorClass::Abort);
        assert_eq!(JobError::Failed("bad data".into()).class(), ErrorClass::Abort);
        assert_eq!(JobError::InvalidTick("bad".into()).class(), ErrorClass::Abort);
        assert_eq!(JobError::from(sqlx::Error::PoolTimedOut).class(), ErrorClass::Retry);
    }
}
