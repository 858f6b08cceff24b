//! `daily-statistics`: aggregates one calendar day of sales and emits one `daily.statistics`
//! event per date (SPEC §2.3), remembering every emitted date in `daily_statistics` so that
//! "already aggregated?" has a durable answer (seed: "이미 집계된 날짜는 skip").
//!
//! **Period.** A tick stands for the calendar date before its scheduled time, read in
//! `scheduler.time_zone`: the tick of 00:00 on the 26th aggregates the 25th. A tick may name
//! the date instead (`date=YYYY-MM-DD`, e.g. `trigger daily-statistics --param date=…`); a
//! date that is not over at the tick's time is an impossible value. Every date matters, so
//! ticks of this job never coalesce.
//!
//! **Plan** (reads only) makes one chunk whose ids are the dates to aggregate, oldest first:
//! the run's date, preceded by every date of the 6 days before it that has no row yet. So a
//! midnight whose tick never came (everything was down, or the producer's catch-up was
//! bounded) is covered by the next run, at most 7 dates per run. A consequence worth knowing:
//! the very first run on an empty table also emits the 6 days before its date. The dates are
//! one chunk, not one chunk per date, because chunks are spread over work-item partitions
//! and applied in any order, while consumers are promised dates in date order: one chunk
//! emits its dates oldest first in one transaction, and because every run's list holds all
//! the not-yet-aggregated dates before its own, whichever run is applied first emits the
//! oldest dates and later runs only newer ones. That order is exact for one processor whose
//! transactions commit; when two instances apply runs side by side, or a run's transaction
//! is retried after a newer run committed, each date is still emitted once but dates of
//! different runs may arrive out of order (consumers should key by `date`).
//!
//! **Apply** (one chunk):
//! 1. finds the chunk's dates that have no row (a date aggregated meanwhile by another run is
//!    skipped and counted `datesSkipped`);
//! 2. computes each such date's figures with two set-based statements in one REPEATABLE READ
//!    snapshot (so the totals and the top 10 describe the same data), over the local day
//!    `[00:00, 24:00)` converted to UTC instants — 23 or 25 hours on DST days;
//! 3. writes them all in one statement, `INSERT … ON CONFLICT (date) DO NOTHING`, with this
//!    run as owner, and reads back in the same statement every row this run owns;
//! 4. emits one event per owned row, built from the stored row, in date order.
//!
//! **Delivery guarantee.** Exactly one `daily.statistics` per date under `read_committed`
//! (E1), also under duplicate ticks (E4) and replay (E3): the date's primary key gives each
//! date one owning run, and only the owner emits — every attempt of its chunk reads the same
//! stored row back and emits the same record (same `eventId`, UUIDv5 of the date, and
//! `eventTimestamp` = the row's `generated_at`), and only the attempt whose Kafka transaction
//! commits makes it visible. A forced re-run (MANUAL tick with `force=true`, a new run id)
//! recomputes its own date, takes the row over and emits it again with the same `eventId`,
//! so consumers that deduplicate by id keep the first version while consumers keyed by date
//! take the new one; dates it only catches up are never re-emitted.
//!
//! **Deadline.** The run's deadline (600 s after planning by default) holds inside the chunk:
//! each aggregation statement and the write get a statement timeout of the time left (see
//! [`crate::jobs::deadline`]). A chunk stopped there stores nothing new — the dates left are
//! covered by the next run's window — and still emits every row its run already owns (an
//! earlier attempt's), recorded TIMED_OUT (counts `datesLeft`). A chunk whose rows were
//! written but whose Kafka transaction failed is completed by its retry whatever the
//! deadline (e.g. after a broker outage longer than the timeout): the retry reads its rows
//! back and emits them, so a stored date is never left unsent.
//!
//! **Figures** (all money exact: NUMERIC ↔ `rust_decimal` ↔ Avro decimal, never a float):
//! `totalOrders` orders created that day; `totalSales` sum of `total_amount` of orders paid
//! that day (whatever their status now); `avgOrderAmount` that sum / the number of those
//! orders, rounded half-even to cents; `cancelledOrders` orders cancelled that day;
//! `refundAmount` sum of `refunded_amount` refunded that day; `topProducts` the 10 products
//! with the largest quantity in orders paid that day, ties broken by product id in byte
//! order. A day without orders is emitted with zeros, `avgOrderAmount` 0.00 and no top
//! products: "nothing sold" is a fact Analytics should receive, not a gap.
//!
//! **Time zone.** Each row stores the zone its date was counted in (`time_zone`, from
//! `scheduler.time_zone` when the figures were computed) and every event of the row names it
//! (`timeZone`), so a consumer never has to guess which midnight bounded the day.
//!
//! Run-result counts: `datesAggregated` (dates this run emitted), `datesSkipped` (dates in
//! its list owned by another run), `orders` (sum of `totalOrders` of the emitted dates), and
//! for a chunk stopped at the deadline `datesLeft` (dates it did not aggregate).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rust_decimal::Decimal;

