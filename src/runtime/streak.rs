//! Failure streaks: how many runs of a job failed (FAILED or TIMED_OUT) in a row, and the
//! pause after `jobs.<job>.pause_after_failures` of them.
//!
//! Each run's end is a row in `job_run_ends`, keyed by the run: written before the
//! transaction that emits the run's result commits, so a retry of that transaction finds the
//! same row and reports the same streak (effectively once). The pause is an operator pause
//! (`job_pauses`) made by the system, with the last error: the first pause is kept, so a
//! repeated or concurrent one changes nothing. `resume` lifts it like any other.

use sqlx::PgPool;

use crate::wire::internal::Outcome;

/// Who the pause after a failure streak names.
pub const PAUSED_BY: &str = "scheduled-jobs (pause_after_failures)";

/// A run's place in its job's failure streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Runs that failed in a row just before this one.
    pub failed_before: i64,
    /// The streak with this run: `failed_before + 1` if it failed, 0 if it succeeded.
    pub now: i64,
}

/// Records how run `run_id` ended (once) and returns its place in the job's streak. `None`
/// for outcomes that neither extend nor end a streak (skipped, missed, coalesced).
pub async fn record_end(db: &PgPool, run_id: &str, job: &str, outcome: Outcome, message: Option<&str>) -> Result<Option<Streak>, sqlx::Error> {
    let failed = match outcome {
        Outcome::Succeeded => false,
        Outcome::Failed | Outcome::TimedOut => true,
        _ => return Ok(None),
    };
    sqlx::query("INSERT INTO job_run_ends (run_id, job, outcome, message) VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING")
        .bind(run_id)
        .bind(job)
        .bind(outcome.as_str())
        .bind(message)
        .execute(db)
        .await?;
    // The failures after the job's last success before this run's (first recorded) end.
    let failed_before: i64 = sqlx::query_scalar(
        "WITH me AS (SELECT ended_at FROM job_run_ends WHERE run_id = $1)
         SELECT count(*) FROM job_run_ends e, me
         WHERE e.job = $2 AND e.ended_at < me.ended_at AND e.outcome <> 'SUCCEEDED'
           AND e.ended_at > COALESCE((SELECT max(s.ended_at) FROM job_run_ends s, me
                                      WHERE s.job = $2 AND s.outcome = 'SUCCEEDED' AND s.ended_at < me.ended_at), '-infinity')",
    )
    .bind(run_id)
    .bind(job)
    .fetch_one(db)
    .await?;
    Ok(Some(Streak { failed_before, now: if failed { failed_before + 1 } else { 0 } }))
}

/// Pauses `job` after a streak of `streak` failed runs, the last with `error`; `Ok(false)`
/// if it was already paused.
pub async fn pause_after(db: &PgPool, job: &str, streak: i64, error: Option<&str>) -> Result<bool, sqlx::Error> {
    let reason = format!("{streak} consecutive runs failed; the last: {}", error.unwrap_or("(no message)"));
    crate::runtime::control::pause(db, job, PAUSED_BY, Some(&reason)).await
}
