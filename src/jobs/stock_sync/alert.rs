//! What a run tells other services: one `StockSyncAlert` per recorded mismatch, emitted with
//! the range that found it, and one `StockSyncRunSummary` per run, emitted by its
//! finalisation. Both are read from `stock_sync_mismatches` only (durable state, in a fixed
//! order), so a retried part or finalisation emits the same records, and the processor commits
//! each exactly once.
//!
//! Alerts leave with their range, in parts of at most `alerts_per_transaction`: a Redis that
//! lost every key makes one alert per product, and neither memory nor any Kafka transaction
//! may grow with that. An alert's `action` is what happened, not what was intended:
//! `REDIS_RESTORED` only when this run's compare-and-set was applied (or Redis was found
//! consistent on a retry), `REPAIR_DEFERRED` when it was refused or its outcome is unknown.
//!
//! Severity of an alert: `HIGH` when a person must act (`MANUAL_REVIEW_REQUIRED`), `MEDIUM`
//! when the key was missing (the product could not be sold at all), the repair was deferred,
//! or |discrepancy| ≥ [`MEDIUM_FROM`]; `LOW` for a small drift that was repaired. Urgency is
//! the run's: alerts are emitted before the run's total is known, so the summary says whether
//! the run was urgent (more than `urgent_after_mismatches` mismatches) — the one record the
//! Notification service pages on — with the mismatches of each cause.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Action, Options};
use crate::jobs::{ChunkOutput, JobCtx, JobError, Run};
use crate::wire::derived_id;
use crate::wire::events::{emit, Severity, StockSyncAlert, StockSyncRunSummary};

/// Smallest |discrepancy| that makes a repaired drift `MEDIUM` rather than `LOW`.
pub const MEDIUM_FROM: i64 = 10;

/// A range's recorded mismatches from `$2` (a part's first product: the range's first, or
/// just after the previous part's last), in product order — the primary key's order, so a part
/// reads only its own rows. The lower bound is always a plain comparison the index can start
/// at: an optional bound (`$4 IS NULL OR product_id > $4`) made the generic plan scan from the
/// range's start on every part, quadratic in the range's alerts (160 ms per part of 9,000 at
/// 500,000 alerts, against 60 ms at 100,000). The outcome is resolved as the
/// `stock_sync_mismatches` view does, but after the limit: joined first, the generic plan read
/// every row of the range for each part (175 ms per part of 9,000).
const RANGE_MISMATCHES: &str = "
SELECT m.product_id, m.db_stock, m.redis_stock, m.cause, m.action,
       COALESCE(m.repair, CASE WHEN g.run_id IS NOT NULL AND m.action = 'REDIS_RESTORED' THEN 'RESTORED' END),
       m.detected_at
FROM (SELECT * FROM stock_sync_mismatch_rows
      WHERE run_id = $1 AND product_id {from} $2 AND product_id <= $3
      ORDER BY product_id
      LIMIT $4) m
LEFT JOIN stock_sync_repair_groups g ON g.run_id = m.run_id AND g.repair_group = m.repair_group
ORDER BY m.product_id";

/// The run's mismatches by cause and by what the alerts report. The rows are counted first and
/// only then matched with their groups' completion (as the `stock_sync_mismatches` view
/// resolves it): through the view, the run of a Redis that lost every key probed the groups'
/// index once per row (2 s for 1,000,000 rows).
const RUN_TOTALS: &str = "
SELECT m.cause,
       CASE WHEN m.action = 'MANUAL_REVIEW_REQUIRED' THEN 'MANUAL_REVIEW_REQUIRED'
            WHEN COALESCE(m.repair, CASE WHEN g.run_id IS NOT NULL THEN 'RESTORED' END) = 'RESTORED'
                THEN 'REDIS_RESTORED'
            ELSE 'REPAIR_DEFERRED' END AS reported,
       sum(m.n)::bigint
FROM (SELECT run_id, cause, action, repair, repair_group, count(*) AS n
      FROM stock_sync_mismatch_rows WHERE run_id = $1
      GROUP BY run_id, cause, action, repair, repair_group) m
LEFT JOIN stock_sync_repair_groups g ON g.run_id = m.run_id AND g.repair_group = m.repair_group
GROUP BY 1, 2";

type Row = (String, i64, Option<i64>, String, String, Option<String>, DateTime<Utc>);

/// What an alert reports for a row: its recorded intent and the repair's outcome.
pub fn reported(action: Action, repair: Option<&str>) -> Action {
    match (action, repair) {
        (Action::ManualReviewRequired, _) => Action::ManualReviewRequired,
        (_, Some("RESTORED")) => Action::RedisRestored,
        // Refused (Redis moved after confirmation), or pending (a crash before the outcome
        // was noted, and not confirmable again): Redis was not restored by this run.
        _ => Action::RepairDeferred,
    }
}