use super::{CatchUp, Overlap, ChunkOutput, Deadline, Emit, Job, JobCtx, JobError, JobSettings, Parameter, Run};
use crate::wire::derived_id;
use crate::wire::events::{self, emit};
use crate::wire::internal::WorkItem;
use crate::wire::tick::{Tick, Trigger};

/// One entry of `topProducts`, also the shape stored in `daily_statistics.top_products`.
pub use crate::wire::events::TopProduct;

/// `kind` part of the derived event id.
pub const EVENT_KIND: &str = "daily-statistics";
/// Dates one run covers at most: its own and the 6 before it.
pub const WINDOW_DAYS: u64 = 7;
/// Length of the top-products list.
pub const TOP_N: i64 = 10;
/// Tick parameters this job accepts besides `force`.
const PARAMETERS: [Parameter; 1] =
    [Parameter { name: "date", about: "YYYY-MM-DD: the date to count instead of yesterday (2000 or later, already over)", check: check_date }];

/// A `date` parameter's own check; whether the day is over depends on the tick (see `period`).
fn check_date(v: &str) -> Result<(), String> {
    match parse_date(v) {
        Some(d) if d >= NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN) => Ok(()),
        Some(_) => Err("before 2000".into()),
        None => Err("not a date (YYYY-MM-DD)".into()),
    }
}
/// Wire format of a date (period, work-item ids; the event's `date` and key are written alike).
const DATE_FORMAT: &str = "%Y-%m-%d";

/// The event id of a date: one id per date whatever the run, so a consumer deduplicating by
/// id never sees a date twice.
pub fn event_id(date: NaiveDate) -> String {
    derived_id(&[EVENT_KIND, &date.to_string()]).to_string()
}

/// "Yesterday" of `at` in `tz`.
pub fn previous_date(at: DateTime<Utc>, tz: Tz) -> Option<NaiveDate> {
    at.with_timezone(&tz).date_naive().pred_opt()
}

/// The UTC instants `[start, end)` of the local calendar day `date` in `tz`.
pub fn day_bounds(date: NaiveDate, tz: Tz) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    Some((day_start(date, tz)?, day_start(date.succ_opt()?, tz)?))
}

/// The first instant at which local clocks in `tz` show `date`. Midnight itself may be
/// ambiguous (clocks fall back over it: the day starts at its first occurrence) or may not
/// exist (clocks jump forward at 00:00, e.g. America/Santiago: the day starts where the gap
/// ends, the first local minute that exists — transitions are on whole minutes).
fn day_start(date: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    let midnight = date.and_time(NaiveTime::MIN);
    (0..=24 * 60)
        .find_map(|m| tz.from_local_datetime(&midnight.checked_add_signed(TimeDelta::minutes(m))?).earliest())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, DATE_FORMAT).ok()
}

/// Whether a run re-does its own date: the processor's definition of a forced re-run.
fn forced(trigger: &str, parameters: &BTreeMap<String, String>) -> bool {
    trigger == Trigger::Manual.as_str() && parameters.get("force").is_some_and(|v| v == "true")
}

