//! A run's deadline, as a chunk's effects see it: the one mechanism every job uses to stop at
//! the deadline (planned time + the job's `timeout_secs`) inside a running chunk.
//!
//! - SQL: [`Deadline::begin`] opens a transaction whose statements are limited to the time
//!   left (`statement_timeout`, set with `set_config(…, true)`, i.e. `SET LOCAL`: it ends with
//!   the transaction, so a pooled connection never keeps it); [`Deadline::limit`] re-arms it
//!   before each further statement of that transaction. PostgreSQL cancels a statement that
//!   runs (or waits for a lock) past it and the transaction rolls back: nothing of it happened.
//! - Redis: [`Deadline::redis`] bounds a command by the time left.
//! - Loops: [`Deadline::check`] between batches, [`Deadline::sleep_until`] for waits.
//!
//! All of them report the deadline as [`JobError::DeadlineReached`], which carries what the
//! chunk had already done; the processor records the chunk `TIMED_OUT` and emits those
//! records. The rule jobs follow: **effects already made always produce their events,
//! whatever the deadline** — a job stops *starting* work at the deadline, never finishing
//! what it began (a committed change is released, read back and emitted without a limit).
//! [`Deadline::none`] (no limit) is what a chunk gets when it completes effects an earlier
//! attempt may have begun after the deadline, and what planning and finalising use.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

use super::{ChunkOutput, JobError};

/// SQLSTATE of a statement cancelled by `statement_timeout` (`query_canceled`).
const QUERY_CANCELED: &str = "57014";

/// When the chunk's run must stop, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline {
    at: Option<DateTime<Utc>>,
}

impl Deadline {
    /// No limit.
    pub fn none() -> Deadline {
        Deadline { at: None }
    }

    /// Stops at `at`.
    pub fn at(at: DateTime<Utc>) -> Deadline {
        Deadline { at: Some(at) }
    }

    /// The deadline of a run planned at `planned_at` by a job allowed `timeout_secs`; no limit
    /// if that does not fit a timestamp.
    pub fn of_run(planned_at: DateTime<Utc>, timeout_secs: u64) -> Deadline {
        let at = i64::try_from(timeout_secs).ok().and_then(TimeDelta::try_seconds).and_then(|t| planned_at.checked_add_signed(t));
        Deadline { at }
    }

    /// The instant, if limited.
    pub fn instant(&self) -> Option<DateTime<Utc>> {
        self.at
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        self.at.is_some_and(|at| Utc::now() >= at)
    }

    /// The time left (zero once passed); `None` without a limit.
    pub fn remaining(&self) -> Option<Duration> {
        self.at.map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
    }

    /// `Err(DeadlineReached)` with nothing done once the deadline has passed: for a job to
    /// call before it starts something new (e.g. between batches).
    pub fn check(&self) -> Result<(), JobError> {
        if self.passed() {
            Err(JobError::deadline())
        } else {
            Ok(())
        }
    }

    /// A transaction whose statements are cut at the deadline (`SET LOCAL statement_timeout`
    /// to the time left); an ordinary transaction without a limit. Fails with
    /// `DeadlineReached` if the deadline has already passed.
    pub async fn begin(&self, db: &sqlx::PgPool) -> Result<Transaction<'static, Postgres>, JobError> {
        self.check()?;
        let mut tx = crate::db::begin(db).await?;
        self.limit(&mut tx).await?;
        Ok(tx)
    }

    /// Re-arms the transaction's statement timeout to the time left now (a statement timeout
    /// counts per statement: call this before each further statement of a transaction begun
    /// with [`Deadline::begin`]). Nothing without a limit.
    pub async fn limit(&self, tx: &mut PgConnection) -> Result<(), JobError> {
        let Some(left) = self.remaining() else { return Ok(()) };
        if left.is_zero() {
            return Err(JobError::deadline());
        }
        // At least 1 ms: 0 would mean "no timeout" to PostgreSQL.
        let ms = left.as_millis().max(1).to_string();
        // set_config(…, true) is SET LOCAL with a bind parameter: it ends with the transaction.
        sqlx::query("SELECT set_config('statement_timeout', $1, true)").bind(ms).execute(&mut *tx).await.map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A PostgreSQL error as a job error: a statement cancelled by this deadline's timeout is
    /// `DeadlineReached` (nothing done), anything else keeps its class.
    pub fn sql(&self, e: sqlx::Error) -> JobError {
        match &e {
            sqlx::Error::Database(d) if self.at.is_some() && d.code().as_deref() == Some(QUERY_CANCELED) => JobError::deadline(),
            _ => JobError::Db(e),
        }
    }

    /// Runs a Redis command, cut at the deadline (`DeadlineReached`, nothing known done: only
    /// for commands whose effect, if any, the job can find again, or reads).
    pub async fn redis<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, JobError> {
        match self.remaining() {
            None => Ok(command.await?),
            Some(left) if left.is_zero() => Err(JobError::deadline()),
            Some(left) => match tokio::time::timeout(left, command).await {
                Ok(r) => Ok(r?),
                Err(_) => Err(JobError::deadline()),
            },
        }
    }

    /// Sleeps until `until`, or fails with `DeadlineReached` if the deadline comes first.
    pub async fn sleep_until(&self, until: tokio::time::Instant) -> Result<(), JobError> {
        match self.remaining() {
            Some(left) if tokio::time::Instant::now() + left < until => {
                tokio::time::sleep(left).await;
                Err(JobError::deadline())
            }
            _ => {
                tokio::time::sleep_until(until).await;
                Ok(())
            }
        }
    }
}

impl JobError {
    /// The deadline was reached before anything of this attempt was done.
    pub fn deadline() -> JobError {
        JobError::DeadlineReached(Box::default())
    }

    /// The deadline was reached after `done`: what this chunk's effects so far imply, records
    /// and counts, to be emitted with the chunk recorded `TIMED_OUT`.
    pub fn deadline_after(done: ChunkOutput) -> JobError {
        JobError::DeadlineReached(Box::new(done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_planned_time_plus_timeout() {
        let planned = Utc::now() - TimeDelta::seconds(10);
        assert!(Deadline::of_run(planned, 5).passed());
        assert!(matches!(Deadline::of_run(planned, 5).check(), Err(JobError::DeadlineReached(_))));
        let d = Deadline::of_run(planned, 60);
        assert!(!d.passed());
        assert!(d.remaining().is_some_and(|r| r > Duration::from_secs(45) && r <= Duration::from_secs(50)));
        assert_eq!(Deadline::none().remaining(), None);
        assert!(Deadline::none().check().is_ok());
        assert_eq!(Deadline::of_run(planned, u64::MAX), Deadline::none());
    }

    #[tokio::test]
    async fn waits_and_redis_commands_stop_at_the_deadline() {
        let d = Deadline::at(Utc::now() + TimeDelta::milliseconds(50));
        let started = tokio::time::Instant::now();
        let r = d.sleep_until(started + Duration::from_secs(30)).await;
        assert!(matches!(r, Err(JobError::DeadlineReached(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
        let never = std::future::pending::<redis::RedisResult<()>>();
        assert!(matches!(Deadline::at(Utc::now() + TimeDelta::milliseconds(20)).redis(never).await, Err(JobError::DeadlineReached(_))));
        assert!(Deadline::none().sleep_until(tokio::time::Instant::now()).await.is_ok());
    }

    #[test]
    fn the_deadline_is_never_transient() {
        assert!(!JobError::deadline().is_transient());
        assert!(JobError::deadline().to_string().contains("deadline"));
    }
}
