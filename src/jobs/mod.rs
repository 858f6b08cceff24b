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
pub use settings::{CatchUp, JobSettings};
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
}

/// One applied chunk: the records to emit and counters for the run result.
#[derive(Debug, Clone, Default)]
pub struct ChunkOutput {
    pub records: Vec<Emit>,
    pub counts: BTreeMap<String, i64>,
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

    /// Checks the tick's parameters before anything is planned; an error sends the tick to
    /// dead letters (impossible values).
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