/// The dates a run of `date` covers, oldest first: the dates of the window before it that
/// have no row (`present` holds those that have one), then `date` itself.
pub fn dates_to_cover(date: NaiveDate, present: &BTreeSet<NaiveDate>) -> Vec<NaiveDate> {
    let first = date.checked_sub_days(Days::new(WINDOW_DAYS - 1)).unwrap_or(date);
    first.iter_days().take_while(|d| *d < date).filter(|d| !present.contains(d)).chain(std::iter::once(date)).collect()
}

/// `total / count` rounded half-even to cents, exactly (integer arithmetic on cents); 0.00
/// when nothing was paid. `None` if `total` has more than 2 decimals (not a NUMERIC(15,2) sum).
pub fn average_half_even(total: Decimal, count: i64) -> Option<Decimal> {
    if count <= 0 {
        return Some(Decimal::new(0, 2));
    }
    let scale = total.scale();
    if scale > 2 {
        return None;
    }
    let cents = total.mantissa().checked_mul(10i128.pow(2 - scale))?;
    let n = i128::from(count);
    let (q, r) = (cents / n, cents % n);
    // |r| < n, so 2|r| compares the remainder with half a cent without leaving integers.
    let away = match (2 * r.abs()).cmp(&n) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => q % 2 != 0,
        std::cmp::Ordering::Less => false,
    };
    let q = if away { q + cents.signum() } else { q };
    Decimal::try_from_i128_with_scale(q, 2).ok()
}

/// A date's figures as computed, before they are stored.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    date: NaiveDate,
    total_orders: i64,
    total_sales: Decimal,
    avg_order_amount: Decimal,
    cancelled_orders: i64,
    refund_amount: Decimal,
    top_products: Vec<TopProduct>,
}

/// A `daily_statistics` row: the durable state every event is built from.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stored {
    date: NaiveDate,
    event_id: String,
    total_orders: i64,
    total_sales: Decimal,
    avg_order_amount: Decimal,
    cancelled_orders: i64,
    refund_amount: Decimal,
    top_products: String,
    generated_at: DateTime<Utc>,
    /// IANA name of the zone the date was counted in (`timeZone` of the event).
    time_zone: String,
}

/// $1, $2: the day's UTC bounds. One pass over the orders touching the day in any of the four
/// ways (each range can use its own index; a whole-table day is one sequential scan), the
/// figures split by FILTER.
const TOTALS: &str = "
SELECT
    count(*) FILTER (WHERE created_at >= $1 AND created_at < $2),
    count(*) FILTER (WHERE paid_at >= $1 AND paid_at < $2),
    coalesce(sum(total_amount) FILTER (WHERE paid_at >= $1 AND paid_at < $2), 0),
    count(*) FILTER (WHERE cancelled_at >= $1 AND cancelled_at < $2),
    coalesce(sum(refunded_amount) FILTER (WHERE refunded_at >= $1 AND refunded_at < $2), 0)
FROM orders
WHERE (created_at >= $1 AND created_at < $2)
   OR (paid_at >= $1 AND paid_at < $2)
   OR (cancelled_at >= $1 AND cancelled_at < $2)
   OR (refunded_at >= $1 AND refunded_at < $2)";

/// $1, $2: the day's UTC bounds, $3 the list length. Names are joined after the limit (ten
/// lookups, not one per product sold). COLLATE \"C\": ties break in byte order whatever the
/// database's locale.
const TOP_PRODUCTS: &str = "
SELECT t.product_id, p.name, t.sold
FROM (
    SELECT i.product_id, sum(i.quantity)::bigint AS sold
    FROM order_items i
    JOIN orders o ON o.id = i.order_id
    WHERE o.paid_at >= $1 AND o.paid_at < $2
    GROUP BY i.product_id
    ORDER BY sold DESC, i.product_id COLLATE \"C\"
    LIMIT $3
) t
JOIN products p ON p.id = t.product_id
ORDER BY t.sold DESC, t.product_id COLLATE \"C\"";

