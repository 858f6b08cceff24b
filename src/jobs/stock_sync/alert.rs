//! The run's alerts: one `StockSyncAlert` per recorded mismatch, emitted by the run's
//! finalisation from `stock_sync_mismatches` only (durable state), so a retried finalisation
//! emits the same alerts and the processor commits them exactly once.
//!
//! Severity: every alert of an urgent run (more than `urgent_after_mismatches` mismatches) is
//! `CRITICAL`. Otherwise `HIGH` when a person must act (`MANUAL_REVIEW_REQUIRED`), `MEDIUM`
//! when the key was missing (the product could not be sold at all) or
//! |discrepancy| ≥ [`MEDIUM_FROM`], `LOW` for a small drift that was repaired.
//!
//! Limit: all of a run's alerts are built and sent in that one finalising transaction; a run
//! with more than a few thousand mismatches makes it large (memory and transaction time grow
//! with the mismatch count, not the product count).

use chrono::{DateTime, Utc};

use super::Action;
use crate::jobs::{ChunkOutput, JobCtx, JobError, Run};
use crate::wire::derived_id;
use crate::wire::events::{emit, Severity, StockSyncAlert};

/// Smallest |discrepancy| that makes a repaired drift `MEDIUM` rather than `LOW`.
pub const MEDIUM_FROM: i64 = 10;

const RUN_MISMATCHES: &str = "
SELECT product_id, db_stock, redis_stock, cause, action, detected_at
FROM stock_sync_mismatches WHERE run_id = $1 ORDER BY product_id";

type Row = (String, i64, Option<i64>, String, String, DateTime<Utc>);

pub fn severity(urgent: bool, action: Action, db_stock: i64, redis_stock: Option<i64>) -> Severity {
    if urgent {
        Severity::Critical
    } else if action == Action::ManualReviewRequired {
        Severity::High
    } else if redis_stock.is_none() || discrepancy(db_stock, redis_stock).abs() >= MEDIUM_FROM {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// dbStock - redisStock; dbStock when Redis had no value.
pub fn discrepancy(db_stock: i64, redis_stock: Option<i64>) -> i64 {
    db_stock.saturating_sub(redis_stock.unwrap_or(0))
}

/// The schema's ints are 32-bit; a stock beyond that is saturated rather than failing the
/// run's alerts (the table keeps the exact 64-bit values).
fn int(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

pub async fn finalize(ctx: &JobCtx, run: &Run) -> Result<ChunkOutput, JobError> {
    let rows: Vec<Row> = sqlx::query_as(RUN_MISMATCHES).bind(&run.run_id).fetch_all(&ctx.db).await?;
    let total = rows.len() as i64;
    let options: super::Options = ctx.settings.options().map_err(JobError::Failed)?;
    let urgent = total > i64::from(options.urgent_after_mismatches);
    let now = Utc::now();
    let mut out = ChunkOutput::default();
    let mut manual = 0;
    for (product_id, db_stock, redis_stock, cause, action, detected_at) in rows {
        let action = Action::from_symbol(&action)
            .ok_or_else(|| JobError::Failed(format!("stock_sync_mismatches of {product_id}: unknown action `{action}`")))?;
        if action == Action::ManualReviewRequired {
            manual += 1;
        }
        let alert = StockSyncAlert {
            event_id: derived_id(&["stock-sync-alert", &run.run_id, &product_id]).to_string(),
            event_timestamp: now,
            product_id,
            db_stock: int(db_stock),
            redis_stock: redis_stock.map(int),
            discrepancy: int(discrepancy(db_stock, redis_stock)),
            action,
            severity: severity(urgent, action, db_stock, redis_stock),
            detected_at,
            cause,
            run_id: run.run_id.clone(),
            mismatches_in_run: int(total),
        };
        out.records.push(emit(&alert)?);
    }
    if urgent {
        tracing::warn!(run_id = %run.run_id, mismatches = total, "stock-sync run is urgent: alerts carry CRITICAL");
    }
    // `repaired`, `casRefused` and `unresolved` come from the chunks (see `apply`); these are
    // the run-level ones. Distinct names: the processor lets these override the chunk sums.
    for (k, v) in [("mismatches", total), ("manualReview", manual), ("urgent", i64::from(urgent))] {
        out.counts.insert(k.into(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_rule() {
        use Action::{ManualReviewRequired, RedisRestored};
        assert_eq!(severity(true, RedisRestored, 5, Some(4)), Severity::Critical);
        assert_eq!(severity(false, ManualReviewRequired, -3, Some(4)), Severity::High);
        assert_eq!(severity(false, RedisRestored, 3, None), Severity::Medium);
        assert_eq!(severity(false, RedisRestored, 30, Some(20)), Severity::Medium);
        assert_eq!(severity(false, RedisRestored, 20, Some(30)), Severity::Medium);
        assert_eq!(severity(false, RedisRestored, 25, Some(20)), Severity::Low);
        assert_eq!(discrepancy(7, None), 7);
        assert_eq!(int(i64::MAX), i32::MAX);
    }
}
