//! The report jobs of the seed's alert policy: `stock-sync-report` (09:00, "재고 동기화 결과
//! 요약") and `daily-statistics-report` (10:00, "통계 리포트"). Each is a scheduled job of the
//! same engine that turns the run history of the last 24 hours before its fire time into one
//! `job.report` event for the Notification Service.
//!
//! **Source.** The run history the processor keeps in PostgreSQL (`job_runs`,
//! `job_run_chunks`), plus the subject job's own durable rows (`stock_sync_mismatches`,
//! `daily_statistics`). A run is in the window when it was planned in
//! `[fire time − 24 h, fire time)`.
//!
//! **Delivery guarantee.** One report per fire time under `read_committed` (E1, E3, E4): the
//! run is one chunk; its first attempt stores the report in `job_reports` (keyed by run), and
//! every attempt emits the stored body — the history keeps growing after the report's time,
//! so recomputing on a retry could send a different report under the same `eventId`.
//!
//! **Deadline.** The report's reads run in one transaction whose statements stop at the
//! run's deadline (`timeout_secs` after planning, see [`crate::jobs::deadline`]); a report
//! not built by then is not stored, and the run is TIMED_OUT with no event. Once stored, a
//! report is emitted by every attempt, whatever the deadline.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use sqlx::PgConnection;

use super::{ChunkOutput, Deadline, Job, JobCtx, JobError, JobSettings, Run};
use crate::wire::derived_id;
use crate::wire::events::{emit, JobReport, ReportType};
use crate::wire::internal::WorkItem;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StockSync,
    DailyStatistics,
}

impl Kind {
    fn report_type(self) -> ReportType {
        match self {
            Kind::StockSync => ReportType::StockSyncSummary,
            Kind::DailyStatistics => ReportType::DailyStatisticsReport,
        }
    }

    /// The job reported on.
    fn subject(self) -> &'static str {
        match self {
            Kind::StockSync => "stock-sync",
            Kind::DailyStatistics => "daily-statistics",
        }
    }
}

pub struct Report(pub Kind);

/// The stored report (JSON in `job_reports.body`) from which the event is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// Stored as its symbol, so bodies stored before it was typed read the same.
    pub report_type: ReportType,
    pub job: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub runs: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub unfinished: i32,
    pub counts: BTreeMap<String, i64>,
    pub problems: Vec<String>,
    pub title: String,
    pub text: String,
}

impl Job for Report {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::StockSync => "stock-sync-report",
            Kind::DailyStatistics => "daily-statistics-report",
        }
    }

    /// The seed's reports for people: the stock-sync summary at 09:00, the statistics report
    /// at 10:00.
    fn defaults(&self) -> JobSettings {
        let schedule = match self.0 {
            Kind::StockSync => "0 0 9 * * *",
            Kind::DailyStatistics => "0 0 10 * * *",
        };
        JobSettings { schedule: schedule.into(), timeout_secs: 300, batch_size: 1, ..JobSettings::default() }
    }

    fn plan<'a>(&'a self, _ctx: &'a JobCtx, _run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        futures::stream::once(async { Ok(vec!["report".to_string()]) }).boxed()
    }

    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(async move {
            let body = match stored(ctx, &item.run_id).await? {
                Some(b) => b,
                None => {
                    // Building reads under the run's deadline; past it nothing is stored (and
                    // so nothing is owed an event). A stored body is always emitted.
                    let made = build(ctx, self.0, item.scheduled_at).await?;
                    ctx.deadline.check()?;
                    let json = serde_json::to_value(&made).map_err(|e| JobError::Failed(format!("report body: {e}")))?;
                    sqlx::query("INSERT INTO job_reports (run_id, report_type, body) VALUES ($1, $2, $3) ON CONFLICT (run_id) DO NOTHING")
                        .bind(&item.run_id)
                        .bind(self.0.report_type().as_str())
                        .bind(json)
                        .execute(&ctx.db)
                        .await?;
                    // Another attempt may have stored its body first: emit that one.
                    stored(ctx, &item.run_id).await?.unwrap_or(made)
                }
            };
            let mut out = ChunkOutput::default();
            out.counts.insert("runsReported".into(), i64::from(body.runs));
            out.counts.insert("problems".into(), body.problems.len() as i64);
            out.records.push(emit(event(body, &item.run_id))?);
            Ok(out)
        })
    }
}

async fn stored(ctx: &JobCtx, run_id: &str) -> Result<Option<Body>, JobError> {
    let row: Option<serde_json::Value> = sqlx::query_scalar("SELECT body FROM job_reports WHERE run_id = $1")
        .bind(run_id)
        .fetch_optional(&ctx.db)
        .await?;
    row.map(|v| serde_json::from_value(v).map_err(|e| JobError::Failed(format!("stored report of {run_id}: {e}")))).transpose()
}