/// Writes the computed dates and returns every row this run owns among the chunk's dates.
/// $1 run id; $2..$9 the computed figures as parallel arrays; $10 all the chunk's dates;
/// $11 the date a forced re-run takes over (NULL otherwise: then a conflict changes nothing);
/// $12 the time zone the figures were counted in.
/// One statement, so it is atomic: if it fails, nothing was written. `earlier` reads the
/// statement's snapshot, so it holds the rows an earlier attempt of this run wrote and never
/// those `written` adds: their union is each owned row once.
const STORE: &str = "
WITH input AS (
    SELECT * FROM unnest($2::date[], $3::bigint[], $4::numeric[], $5::numeric[], $6::bigint[], $7::numeric[], $8::text[], $9::text[])
        AS t(date, total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount, top_products, event_id)
), written AS (
    INSERT INTO daily_statistics AS s
        (date, run_id, event_id, total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount, top_products, generated_at, time_zone)
    SELECT date, $1, event_id::uuid, total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount, top_products::jsonb, now(), $12
    FROM input
    ON CONFLICT (date) DO UPDATE SET
        run_id = EXCLUDED.run_id, total_orders = EXCLUDED.total_orders, total_sales = EXCLUDED.total_sales,
        avg_order_amount = EXCLUDED.avg_order_amount, cancelled_orders = EXCLUDED.cancelled_orders,
        refund_amount = EXCLUDED.refund_amount, top_products = EXCLUDED.top_products, generated_at = EXCLUDED.generated_at,
        time_zone = EXCLUDED.time_zone
    WHERE s.date = $11 AND s.run_id <> EXCLUDED.run_id
    RETURNING s.date, s.event_id, s.total_orders, s.total_sales, s.avg_order_amount, s.cancelled_orders, s.refund_amount,
              s.top_products, s.generated_at, s.time_zone
), earlier AS (
    SELECT date, event_id, total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount, top_products, generated_at,
           time_zone
    FROM daily_statistics WHERE date = ANY($10) AND run_id = $1
)
SELECT date, event_id::text AS event_id, total_orders, total_sales, avg_order_amount, cancelled_orders, refund_amount,
       top_products::text AS top_products, generated_at, time_zone
FROM (SELECT * FROM written UNION ALL SELECT * FROM earlier) mine
ORDER BY date";

pub struct DailyStatistics;

impl Job for DailyStatistics {
    fn name(&self) -> &'static str {
        "daily-statistics"
    }

    /// At midnight, one date per chunk, 10 minutes to run; after downtime every missed
    /// midnight runs, up to a week, one after another (each date is its own period, so none
    /// may be skipped while another runs).
    fn defaults(&self) -> JobSettings {
        JobSettings {
            schedule: "0 0 0 * * *".into(),
            timeout_secs: 600,
            batch_size: 1,
            catch_up: CatchUp::All,
            max_catch_up: 7,
            overlap: Overlap::BufferAll,
            ..JobSettings::default()
        }
    }

    fn period(&self, tick: &Tick, tz: Tz) -> Result<String, JobError> {
        let date = match tick.parameters.get("date") {
            Some(v) => {
                let date =
                    parse_date(v).ok_or_else(|| JobError::InvalidTick(format!("parameter `date` = `{v}` is not a date (YYYY-MM-DD)")))?;
                let (_, end) =
                    day_bounds(date, tz).ok_or_else(|| JobError::InvalidTick(format!("parameter `date` = `{v}` is out of range")))?;
                // Aggregating a day that is not over would freeze partial figures for good.
                if end > tick.scheduled_at {
                    return Err(JobError::InvalidTick(format!(
                        "parameter `date` = {date} is not over at scheduledAt {} ({tz})",
                        tick.scheduled_at.to_rfc3339()
                    )));
                }
                date
            }
            None => previous_date(tick.scheduled_at, tz)
                .ok_or_else(|| JobError::InvalidTick(format!("scheduledAt {} has no previous date", tick.scheduled_at.to_rfc3339())))?,
        };
        Ok(date.format(DATE_FORMAT).to_string())
    }

    fn parameters(&self) -> &'static [Parameter] {
        &PARAMETERS
    }

    fn coalesce(&self) -> bool {
        false
    }

    fn plan<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        futures::stream::once(plan_dates(ctx, run))
            .map(|dates| dates.map(|ds| ds.iter().map(|d| d.format(DATE_FORMAT).to_string()).collect()))
            .boxed()
    }

    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(apply_dates(ctx, item))
    }
}

