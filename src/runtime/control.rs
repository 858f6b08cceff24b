//! Operator controls kept in PostgreSQL: pausing and resuming a job.
//!
//! A pause is a row in `job_pauses`; every processor instance reads it when a tick of the job
//! arrives, so it takes effect for the next tick on every instance without a restart. A
//! paused job's tick is committed with a SKIPPED run result saying so, and no run is recorded
//! in the ledger: the skipped period is not lost — a replay of the tick topic, or
//! `trigger <job> --at <fire time>`, runs it after `resume`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// An active pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub job: String,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
    pub reason: Option<String>,
}

impl Pause {
    /// The run result's message for a tick skipped because of this pause.
    pub fn message(&self) -> String {
        let mut m = format!("job paused by {} at {}", self.paused_by, self.paused_at.to_rfc3339());
        if let Some(r) = &self.reason {
            m.push_str(": ");
            m.push_str(r);
        }
        m.push_str(" (not recorded as run: resume, then replay or `trigger --at` to run this period)");
        m
    }
}

/// Pauses `job`; `Ok(false)` if it was already paused (the first pause is kept).
pub async fn pause(db: &PgPool, job: &str, by: &str, reason: Option<&str>) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("INSERT INTO job_pauses (job, paused_by, reason) VALUES ($1, $2, $3) ON CONFLICT (job) DO NOTHING")
        .bind(job)
        .bind(by)
        .bind(reason)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Resumes `job`; returns the pause it lifted, if it was paused.
pub async fn resume(db: &PgPool, job: &str) -> Result<Option<Pause>, sqlx::Error> {
    pause_row(db, "DELETE FROM job_pauses WHERE job = $1 RETURNING job, paused_at, paused_by, reason", job).await
}

/// The pause of `job`, if any.
pub async fn paused(db: &PgPool, job: &str) -> Result<Option<Pause>, sqlx::Error> {
    pause_row(db, "SELECT job, paused_at, paused_by, reason FROM job_pauses WHERE job = $1", job).await
}

/// The pause row a statement returns for `job`, if any.
async fn pause_row(db: &PgPool, sql: &'static str, job: &str) -> Result<Option<Pause>, sqlx::Error> {
    let row: Option<(String, DateTime<Utc>, String, Option<String>)> = sqlx::query_as(sql).bind(job).fetch_optional(db).await?;
    Ok(row.map(|(job, paused_at, paused_by, reason)| Pause { job, paused_at, paused_by, reason }))
}

/// Who is acting, for the record: `$USER@host`, or what is known of it.
pub fn operator() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { user } else { format!("{user}@{host}") }
}