fn event(b: Body, run_id: &str) -> JobReport {
    JobReport {
        event_id: derived_id(&["job-report", run_id]).to_string(),
        event_timestamp: b.generated_at,
        report_type: b.report_type,
        job: b.job,
        window_start: b.window_start,
        window_end: b.window_end,
        runs: b.runs,
        succeeded: b.succeeded,
        failed: b.failed,
        unfinished: b.unfinished,
        counts: b.counts,
        problems: b.problems,
        title: b.title,
        text: b.text,
    }
}

/// One run of the subject job in the window.
#[derive(sqlx::FromRow)]
struct RunRow {
    run_id: String,
    period: String,
    finished: bool,
    failed: bool,
    timed_out: bool,
    message: Option<String>,
}

/// The report of the 24 hours before `end`, read in one transaction whose statements stop at
/// the run's deadline.
async fn build(ctx: &JobCtx, kind: Kind, end: DateTime<Utc>) -> Result<Body, JobError> {
    let start = end - TimeDelta::hours(24);
    let job = kind.subject();
    let d = ctx.deadline;
    let mut tx = d.begin(&ctx.db).await?;
    let runs: Vec<RunRow> = sqlx::query_as(
        "SELECT r.run_id, r.period, r.finalized_by IS NOT NULL AS finished,
                coalesce(bool_or(c.outcome = 'FAILED'), false) AS failed,
                coalesce(bool_or(c.outcome = 'TIMED_OUT'), false) AS timed_out,
                max(c.message) FILTER (WHERE c.outcome IN ('FAILED', 'TIMED_OUT')) AS message
         FROM job_runs r LEFT JOIN job_run_chunks c USING (run_id)
         WHERE r.job = $1 AND r.planned_at >= $2 AND r.planned_at < $3
         GROUP BY r.run_id, r.period, r.finalized_by, r.planned_at
         ORDER BY r.planned_at",
    )
    .bind(job)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| d.sql(e))?;
    d.limit(&mut tx).await?;
    let summed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.key, sum(e.value::bigint)::bigint
         FROM job_runs r JOIN job_run_chunks c USING (run_id), jsonb_each_text(c.counts) AS e(key, value)
         WHERE r.job = $1 AND r.planned_at >= $2 AND r.planned_at < $3 AND c.outcome = 'APPLIED'
         GROUP BY e.key",
    )
    .bind(job)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| d.sql(e))?;
    let mut counts: BTreeMap<String, i64> = summed.into_iter().collect();
    let mut problems = Vec::new();
    let (mut succeeded, mut failed, mut unfinished) = (0, 0, 0);
    for r in &runs {
        if r.failed || r.timed_out {
            failed += 1;
            let outcome = if r.failed { "FAILED" } else { "TIMED_OUT" };
            problems.push(format!("run {} ({}) {}: {}", r.run_id, r.period, outcome, r.message.as_deref().unwrap_or("no message")));
        } else if r.finished {
            succeeded += 1;
        } else {
            unfinished += 1;
        }
    }
    let local = |t: DateTime<Utc>| t.with_timezone(&ctx.tz).format("%Y-%m-%d %H:%M").to_string();
    let mut lines = vec![format!(
        "{} runs of {job}: {succeeded} succeeded, {failed} failed or timed out, {unfinished} unfinished",
        runs.len()
    )];
    let title = match kind {
        Kind::StockSync => {
            d.limit(&mut tx).await?;
            let (extra, detail) = stock_sync_figures(&mut tx, d, start, end, &mut problems).await?;
            counts.extend(extra);
            lines.extend(detail);
            format!("Stock sync summary {} – {} ({})", local(start), local(end), ctx.tz)
        }
        Kind::DailyStatistics => {
            let date = (end.with_timezone(&ctx.tz) - TimeDelta::days(1)).date_naive();
            d.limit(&mut tx).await?;
            let (extra, detail) = daily_figures(&mut tx, d, date, &mut problems).await?;
            counts.extend(extra);
            lines.extend(detail);
            format!("Daily statistics report for {date} ({})", ctx.tz)
        }
    };
    tx.commit().await?;
    if !problems.is_empty() {
        lines.push(format!("{} problem(s):", problems.len()));
        lines.extend(problems.iter().map(|p| format!("- {p}")));
    }
    Ok(Body {
        report_type: kind.report_type(),
        job: job.into(),
        window_start: start,
        window_end: end,
        generated_at: Utc::now(),
        runs: i32::try_from(runs.len()).unwrap_or(i32::MAX),
        succeeded,
        failed,
        unfinished,
        counts,
        problems,
        title,
        text: lines.join("\n"),
    })
}