async fn plan_dates(ctx: &JobCtx, run: &Run) -> Result<Vec<NaiveDate>, JobError> {
    let date = parse_date(&run.period).ok_or_else(|| JobError::Failed(format!("period `{}` is not a date", run.period)))?;
    let first = date.checked_sub_days(Days::new(WINDOW_DAYS - 1)).unwrap_or(date);
    let present: Vec<NaiveDate> = sqlx::query_scalar("SELECT date FROM daily_statistics WHERE date >= $1 AND date < $2")
        .bind(first)
        .bind(date)
        .fetch_all(&ctx.db)
        .await?;
    Ok(dates_to_cover(date, &present.into_iter().collect()))
}

async fn apply_dates(ctx: &JobCtx, item: &WorkItem) -> Result<ChunkOutput, JobError> {
    let dates: Vec<NaiveDate> = item
        .ids
        .iter()
        .map(|id| parse_date(id).ok_or_else(|| JobError::Failed(format!("work item id `{id}` is not a date"))))
        .collect::<Result<_, _>>()?;
    let takeover = if forced(&item.trigger, &item.parameters) {
        Some(parse_date(&item.period).ok_or_else(|| JobError::Failed(format!("period `{}` is not a date", item.period)))?)
    } else {
        None
    };

    // 1. Which dates need figures: no row yet, or the date a forced re-run takes over.
    let owners: Vec<(NaiveDate, String)> =
        sqlx::query_as("SELECT date, run_id FROM daily_statistics WHERE date = ANY($1)").bind(&dates).fetch_all(&ctx.db).await?;
    let owners: BTreeMap<NaiveDate, String> = owners.into_iter().collect();
    let todo = dates.iter().filter(|d| match owners.get(d) {
        None => true,
        Some(owner) => takeover == Some(**d) && *owner != item.run_id,
    });

    // 2. Figures, all of them before any write: a date that cannot be stored or emitted
    //    fails the chunk while nothing has changed yet, so no date is left stored but unsent.
    //    The run's deadline cuts the computing (and the write, 3.): then this attempt stores
    //    nothing, and the dates left are covered by the next run's window.
    let mut figures = Vec::new();
    let mut cut = false;
    for date in todo {
        let f = match aggregate(ctx, *date).await {
            Ok(f) => f,
            Err(JobError::DeadlineReached(_)) => {
                cut = true;
                break;
            }
            Err(e) => return Err(e),
        };
        // The event the row will become, made now only to check that its money fits the
        // schema's decimals; its time does not matter here.
        events::value_of(&f.event(event_id(*date), Utc::now(), ctx.tz.name().into())).map_err(|e| JobError::Failed(format!("{date}: {e}")))?;
        figures.push(f);
    }

    // 3. Write and read back what this run owns, the write under the deadline. Cut (or with
    //    nothing to write), only read back, without a limit: rows an earlier attempt of this
    //    run wrote are effects made, and are emitted whatever the deadline.
    let write_by = if figures.is_empty() { Deadline::none() } else { ctx.deadline };
    let rows = match cut {
        false => match store(ctx, write_by, &item.run_id, &dates, &figures, takeover).await {
            Err(JobError::DeadlineReached(_)) => {
                cut = true;
                store(ctx, Deadline::none(), &item.run_id, &dates, &[], takeover).await?
            }
            r => r?,
        },
        true => store(ctx, Deadline::none(), &item.run_id, &dates, &[], takeover).await?,
    };

    // 4. Events from the stored rows. Past the write, a failure here means a row this job
    //    wrote cannot be read as written: recorded FAILED, naming the remedy.
    let mut out = ChunkOutput::default();
    for row in &rows {
        out.records.push(event(row).map_err(|e| {
            JobError::Failed(format!("{}: the stored row cannot be emitted ({e}); repair it and force a re-run of the date", row.date))
        })?);
    }
    let emitted = rows.len() as i64;
    out.counts.insert("datesAggregated".into(), emitted);
    out.counts.insert("orders".into(), rows.iter().map(|r| r.total_orders).sum());
    if cut {
        // The dates neither emitted nor owned by another run are left for the next run.
        let others = dates.iter().filter(|d| owners.get(d).is_some_and(|o| *o != item.run_id) && takeover != Some(**d)).count() as i64;
        out.counts.insert("datesSkipped".into(), others);
        out.counts.insert("datesLeft".into(), dates.len() as i64 - emitted - others);
        return Err(JobError::deadline_after(out));
    }
    out.counts.insert("datesSkipped".into(), dates.len() as i64 - emitted);
    Ok(out)
}

