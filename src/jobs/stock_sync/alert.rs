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

use apache_avro::types::Value;
use chrono::{DateTime, Utc};

use super::ACTIONS;
use crate::wire::Topic;
use crate::jobs::{ChunkOutput, Emit, JobCtx, JobError, Run};
use crate::wire::{derived_id, enum_value, ts};

/// Smallest |discrepancy| that makes a repaired drift `MEDIUM` rather than `LOW`.
pub const MEDIUM_FROM: i64 = 10;

pub const SEVERITIES: [&str; 4] = ["LOW", "MEDIUM", "HIGH", "CRITICAL"];

const RUN_MISMATCHES: &str = "
SELECT product_id, db_stock, redis_stock, cause, action, detected_at
FROM stock_sync_mismatches WHERE run_id = $1 ORDER BY product_id";

type Row = (String, i64, Option<i64>, String, String, DateTime<Utc>);

pub fn severity(urgent: bool, action: &str, db_stock: i64, redis_stock: Option<i64>) -> &'static str {
    if urgent {
        "CRITICAL"
    } else if action == "MANUAL_REVIEW_REQUIRED" {
        "HIGH"
    } else if redis_stock.is_none() || discrepancy(db_stock, redis_stock).abs() >= MEDIUM_FROM {
        "MEDIUM"
    } else {
        "LOW"
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
    let urgent = total > i64::from(ctx.settings.urgent_after_mismatches);
    let now = Utc::now();
    let mut out = ChunkOutput::default();
    let mut manual = 0;
    for (product_id, db_stock, redis_stock, cause, action, detected_at) in rows {
        if action == "MANUAL_REVIEW_REQUIRED" {
            manual += 1;
        }
        let value = Value::Record(vec![
            ("eventId".into(), Value::String(derived_id(&["stock-sync-alert", &run.run_id, &product_id]).to_string())),
            ("eventTimestamp".into(), ts(now)),
            ("productId".into(), Value::String(product_id.clone())),
            ("dbStock".into(), Value::Int(int(db_stock))),
            (
                "redisStock".into(),
                match redis_stock {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(v) => Value::Union(1, Box::new(Value::Int(int(v)))),
                },
            ),
            ("discrepancy".into(), Value::Int(int(discrepancy(db_stock, redis_stock)))),
            ("action".into(), enum_value(&ACTIONS, &action)),
            ("severity".into(), enum_value(&SEVERITIES, severity(urgent, &action, db_stock, redis_stock))),
            ("detectedAt".into(), ts(detected_at)),
            ("cause".into(), Value::String(cause)),
            ("runId".into(), Value::String(run.run_id.clone())),
            ("mismatchesInRun".into(), Value::Int(int(total))),
        ]);
        out.records.push(Emit { topic: Topic::StockSyncAlert, key: product_id, value });
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
        assert_eq!(severity(true, "REDIS_RESTORED", 5, Some(4)), "CRITICAL");
        assert_eq!(severity(false, "MANUAL_REVIEW_REQUIRED", -3, Some(4)), "HIGH");
        assert_eq!(severity(false, "REDIS_RESTORED", 3, None), "MEDIUM");
        assert_eq!(severity(false, "REDIS_RESTORED", 30, Some(20)), "MEDIUM");
        assert_eq!(severity(false, "REDIS_RESTORED", 20, Some(30)), "MEDIUM");
        assert_eq!(severity(false, "REDIS_RESTORED", 25, Some(20)), "LOW");
        assert_eq!(discrepancy(7, None), 7);
        assert_eq!(int(i64::MAX), i32::MAX);
    }
}
