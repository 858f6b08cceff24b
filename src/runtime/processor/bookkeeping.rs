//! Run bookkeeping in PostgreSQL (tables `job_runs`, `job_run_chunks`): which chunks of a run
//! are applied, and which one chunk finalises the run.
//!
//! Every write is keyed (run id, chunk index) and idempotent. The claim is exactly-one by a
//! conditional UPDATE: the first chunk that sees every chunk recorded sets `finalized_by` to
//! itself; a retry of that same chunk (its Kafka transaction aborted) claims again, so the
//! run result is emitted by exactly one committed transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::wire::internal::WorkItem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Effects may have begun; the chunk's Kafka transaction has not committed yet.
    Started,
    Applied,
    TimedOut,
    Failed,
    /// Not started: its run was cancelled by a newer tick (`overlap = cancel_other`).
    Cancelled,
}

impl ChunkOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkOutcome::Started => "STARTED",
            ChunkOutcome::Applied => "APPLIED",
            ChunkOutcome::TimedOut => "TIMED_OUT",
            ChunkOutcome::Failed => "FAILED",
            ChunkOutcome::Cancelled => "CANCELLED",
        }
    }

    /// The `outcome` label of `scheduled_jobs_chunks_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            ChunkOutcome::Started => "started",
            ChunkOutcome::Applied => "applied",
            ChunkOutcome::TimedOut => "timed_out",
            ChunkOutcome::Failed => "failed",
            ChunkOutcome::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<ChunkOutcome> {
        Some(match s {
            "STARTED" => ChunkOutcome::Started,
            "APPLIED" => ChunkOutcome::Applied,
            "TIMED_OUT" => ChunkOutcome::TimedOut,
            "FAILED" => ChunkOutcome::Failed,
            "CANCELLED" => ChunkOutcome::Cancelled,
            _ => return None,
        })
    }
}

/// What [`start_chunk`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// First attempt, within the deadline: marked `STARTED`.
    Fresh,
    /// An earlier attempt recorded this outcome (its Kafka transaction did not commit).
    Again(ChunkOutcome),
    /// First attempt, after the run's deadline: not started.
    PastDeadline,
    /// First attempt, after a newer tick cancelled the run (`job_run_cancels`): not started.
    Cancelled { reason: String },
}

/// Marks a chunk as started before its effects, so a retry after the run's deadline still
/// completes it instead of abandoning effects that may have happened; a first attempt of a
/// cancelled run's chunk is not started. One round trip on the common path (a first attempt
/// within the deadline, not cancelled).
pub async fn start_chunk(db: &PgPool, run_id: &str, index: i32, instance: &str, past_deadline: bool) -> Result<Start, sqlx::Error> {
    if !past_deadline {
        let inserted: Option<i32> = sqlx::query_scalar(
            "INSERT INTO job_run_chunks (run_id, chunk_index, outcome, applied_at, applied_by)
             SELECT $1, $2, 'STARTED', now(), $3 WHERE NOT EXISTS (SELECT 1 FROM job_run_cancels WHERE run_id = $1)
             ON CONFLICT (run_id, chunk_index) DO NOTHING
             RETURNING chunk_index",
        )
        .bind(run_id)
        .bind(index)
        .bind(instance)
        .fetch_optional(db)
        .await?;
        if inserted.is_some() {
            return Ok(Start::Fresh);
        }
    }
    let (previous, cancelled): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT outcome FROM job_run_chunks WHERE run_id = $1 AND chunk_index = $2),
                (SELECT reason FROM job_run_cancels WHERE run_id = $1)",
    )
    .bind(run_id)
    .bind(index)
    .fetch_one(db)
    .await?;
    Ok(match (previous.and_then(|o| ChunkOutcome::parse(&o)), cancelled) {
        (Some(outcome), _) => Start::Again(outcome),
        (None, Some(reason)) => Start::Cancelled { reason },
        (None, None) => Start::PastDeadline,
    })
}

/// The counts an earlier attempt recorded for a chunk.
pub async fn chunk_counts(db: &PgPool, run_id: &str, index: i32) -> Result<Option<BTreeMap<String, i64>>, sqlx::Error> {
    let counts: Option<Option<sqlx::types::Json<BTreeMap<String, i64>>>> =
        sqlx::query_scalar("SELECT counts FROM job_run_chunks WHERE run_id = $1 AND chunk_index = $2").bind(run_id).bind(index).fetch_optional(db).await?;
    Ok(counts.flatten().map(|c| c.0))
}