/// One date's figures, computed in one REPEATABLE READ snapshot so the totals and the top
/// list describe the same orders.
async fn aggregate(ctx: &JobCtx, date: NaiveDate) -> Result<Figures, JobError> {
    let (start, end) = day_bounds(date, ctx.tz).ok_or_else(|| JobError::Failed(format!("{date} has no bounds in {}", ctx.tz)))?;
    // The run's deadline bounds each statement (a statement timeout of the time left): a
    // runaway aggregation stops the run at its deadline, and the next run does the date.
    let d = ctx.deadline;
    d.check()?;
    let mut tx = crate::db::begin(&ctx.db).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    d.limit(&mut tx).await?;
    // Not persistent (unnamed statements): each run is planned for its own bounds. A cached
    // generic plan would assume a default selectivity for the day's ranges, and a day that is
    // most of the table wants a sequential scan, not the index scans such a plan picks.
    let (total_orders, paid_orders, total_sales, cancelled_orders, refund_amount): (i64, i64, Decimal, i64, Decimal) =
        sqlx::query_as(TOTALS).persistent(false).bind(start).bind(end).fetch_one(&mut *tx).await.map_err(|e| d.sql(e))?;
    d.limit(&mut tx).await?;
    let top: Vec<(String, String, i64)> =
        sqlx::query_as(TOP_PRODUCTS).persistent(false).bind(start).bind(end).bind(TOP_N).fetch_all(&mut *tx).await.map_err(|e| d.sql(e))?;
    tx.commit().await?;

    let avg_order_amount = average_half_even(total_sales, paid_orders)
        .ok_or_else(|| JobError::Failed(format!("{date}: total sales {total_sales} / {paid_orders} orders has no cent value")))?;
    Ok(Figures {
        date,
        total_orders,
        total_sales,
        avg_order_amount,
        cancelled_orders,
        refund_amount,
        top_products: top
            .into_iter()
            .map(|(product_id, product_name, total_sold)| TopProduct { product_id, product_name, total_sold })
            .collect(),
    })
}