#[derive(sqlx::FromRow)]
struct MismatchRow {
    product_id: String,
    cause: String,
    db_stock: i64,
    redis_stock: Option<i64>,
    /// Manual-review rows in the window, listed or not.
    total: i64,
}

/// Manual-review products listed one by one in a report; more are counted. A Redis that lost
/// every key records a mismatch per product: the report stays a page, and its memory small.
const LISTED_PROBLEMS: i64 = 100;

/// Mismatches recorded by the window's stock-sync runs: by cause and by repair outcome
/// (counted in PostgreSQL); each product needing manual review is a problem (the first
/// [`LISTED_PROBLEMS`] listed, the rest counted).
async fn stock_sync_figures(
    tx: &mut PgConnection,
    d: Deadline,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    problems: &mut Vec<String>,
) -> Result<(BTreeMap<String, i64>, Vec<String>), JobError> {
    const WINDOW: &str = "FROM stock_sync_mismatches m JOIN job_runs r USING (run_id)
         WHERE r.job = 'stock-sync' AND r.planned_at >= $1 AND r.planned_at < $2";
    let totals: Vec<(String, Option<String>, i64)> =
        sqlx::query_as(&format!("SELECT m.cause, m.repair, count(*) {WINDOW} GROUP BY 1, 2 ORDER BY 1, 2"))
            .bind(start)
            .bind(end)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| d.sql(e))?;
    d.limit(&mut *tx).await?;
    let manual: Vec<MismatchRow> = sqlx::query_as(&format!(
        "SELECT m.product_id, m.cause, m.db_stock, m.redis_stock, count(*) OVER () AS total
         {WINDOW} AND m.action = 'MANUAL_REVIEW_REQUIRED' ORDER BY m.detected_at, m.product_id LIMIT $3"
    ))
    .bind(start)
    .bind(end)
    .bind(LISTED_PROBLEMS)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| d.sql(e))?;
    let mut counts = BTreeMap::new();
    let mut recorded = 0;
    for (cause, repair, n) in &totals {
        recorded += n;
        *counts.entry(format!("cause.{cause}")).or_insert(0) += n;
        *counts.entry(format!("repair.{}", repair.as_deref().unwrap_or("PENDING"))).or_insert(0) += n;
    }
    counts.insert("mismatchesRecorded".to_string(), recorded);
    for MismatchRow { product_id: product, cause, db_stock: db, redis_stock: redis, .. } in &manual {
        problems.push(format!(
            "product {product}: {cause}, DB {db}, Redis {} — manual review required",
            redis.map_or("missing".into(), |r| r.to_string())
        ));
    }
    let unlisted = manual.first().map_or(0, |m| m.total) - manual.len() as i64;
    if unlisted > 0 {
        problems.push(format!("{unlisted} more product(s) need manual review (see stock_sync_mismatches)"));
    }
    let restored = counts.get("repair.RESTORED").copied().unwrap_or(0);
    let detail = vec![format!("{recorded} mismatch(es) recorded, {restored} restored in Redis")];
    Ok((counts, detail))
}

/// Money as stored (`numeric(…,2)`), always with its two decimals: exact, never a float.
fn money(d: Decimal) -> String {
    let mut d = d;
    d.rescale(2);
    d.to_string()
}

/// The stored figures of `date`; their absence is a problem.
async fn daily_figures(
    tx: &mut PgConnection,
    d: Deadline,
    date: chrono::NaiveDate,
    problems: &mut Vec<String>,
) -> Result<(BTreeMap<String, i64>, Vec<String>), JobError> {
    let row: Option<(i64, Decimal, Decimal, i64, Decimal)> = sqlx::query_as(
        "SELECT total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount FROM daily_statistics WHERE date = $1",
    )
    .bind(date)
    .fetch_optional(tx)
    .await
    .map_err(|e| d.sql(e))?;
    let mut counts = BTreeMap::new();
    let detail = match row {
        Some((orders, sales, avg, cancelled, refunds)) => {
            counts.insert("totalOrders".to_string(), orders);
            counts.insert("cancelledOrders".to_string(), cancelled);
            vec![format!(
                "{date}: {orders} orders, sales {}, average order {}, {cancelled} cancelled, refunds {}",
                money(sales),
                money(avg),
                money(refunds)
            )]
        }
        None => {
            problems.push(format!("no statistics for {date}: its aggregation has not run or failed"));
            vec![format!("{date}: not aggregated")]
        }
    };
    Ok((counts, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_keeps_its_cents_exactly() {
        assert_eq!(money(Decimal::ZERO), "0.00");
        assert_eq!(money(Decimal::new(1234567890123, 2)), "12345678901.23");
        assert_eq!(money(Decimal::new(5, 1)), "0.50");
    }
}