/// Records the plan's seal: the run exists with this many chunks.
pub async fn seal(
    db: &PgPool,
    run_id: &str,
    job: &str,
    period: &str,
    chunk_count: i32,
    planned_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_runs (run_id, job, period, chunk_count, planned_at, sealed_at)
         VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(job)
    .bind(period)
    .bind(chunk_count)
    .bind(planned_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Records the seal of a run applied in its tick's transaction, with its one chunk: written
/// before the chunk's effects, it is the decision a retry of the tick must carry out
/// ([`inline_begun`]). A retry writes nothing new.
pub async fn seal_inline(db: &PgPool, item: &WorkItem) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_runs (run_id, job, period, chunk_count, planned_at, sealed_at, inline_item)
         VALUES ($1, $2, $3, 1, $4, now(), $5) ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(&item.run_id)
    .bind(&item.job)
    .bind(&item.period)
    .bind(item.planned_at)
    .bind(sqlx::types::Json(item))
    .execute(db)
    .await?;
    Ok(())
}

/// The chunk of run `run_id` if an earlier attempt of its tick began applying it in the
/// tick's transaction ([`seal_inline`]) — which did not commit, or the run would be recorded.
pub async fn inline_begun(db: &PgPool, run_id: &str) -> Result<Option<WorkItem>, sqlx::Error> {
    let item: Option<Option<sqlx::types::Json<WorkItem>>> =
        sqlx::query_scalar("SELECT inline_item FROM job_runs WHERE run_id = $1").bind(run_id).fetch_optional(db).await?;
    Ok(item.flatten().map(|i| i.0))
}

/// Records one chunk's outcome (a retry records the same outcome again).
pub async fn record_chunk(
    db: &PgPool,
    run_id: &str,
    index: i32,
    outcome: ChunkOutcome,
    counts: &BTreeMap<String, i64>,
    message: Option<&str>,
    instance: &str,
) -> Result<(), sqlx::Error> {
    let counts = serde_json::to_value(counts).unwrap_or_default();
    sqlx::query(
        "INSERT INTO job_run_chunks (run_id, chunk_index, outcome, counts, message, applied_at, applied_by)
         VALUES ($1, $2, $3, $4, $5, now(), $6)
         ON CONFLICT (run_id, chunk_index) DO UPDATE SET outcome = EXCLUDED.outcome, counts = EXCLUDED.counts,
             message = EXCLUDED.message, applied_by = EXCLUDED.applied_by",
    )
    .bind(run_id)
    .bind(index)
    .bind(outcome.as_str())
    .bind(counts)
    .bind(message)
    .bind(instance)
    .execute(db)
    .await?;
    Ok(())
}

/// A run whose chunks are all recorded, claimed by the caller's chunk.
#[derive(Debug, Clone)]
pub struct Finalized {
    pub chunk_count: i32,
    pub planned_at: DateTime<Utc>,
    pub outcome: ChunkOutcome,
    pub counts: BTreeMap<String, i64>,
    pub message: Option<String>,
}

/// Claims the run for `claimant` (a chunk index, or -1 for the seal) if every chunk is
/// recorded and nobody else claimed it. Must run after the caller's own record is committed.
pub async fn try_finalize(db: &PgPool, run_id: &str, claimant: i32) -> Result<Option<Finalized>, sqlx::Error> {
    let claimed: Option<(i32, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE job_runs r SET finalized_by = $2
         WHERE r.run_id = $1 AND (r.finalized_by IS NULL OR r.finalized_by = $2)
           AND r.chunk_count = (SELECT count(*) FROM job_run_chunks c WHERE c.run_id = $1 AND c.outcome <> 'STARTED')
         RETURNING r.chunk_count, r.planned_at",
    )
    .bind(run_id)
    .bind(claimant)
    .fetch_optional(db)
    .await?;
    let Some((chunk_count, planned_at)) = claimed else {
        return Ok(None);
    };
    let outcomes: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT outcome, count(*), min(message) FROM job_run_chunks WHERE run_id = $1 GROUP BY outcome",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    let has = |o: &str| outcomes.iter().any(|(name, n, _)| name == o && *n > 0);
    let outcome = if has("FAILED") {
        ChunkOutcome::Failed
    } else if has("CANCELLED") {
        ChunkOutcome::Cancelled
    } else if has("TIMED_OUT") {
        ChunkOutcome::TimedOut
    } else {
        ChunkOutcome::Applied
    };
    let message = outcomes.iter().find(|(o, _, _)| o == outcome.as_str()).and_then(|(_, _, m)| m.clone());
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kv.key, sum(kv.value::bigint)::bigint FROM job_run_chunks c, jsonb_each_text(c.counts) kv
         WHERE c.run_id = $1 GROUP BY kv.key",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    let mut counts: BTreeMap<String, i64> = rows.into_iter().collect();
    counts.insert("chunks".into(), i64::from(chunk_count));
    for (o, n, _) in &outcomes {
        let name = match o.as_str() {
            "FAILED" => "chunksFailed",
            "TIMED_OUT" => "chunksTimedOut",
            "CANCELLED" => "chunksCancelled",
            _ => continue,
        };
        counts.insert(name.to_string(), *n);
    }
    Ok(Some(Finalized { chunk_count, planned_at, outcome, counts, message }))
}