/// Runs [`STORE`] in a transaction whose statement stops at `d`.
async fn store(
    ctx: &JobCtx,
    d: Deadline,
    run_id: &str,
    dates: &[NaiveDate],
    figures: &[Figures],
    takeover: Option<NaiveDate>,
) -> Result<Vec<Stored>, JobError> {
    let top: Vec<String> = figures
        .iter()
        .map(|f| serde_json::to_string(&f.top_products))
        .collect::<Result<_, _>>()
        .map_err(|e| JobError::Failed(format!("top products as JSON: {e}")))?;
    let mut tx = d.begin(&ctx.db).await?;
    let rows = sqlx::query_as::<_, Stored>(STORE)
        .bind(run_id)
        .bind(figures.iter().map(|f| f.date).collect::<Vec<_>>())
        .bind(figures.iter().map(|f| f.total_orders).collect::<Vec<_>>())
        .bind(figures.iter().map(|f| f.total_sales).collect::<Vec<_>>())
        .bind(figures.iter().map(|f| f.avg_order_amount).collect::<Vec<_>>())
        .bind(figures.iter().map(|f| f.cancelled_orders).collect::<Vec<_>>())
        .bind(figures.iter().map(|f| f.refund_amount).collect::<Vec<_>>())
        .bind(top)
        .bind(figures.iter().map(|f| event_id(f.date)).collect::<Vec<_>>())
        .bind(dates)
        .bind(takeover)
        .bind(ctx.tz.name())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| d.sql(e))?;
    tx.commit().await?;
    Ok(rows)
}

/// The `DailyStatistics` event of a stored row.
fn event(row: &Stored) -> Result<Emit, String> {
    let figures = Figures {
        date: row.date,
        total_orders: row.total_orders,
        total_sales: row.total_sales,
        avg_order_amount: row.avg_order_amount,
        cancelled_orders: row.cancelled_orders,
        refund_amount: row.refund_amount,
        top_products: serde_json::from_str(&row.top_products).map_err(|e| format!("top_products: {e}"))?,
    };
    // From the row, not the clock: every attempt emits the same record.
    emit(figures.event(row.event_id.clone(), row.generated_at, row.time_zone.clone())).map_err(|e| e.to_string())
}

