//! A run's page (`/runs/{run_id}`): its result from the run history, and from PostgreSQL what
//! its chunks recorded (outcome, the instance that applied each, when, counts, messages), how
//! many events its recorded decisions make per topic, and the job's own record: stock-sync's
//! mismatches by cause and repair, daily-statistics' figures of the date.
//!
//! Read-only. Event counts come from the decisions (the events are built from them and leave
//! with the chunk's Kafka transaction), so for a run still going they may run ahead of what
//! downstream consumers see.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use sqlx::Row;

use super::{authenticate, page, when, Console};
use crate::ops::history;

/// Mismatch rows listed on a stock-sync run's page (the counts cover all of them).
const MISMATCHES_SHOWN: i64 = 100;

struct Chunk {
    index: i32,
    outcome: String,
    counts: String,
    message: Option<String>,
    applied_at: DateTime<Utc>,
    applied_by: Option<String>,
}

async fn chunks(db: &sqlx::PgPool, run_id: &str) -> Result<Vec<Chunk>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT chunk_index, outcome, counts::text AS counts, message, applied_at, applied_by
         FROM job_run_chunks WHERE run_id = $1 ORDER BY chunk_index",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Chunk {
                index: r.try_get("chunk_index")?,
                outcome: r.try_get("outcome")?,
                counts: r.try_get("counts")?,
                message: r.try_get("message")?,
                applied_at: r.try_get("applied_at")?,
                applied_by: r.try_get("applied_by")?,
            })
        })
        .collect()
}

/// (topic, events) the run's recorded decisions make.
async fn events(console: &Console, job: &str, run_id: &str, ended: bool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let topic = |name: &str| format!("{}{name}", console.settings.topics.prefix);
    Ok(match job {
        "order-expiration" => {
            let n: i64 = sqlx::query_scalar("SELECT COALESCE(sum(cardinality(order_ids)), 0)::bigint FROM order_expirations WHERE run_id = $1")
                .bind(run_id)
                .fetch_one(&console.db)
                .await?;
            vec![(topic("order.cancelled"), n), (topic("order.expiration.notification"), n)]
        }
        "stock-sync" => {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_sync_mismatch_rows WHERE run_id = $1").bind(run_id).fetch_one(&console.db).await?;
            vec![(topic("stock.sync.alert"), n), (topic("stock.sync.run.summary"), i64::from(ended))]
        }
        "daily-statistics" => {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_statistics WHERE run_id = $1").bind(run_id).fetch_one(&console.db).await?;
            vec![(topic("daily.statistics"), n)]
        }
        _ => Vec::new(),
    })
}

/// stock-sync: mismatches by (cause, action, repair) with their number, and the first rows.
async fn mismatches(db: &sqlx::PgPool, run_id: &str) -> Result<Markup, sqlx::Error> {
    let groups = sqlx::query(
        "SELECT cause, action, COALESCE(repair, 'PENDING') AS repair, count(*) AS n
         FROM stock_sync_mismatches WHERE run_id = $1 GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    let rows = sqlx::query(
        "SELECT product_id, db_stock, redis_stock, cause, action, COALESCE(repair, 'PENDING') AS repair
         FROM stock_sync_mismatches WHERE run_id = $1 ORDER BY product_id LIMIT $2",
    )
    .bind(run_id)
    .bind(MISMATCHES_SHOWN)
    .fetch_all(db)
    .await?;
    Ok(html! {
        h2 { "Mismatches" }
        @if groups.is_empty() { p.muted { "none recorded" } } @else {
            table #mismatch-causes {
                thead { tr { th { "cause" } th { "action" } th { "repair" } th { "products" } } }
                tbody { @for g in &groups {
                    tr {
                        td { (g.try_get::<String, _>("cause")?) }
                        td { (g.try_get::<String, _>("action")?) }
                        td { (g.try_get::<String, _>("repair")?) }
                        td.count { (g.try_get::<i64, _>("n")?) }
                    }
                } }
            }
            p.muted { "first " (rows.len()) " by product id" }
            table #mismatches {
                thead { tr { th { "product" } th { "expected (DB)" } th { "Redis" } th { "cause" } th { "action" } th { "repair" } } }
                tbody { @for m in &rows {
                    tr {
                        td { code { (m.try_get::<String, _>("product_id")?) } }
                        td { (m.try_get::<i64, _>("db_stock")?) }
                        td { @match m.try_get::<Option<i64>, _>("redis_stock")? { Some(v) => (v), None => span.muted { "missing" } } }
                        td { (m.try_get::<String, _>("cause")?) }
                        td { (m.try_get::<String, _>("action")?) }
                        td { (m.try_get::<String, _>("repair")?) }
                    }
                } }
            }
        }
    })
}