pub fn severity(action: Action, db_stock: i64, redis_stock: Option<i64>) -> Severity {
    match action {
        Action::ManualReviewRequired => Severity::High,
        Action::RepairDeferred => Severity::Medium,
        _ if redis_stock.is_none() || discrepancy(db_stock, redis_stock).abs() >= MEDIUM_FROM => Severity::Medium,
        _ => Severity::Low,
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

/// The alerts of range `[first, last]` after product `after`, at most `per_part`; `more` is
/// set when others follow.
pub async fn page(ctx: &JobCtx, run_id: &str, first: &str, last: &str, after: Option<&str>, per_part: usize) -> Result<ChunkOutput, JobError> {
    let per_part = per_part.max(1);
    let (sql, from) = match after {
        None => (RANGE_MISMATCHES.replace("{from}", ">="), first),
        Some(after) => (RANGE_MISMATCHES.replace("{from}", ">"), after),
    };
    let mut rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(run_id)
        .bind(from)
        .bind(last)
        .bind(per_part as i64 + 1)
        .fetch_all(&ctx.db)
        .await?;
    let mut out = ChunkOutput::default();
    if rows.len() > per_part {
        rows.truncate(per_part);
        out.more = rows.last().map(|r| r.0.clone());
    }
    let now = Utc::now();
    out.records.reserve(rows.len());
    for (product_id, db_stock, redis_stock, cause, action, repair, detected_at) in rows {
        let recorded = Action::from_symbol(&action)
            .ok_or_else(|| JobError::Failed(format!("stock_sync_mismatches of {product_id}: unknown action `{action}`")))?;
        let action = reported(recorded, repair.as_deref());
        let alert = StockSyncAlert {
            event_id: derived_id(&["stock-sync-alert", run_id, &product_id]).to_string(),
            event_timestamp: now,
            product_id,
            db_stock: int(db_stock),
            redis_stock: redis_stock.map(int),
            discrepancy: int(discrepancy(db_stock, redis_stock)),
            action,
            severity: severity(action, db_stock, redis_stock),
            detected_at,
            cause,
            run_id: run_id.to_string(),
            mismatches_in_run: 0,
        };
        out.records.push(emit(alert)?);
    }
    Ok(out)
}

/// The run's summary and its run-level counts.
pub async fn finalize(ctx: &JobCtx, run: &Run) -> Result<ChunkOutput, JobError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(RUN_TOTALS).bind(&run.run_id).fetch_all(&ctx.db).await?;
    let options: Options = ctx.settings.options().map_err(JobError::Failed)?;
    let mut by_cause: BTreeMap<String, i64> = BTreeMap::new();
    let (mut restored, mut deferred, mut manual) = (0, 0, 0);
    for (cause, reported, n) in rows {
        *by_cause.entry(cause).or_insert(0) += n;
        match Action::from_symbol(&reported) {
            Some(Action::RedisRestored) => restored += n,
            Some(Action::ManualReviewRequired) => manual += n,
            _ => deferred += n,
        }
    }
    let total: i64 = by_cause.values().sum();
    let urgent = total > i64::from(options.urgent_after_mismatches);
    let severity = if urgent {
        Severity::Critical
    } else if manual > 0 {
        Severity::High
    } else if deferred > 0 || by_cause.contains_key(super::Cause::RedisKeyMissing.as_str()) {
        Severity::Medium
    } else {
        Severity::Low
    };
    if urgent {
        tracing::warn!(run_id = %run.run_id, mismatches = total, "stock-sync run is urgent: its summary is CRITICAL");
    }
    let summary = StockSyncRunSummary {
        event_id: derived_id(&["stock-sync-run-summary", &run.run_id]).to_string(),
        event_timestamp: Utc::now(),
        run_id: run.run_id.clone(),
        period: run.period.clone(),
        urgent,
        severity,
        urgent_after_mismatches: int(i64::from(options.urgent_after_mismatches)),
        mismatches: total,
        mismatches_by_cause: by_cause,
        restored,
        deferred,
        manual_review: manual,
    };
    let mut out = ChunkOutput::default();
    out.records.push(emit(summary)?);
    // The chunks' `repaired`, `casRefused` and `unresolved` describe attempts; these are the
    // run-level ones and agree with the alerts by construction (the same rows, the same rule).
    for (k, v) in [("mismatches", total), ("restored", restored), ("deferred", deferred), ("manualReview", manual), ("urgent", i64::from(urgent))] {
        out.counts.insert(k.into(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_rule() {
        use Action::{ManualReviewRequired, RedisRestored, RepairDeferred};
        assert_eq!(severity(ManualReviewRequired, -3, Some(4)), Severity::High);
        assert_eq!(severity(RepairDeferred, 5, Some(4)), Severity::Medium);
        assert_eq!(severity(RedisRestored, 3, None), Severity::Medium);
        assert_eq!(severity(RedisRestored, 30, Some(20)), Severity::Medium);
        assert_eq!(severity(RedisRestored, 20, Some(30)), Severity::Medium);
        assert_eq!(severity(RedisRestored, 25, Some(20)), Severity::Low);
        assert_eq!(discrepancy(7, None), 7);
        assert_eq!(int(i64::MAX), i32::MAX);
    }

    #[test]
    fn an_alert_says_restored_only_when_the_repair_was_applied() {
        use Action::{ManualReviewRequired, RedisRestored, RepairDeferred};
        assert_eq!(reported(RedisRestored, Some("RESTORED")), RedisRestored);
        assert_eq!(reported(RedisRestored, Some("CAS_REFUSED")), RepairDeferred);
        assert_eq!(reported(RedisRestored, None), RepairDeferred, "outcome unknown: not restored by this run's knowledge");
        assert_eq!(reported(ManualReviewRequired, Some("NOT_ATTEMPTED")), ManualReviewRequired);
    }
}