impl Figures {
    fn event(&self, event_id: String, generated_at: DateTime<Utc>, time_zone: String) -> events::DailyStatistics {
        events::DailyStatistics {
            event_id,
            event_timestamp: generated_at,
            date: self.date,
            total_orders: self.total_orders,
            total_sales: self.total_sales,
            avg_order_amount: self.avg_order_amount,
            top_products: self.top_products.clone(),
            generated_at,
            cancelled_orders: self.cancelled_orders,
            refund_amount: self.refund_amount,
            time_zone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> NaiveDate {
        parse_date(s).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn the_period_is_the_previous_local_date() {
        // 00:00 on the 26th in Seoul is 15:00 UTC on the 25th: Seoul's yesterday is the 25th.
        let at = utc("2026-11-25T15:00:00Z");
        assert_eq!(previous_date(at, chrono_tz::Asia::Seoul), Some(d("2026-11-25")));
        assert_eq!(previous_date(at, chrono_tz::UTC), Some(d("2026-11-24")));
    }

    #[test]
    fn day_bounds_follow_dst_days() {
        let ny = chrono_tz::America::New_York;
        // Spring forward: a 23-hour day; fall back: a 25-hour day.
        let (s, e) = day_bounds(d("2026-03-08"), ny).unwrap();
        assert_eq!((s, e - s), (utc("2026-03-08T05:00:00Z"), TimeDelta::hours(23)));
        let (s, e) = day_bounds(d("2026-11-01"), ny).unwrap();
        assert_eq!((s, e - s), (utc("2026-11-01T04:00:00Z"), TimeDelta::hours(25)));
        let (s, e) = day_bounds(d("2026-11-25"), chrono_tz::Asia::Seoul).unwrap();
        assert_eq!((s, e), (utc("2026-11-24T15:00:00Z"), utc("2026-11-25T15:00:00Z")));
        // Santiago skips 00:00-01:00 on 2022-09-11: the day starts at 01:00 local (04:00 UTC)
        // and the previous day ends there too.
        let cl = chrono_tz::America::Santiago;
        let (s, e) = day_bounds(d("2022-09-11"), cl).unwrap();
        assert_eq!((s, e - s), (utc("2022-09-11T04:00:00Z"), TimeDelta::hours(23)));
        assert_eq!(day_bounds(d("2022-09-10"), cl).unwrap().1, s);
    }

    #[test]
    fn a_run_covers_the_missing_dates_of_its_window_oldest_first() {
        let date = d("2026-11-24");
        let all: BTreeSet<NaiveDate> = d("2026-11-18").iter_days().take(6).collect();
        assert_eq!(dates_to_cover(date, &all), vec![date]);
        let some: BTreeSet<NaiveDate> = [d("2026-11-18"), d("2026-11-19"), d("2026-11-21")].into();
        assert_eq!(dates_to_cover(date, &some), vec![d("2026-11-20"), d("2026-11-22"), d("2026-11-23"), date]);
        // Bounded: never more than 7 dates, never older than 6 days before.
        let none = dates_to_cover(date, &BTreeSet::new());
        assert_eq!(none.len(), 7);
        assert_eq!(none[0], d("2026-11-18"));
    }

    #[test]
    fn the_average_rounds_half_to_even_exactly() {
        assert_eq!(average_half_even(dec("20.01"), 2), Some(dec("10.00"))); // 10.005 -> 10.00
        assert_eq!(average_half_even(dec("20.03"), 2), Some(dec("10.02"))); // 10.015 -> 10.02
        assert_eq!(average_half_even(dec("10.00"), 3), Some(dec("3.33")));
        assert_eq!(average_half_even(dec("20.00"), 3), Some(dec("6.67")));
        assert_eq!(average_half_even(dec("0"), 0), Some(dec("0.00")));
        assert_eq!(average_half_even(dec("5"), 2), Some(dec("2.50")));
        assert_eq!(average_half_even(dec("0.001"), 1), None);
        // Large sums stay exact: 9,999,999,999,999.99 over 7 orders.
        assert_eq!(average_half_even(dec("9999999999999.99"), 7), Some(dec("1428571428571.43")));
    }

    #[test]
    fn event_ids_are_one_per_date() {
        assert_eq!(event_id(d("2026-11-24")), event_id(d("2026-11-24")));
        assert_ne!(event_id(d("2026-11-24")), event_id(d("2026-11-25")));
    }

    fn tick(trigger: Trigger, params: &[(&str, &str)]) -> Tick {
        Tick {
            tick_id: "t".into(),
            job: "daily-statistics".into(),
            scheduled_at: utc("2026-11-25T00:00:00Z"),
            produced_at: utc("2026-11-25T00:00:00Z"),
            trigger,
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            producer: None,
            schedule_version: None,
        }
    }

    #[test]
    fn impossible_ticks_are_refused() {
        let job = DailyStatistics;
        let tz = chrono_tz::UTC;
        assert_eq!(job.period(&tick(Trigger::Scheduled, &[]), tz).unwrap(), "2026-11-24");
        let named = tick(Trigger::Manual, &[("date", "2026-11-20"), ("force", "true")]);
        super::super::check_tick(&job, &named).unwrap();
        assert_eq!(job.period(&named, tz).unwrap(), "2026-11-20");
        let invalid = |t: &Tick| matches!(super::super::check_tick(&job, t).and_then(|_| job.period(t, tz)), Err(JobError::InvalidTick(_)));
        assert!(invalid(&tick(Trigger::Manual, &[("date", "2026-11-25")])), "today is not over");
        assert!(invalid(&tick(Trigger::Manual, &[("date", "2026-02-30")])));
        assert!(invalid(&tick(Trigger::Manual, &[("date", "1999-12-31")])));
        assert!(invalid(&tick(Trigger::Manual, &[("force", "yes")])));
        assert!(invalid(&tick(Trigger::Scheduled, &[("force", "true")])));
        assert!(invalid(&tick(Trigger::Manual, &[("dates", "2026-11-20")])));
        // At 00:00 UTC on the 25th it is 09:00 in Seoul: the 25th is not over there.
        assert!(matches!(
            job.period(&tick(Trigger::Manual, &[("date", "2026-11-25")]), chrono_tz::Asia::Seoul),
            Err(JobError::InvalidTick(_))
        ));
    }
}