/// daily-statistics: the stored figures of the run's dates, and of its period's date when a
/// later run took it over.
async fn figures(db: &sqlx::PgPool, run_id: &str, period: Option<&str>) -> Result<Markup, sqlx::Error> {
    let date = period.and_then(|p| chrono::NaiveDate::parse_from_str(p, "%Y-%m-%d").ok());
    let rows = sqlx::query(
        "SELECT date::text AS date, run_id, total_orders, total_sales::text AS total_sales,
                avg_order_amount::text AS avg_order_amount, cancelled_orders,
                refund_amount::text AS refund_amount, top_products::text AS top_products, generated_at
         FROM daily_statistics WHERE run_id = $1 OR date = $2 ORDER BY date",
    )
    .bind(run_id)
    .bind(date)
    .fetch_all(db)
    .await?;
    Ok(html! {
        h2 { "Figures" }
        @if rows.is_empty() { p.muted { "no figures stored for this run" } } @else {
            table #figures {
                thead { tr { th { "date" } th { "orders" } th { "sales" } th { "average" } th { "cancelled" } th { "refunds" } th { "top products" } th { "stored by" } } }
                tbody { @for r in &rows {
                    @let by: String = r.try_get("run_id")?;
                    tr {
                        td { (r.try_get::<String, _>("date")?) }
                        td { (r.try_get::<i64, _>("total_orders")?) }
                        td.money { (r.try_get::<String, _>("total_sales")?) }
                        td.money { (r.try_get::<String, _>("avg_order_amount")?) }
                        td { (r.try_get::<i64, _>("cancelled_orders")?) }
                        td.money { (r.try_get::<String, _>("refund_amount")?) }
                        td { code { (r.try_get::<String, _>("top_products")?) } }
                        td { @if by == run_id { "this run" } @else { a href=(format!("/runs/{by}")) { "a later run" } } }
                    }
                } }
            }
        }
    })
}

pub(super) async fn run_page(State(console): State<Arc<Console>>, headers: HeaderMap, Path(run_id): Path<String>) -> Response {
    if let Err(r) = authenticate(&console, &headers) {
        return *r;
    }
    match render(&console, &run_id).await {
        Ok(Some(body)) => Html(page("Run", &console, body).into_string()).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no run `{run_id}` in the history or in PostgreSQL\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("PostgreSQL: {e}\n")).into_response(),
    }
}

async fn render(console: &Console, run_id: &str) -> Result<Option<Markup>, sqlx::Error> {
    let tz = console.tz;
    let run = console.runs().iter().find(|r| r.run_id == run_id).cloned();
    let planned = sqlx::query("SELECT job, period, chunk_count, planned_at FROM job_runs WHERE run_id = $1").bind(run_id).fetch_optional(&console.db).await?;
    let chunks = chunks(&console.db, run_id).await?;
    let job = match (&run, &planned) {
        (Some(r), _) => r.job.clone(),
        (None, Some(p)) => p.try_get("job")?,
        (None, None) => return Ok(None),
    };
    let period = match (&run, &planned) {
        (Some(r), _) => Some(r.period.clone()),
        (None, Some(p)) => Some(p.try_get("period")?),
        _ => None,
    };
    let ended = run.as_ref().is_some_and(|r| r.outcome != "RUNNING");
    let events = events(console, &job, run_id, ended).await?;
    let own = match job.as_str() {
        "stock-sync" => Some(mismatches(&console.db, run_id).await?),
        "daily-statistics" => Some(figures(&console.db, run_id, period.as_deref()).await?),
        _ => None,
    };
    let timeout = console.settings.job(&job).map(|s| s.timeout_secs);
    Ok(Some(html! {
        table #run.facts {
            tr { th { "run" } td { code { (run_id) } } }
            tr { th { "job" } td { a href=(format!("/runs?job={job}")) { (job) } } }
            tr { th { "period" } td { code { (period.clone().unwrap_or_default()) } } }
            @if let Some(r) = &run {
                tr { th { "trigger" } td { (r.trigger) " · tick " a href=(format!("/ticks/{}", r.tick_id)) { code { (r.tick_id) } } } }
                tr { th { "outcome" } td #outcome class=(format!("outcome-{}", r.outcome)) { (r.outcome) } }
                tr { th { "started" } td { (when(r.started_at, tz)) } }
                tr { th { "duration / timeout" } td { (history::duration_text(r)) " / " (timeout.map_or("?".to_string(), |t| format!("{t} s"))) } }
                tr { th { "counts" } td { code { (history::counts_text(r)) } } }
                @if let Some(m) = &r.message { tr { th { "message" } td { (m) } } }
            } @else {
                tr { th { "outcome" } td.muted { "not in the run history of the last " (super::HISTORY_DAYS) " days" } }
            }
            @if let Some(p) = &planned {
                tr { th { "planned" } td { (when(p.try_get("planned_at")?, tz)) " · " (p.try_get::<i32, _>("chunk_count")?) " chunk(s)" } }
            }
        }
        h2 { "Events" }
        @if events.is_empty() { p.muted { "this job emits no events of its own" } } @else {
            table #events {
                thead { tr { th { "topic" } th { "events" } } }
                tbody { @for (t, n) in &events { tr { td { code { (t) } } td.count { (n) } } } }
            }
            p.muted { "counted from the decisions recorded in PostgreSQL; each leaves with its chunk's Kafka transaction" }
        }
        h2 { "Chunks" }
        @if chunks.is_empty() { p.muted { "none recorded in PostgreSQL" } } @else {
            table #chunks {
                thead { tr { th { "chunk" } th { "outcome" } th { "applied by" } th { "at" } th { "counts" } th { "message" } } }
                tbody { @for c in &chunks {
                    tr {
                        td { (c.index) }
                        td class=(format!("outcome-{}", c.outcome)) { (c.outcome) }
                        td { (c.applied_by.clone().unwrap_or_else(|| "?".into())) }
                        td { (when(c.applied_at, tz)) }
                        td { code { (c.counts) } }
                        td { (c.message.clone().unwrap_or_default()) }
                    }
                } }
            }
        }
        @if let Some(own) = own { (own) }
    }))
}
