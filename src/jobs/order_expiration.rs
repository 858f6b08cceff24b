//! `order-expiration`: cancels orders left unpaid past the payment timeout, gives their Redis
//! reservations back to stock, and emits one `order.cancelled` and one
//! `order.expiration.notification` per cancelled order (SPEC §2.1).
//!
//! **Plan** streams the ids of the orders in `PAYMENT_WAIT` created at or before
//! `scheduledAt - payment_timeout` — the tick's time, never the wall clock, so a replay decides
//! the same — in chunks of `batch_size`, holding one chunk in memory whatever the backlog.
//!
//! **Apply** (one chunk) does, with a constant number of round trips whatever the chunk size:
//! 1. one PostgreSQL transaction (one statement, behind a lock on the chunk) that cancels the
//!    chunk's orders still in `PAYMENT_WAIT` (an order paid meanwhile no longer matches: the
//!    status predicate decides atomically against the payment), records their ids in
//!    `order_expirations` under (run, chunk), and returns every order the chunk has cancelled
//!    — in this attempt or an earlier one — with its items;
//! 2. one Lua call that releases those orders' reservations (`Stock::release_many`);
//! 3. the events, built from that durable state.
//!
//! **Delivery guarantee.** Effects are effectively once: an order is cancelled by one
//! statement of one run (E2), and a reservation is deleted by the same script that returns its
//! quantities, so stock comes back once per order however often a chunk is retried. Events are
//! exactly once under `read_committed` (E1): they are derived from `order_expirations`, so
//! every attempt of a chunk emits the same records with the same deterministic `eventId`s,
//! and only the attempt whose Kafka transaction commits makes them visible. Two attempts at
//! the same chunk at once (a zombie and the partition's new owner) are serialised by a lock
//! on the chunk, so the later one sees, and emits, what the earlier one cancelled.
//!
//! **Deadline.** The cancelling transaction runs under the run's deadline (its statements,
//! lock wait included, are cut by a statement timeout: see [`crate::jobs::deadline`]). Cut, it
//! rolls back — this attempt cancelled nothing — and the chunk still releases and emits what
//! earlier attempts of it cancelled (read back without a limit), recorded TIMED_OUT; its
//! orders left waiting are expired by the next run. Past the commit nothing is cut: the
//! release and the events of committed cancellations always follow.
//!
//! Run-result counts: `ordersCancelled` and `alreadyHandled` (planned but paid or cancelled
//! meanwhile) come from durable state; `reservationsReleased`, `reservationsAbsent` and
//! `productsRestocked` are what this attempt's Redis call did — after a crash retry, a
//! reservation released by the killed attempt counts as absent (it was released once).

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, TryChunksError};
use futures::{StreamExt, TryStreamExt};

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::{ChunkOutput, Emit, Job, JobCtx, JobError, JobSettings, Run};
use crate::jobs::stock::Stock;
use crate::wire::derived_id;
use crate::wire::events::{emit, CancellationReason, CancelledItem, EventError, OrderCancelled, OrderExpirationNotification};
use crate::wire::internal::WorkItem;

/// What the Notification Service pushes to the customer (the seed's wording).
pub const EXPIRATION_REASON: &str = "주문이 자동 취소되었습니다 (결제 시간 초과)";
/// `kind` parts of the derived event ids.
pub const CANCELLED_KIND: &str = "order-cancelled";
pub const NOTIFICATION_KIND: &str = "order-expiration-notification";

/// The deterministic id of an event about `order_id` decided by `run_id`.
pub fn event_id(kind: &str, run_id: &str, order_id: &str) -> String {
    derived_id(&[kind, run_id, order_id]).to_string()
}

/// Ordered for a stable plan; `(status, created_at)` is the index this scan uses.
const EXPIRED: &str = "SELECT id FROM orders WHERE status = 'PAYMENT_WAIT' AND created_at <= $1 ORDER BY created_at, id";

/// $1 the chunk's ids, $2 run id, $3 chunk index. Cancels what is still waiting, appends
/// those ids to the chunk's record, and returns every order the chunk has cancelled — in this
/// attempt (`cancelled`) or an earlier one (`earlier`) — one row per item (one row with no
/// item for an order without any), ordered by order and product. All parts of one statement
/// see the snapshot taken when it started, so `earlier` cannot see this statement's own
/// changes: the two sets are disjoint and together complete.
///
/// The items are joined, and run only under the generic plan ([`LOCK_CHUNK`]): a nested loop
/// of primary-key lookups, whatever the chunk size. The planner's custom plans (a
/// connection's first five executions) estimated the join at a hash over a sequential scan of
/// all of `order_items` — 130 ms instead of 30 ms per chunk at 200,000 items. A lateral
/// aggregate per order (two sorted `array_agg`s) avoided that too, but cost PostgreSQL a fifth
/// more CPU per chunk than this join (docs/performance.md, session 23).
const CANCEL_AND_COLLECT: &str = "
WITH cancelled AS (
    UPDATE orders SET status = 'ORDER_CANCELLED', cancel_reason = 'PAYMENT_TIMEOUT', cancelled_at = now()
    WHERE id = ANY($1) AND status = 'PAYMENT_WAIT'
    RETURNING id, user_id, cancelled_at
), recorded AS (
    INSERT INTO order_expirations (run_id, chunk_index, order_ids)
    SELECT $2, $3, array_agg(id) FROM cancelled HAVING count(*) > 0
    ON CONFLICT (run_id, chunk_index) DO UPDATE SET order_ids = order_expirations.order_ids || EXCLUDED.order_ids
), earlier AS (
    SELECT o.id, o.user_id, o.cancelled_at
    FROM order_expirations e CROSS JOIN unnest(e.order_ids) AS x(id) JOIN orders o ON o.id = x.id
    WHERE e.run_id = $2 AND e.chunk_index = $3
), mine AS (
    SELECT * FROM cancelled UNION ALL SELECT * FROM earlier
)
SELECT m.id, m.user_id, m.cancelled_at, i.product_id, i.quantity
FROM mine m LEFT JOIN order_items i ON i.order_id = m.id
ORDER BY m.id, i.product_id";

/// Serialises attempts at the same chunk (a zombie and the partition's new owner): the
/// second one's statement then starts after the first committed, so its snapshot sees the
/// first one's record and it emits the orders the first one cancelled.
///
/// The same round trip makes the transaction use the generic plan of the chunk statement from
/// its first execution on a connection: the generic plan (primary-key lookups whatever the
/// chunk size) is the right one for any chunk, and the custom plans a connection builds for
/// its first five executions cost as much again as running it (40–47 ms instead of 23–30 ms
/// for 1,000 ids).
const LOCK_CHUNK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0)), set_config('plan_cache_mode', 'force_generic_plan', true)";

/// One order this run cancelled, as the events describe it.
#[derive(Debug)]
struct Cancelled {
    order_id: String,
    user_id: String,
    cancelled_at: DateTime<Utc>,
    items: Vec<(String, i32)>,
}

pub struct OrderExpiration;

/// order-expiration's own settings (`jobs.order_expiration.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// An order still waiting for payment this long after creation expires (seed: 5 min).
    pub payment_timeout_secs: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { payment_timeout_secs: 300 }
    }
}

impl Job for OrderExpiration {
    fn name(&self) -> &'static str {
        "order-expiration"
    }

    /// Every 10 minutes, chunks of at most 100 orders (the seed's batch), 5 minutes to run.
    fn defaults(&self) -> JobSettings {
        JobSettings { schedule: "0 */10 * * * *".into(), timeout_secs: 300, batch_size: 100, ..JobSettings::default() }
            .with_options(&Options::default())
    }

    fn check(&self, settings: &JobSettings) -> Result<(), String> {
        let o: Options = settings.options()?;
        cutoff(Utc::now(), o.payment_timeout_secs).map(|_| ()).map_err(|e| e.to_string())
    }

    fn plan<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        let options = ctx.settings.options::<Options>().map_err(JobError::Failed);
        let cutoff = match options.and_then(|o| cutoff(run.tick.scheduled_at, o.payment_timeout_secs)) {
            Ok(c) => c,
            Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
        };
        let batch = usize::try_from(ctx.settings.batch_size).unwrap_or(usize::MAX).max(1);
        // `fetch` streams rows off the socket; `try_chunks` holds at most one chunk.
        sqlx::query_scalar::<_, String>(EXPIRED)
            .bind(cutoff)
            .fetch(&ctx.db)
            .map_err(JobError::from)
            .try_chunks(batch)
            .map_err(|TryChunksError(_, e)| e)
            .boxed()
    }

    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(apply_chunk(ctx, item))
    }
}

fn cutoff(scheduled_at: DateTime<Utc>, payment_timeout_secs: u64) -> Result<DateTime<Utc>, JobError> {
    i64::try_from(payment_timeout_secs)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .and_then(|d| scheduled_at.checked_sub_signed(d))
        .ok_or_else(|| JobError::Failed(format!("payment_timeout_secs = {payment_timeout_secs} is out of range")))
}

async fn apply_chunk(ctx: &JobCtx, item: &WorkItem) -> Result<ChunkOutput, JobError> {
    let redis = ctx.redis.clone().ok_or_else(|| JobError::Failed("order-expiration needs Redis, and none is configured".into()))?;
    let started = std::time::Instant::now();
    let (orders, cut) = match cancel(ctx, item).await {
        Ok(orders) => (orders, false),
        // Stopped at the run's deadline: this attempt cancelled nothing (its transaction rolled
        // back, or never began), but an earlier attempt of the chunk may have. Those orders
        // are read back — no limit: they are effects made — released and emitted.
        Err(JobError::DeadlineReached(_)) => (collect(ctx, item).await?, true),
        Err(e) => return Err(e),
    };
    let in_db = started.elapsed();

    // From here the cancellations are committed: the only correct ending is to release and
    // emit, whatever the deadline, so every failure is retried (Transient) rather than
    // recorded FAILED, which would leave cancelled orders without events and with their stock
    // still reserved.
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    let stock = Stock::new(redis);
    // The events are built while Redis runs the release script: the release is polled first,
    // and the yield lets the connection's driver task put its command on the wire before the
    // CPU work starts.
    let (released, records) = tokio::join!(stock.release_many(&ids), async {
        tokio::task::yield_now().await;
        orders.into_iter().map(|o| events(&item.run_id, o)).collect::<Result<Vec<_>, _>>()
    });
    let released =
        released.map_err(|e| JobError::Transient(format!("redis: releasing reservations of {} cancelled orders: {e}", ids.len())))?;
    // Unlike every other failure past the commit, this one is not retried: the same orders
    // would make the same records, so a retry could only fail again (a struct out of step
    // with its schema, which the wire tests catch before a release).
    let records: Vec<Emit> = records?.into_iter().flatten().collect();

    tracing::debug!(
        run_id = %item.run_id, chunk = item.chunk_index, ids = item.ids.len(), cancelled = ids.len(), cut,
        db_ms = in_db.as_millis() as u64, redis_ms = (started.elapsed() - in_db).as_millis() as u64, "chunk applied"
    );
    let mut out = ChunkOutput::default();
    let cancelled = ids.len() as i64;
    out.counts.insert("ordersCancelled".into(), cancelled);
    // A chunk cut at the deadline did not look at the rest of its orders: they are not
    // "already handled", the next run expires them.
    out.counts.insert("alreadyHandled".into(), if cut { 0 } else { item.ids.len() as i64 - cancelled });
    out.counts.insert("reservationsReleased".into(), released.iter().filter(|n| **n > 0).count() as i64);
    out.counts.insert("reservationsAbsent".into(), released.iter().filter(|n| **n == 0).count() as i64);
    out.counts.insert("productsRestocked".into(), released.iter().sum());
    out.records = records;
    if cut {
        return Err(JobError::deadline_after(out));
    }
    Ok(out)
}

/// Step 1: cancels the chunk's orders still waiting, in one transaction whose statements stop
/// at the run's deadline, and returns every order the chunk has cancelled with its items.
async fn cancel(ctx: &JobCtx, item: &WorkItem) -> Result<Vec<Cancelled>, JobError> {
    let d = ctx.deadline;
    let mut tx = d.begin(&ctx.db).await?;
    sqlx::query(LOCK_CHUNK)
        .bind(format!("order-expiration/{}/{}", item.run_id, item.chunk_index))
        .execute(&mut *tx)
        .await
        .map_err(|e| d.sql(e))?;
    d.limit(&mut tx).await?;
    let orders = cancel_and_collect(&mut tx, &item.ids, item).await.map_err(|e| d.sql(e))?;
    // Until this commit nothing has changed, so an error up to here keeps the class sqlx gives
    // it (a failed chunk leaves its orders waiting for the next run).
    tx.commit().await?;
    Ok(orders)
}

/// The orders earlier attempts of this chunk cancelled, with their items: the same statement
/// with no id to cancel (so it changes nothing), behind the chunk's lock, without a limit.
async fn collect(ctx: &JobCtx, item: &WorkItem) -> Result<Vec<Cancelled>, JobError> {
    let mut tx = crate::db::begin(&ctx.db).await?;
    sqlx::query(LOCK_CHUNK).bind(format!("order-expiration/{}/{}", item.run_id, item.chunk_index)).execute(&mut *tx).await?;
    let orders = cancel_and_collect(&mut tx, &[], item).await?;
    tx.commit().await?;
    Ok(orders)
}

/// Runs [`CANCEL_AND_COLLECT`] for `ids` of chunk `item`, folding its rows as they arrive.
async fn cancel_and_collect(tx: &mut sqlx::PgTransaction<'_>, ids: &[String], item: &WorkItem) -> Result<Vec<Cancelled>, sqlx::Error> {
    let mut rows = sqlx::query(CANCEL_AND_COLLECT).bind(ids).bind(&item.run_id).bind(item.chunk_index).fetch(&mut **tx);
    let mut orders = Vec::new();
    while let Some(row) = rows.try_next().await? {
        add_row(&mut orders, row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
    }
    Ok(orders)
}

/// Folds one row (one per item, ordered by order; product and quantity NULL for an order
/// without items) into `orders`. Read as borrowed text: an order's id and user are copied
/// once, not once per item.
fn add_row(orders: &mut Vec<Cancelled>, order_id: &str, user_id: &str, cancelled_at: DateTime<Utc>, product: Option<&str>, quantity: Option<i32>) {
    if orders.last().is_none_or(|o| o.order_id != order_id) {
        orders.push(Cancelled { order_id: order_id.to_owned(), user_id: user_id.to_owned(), cancelled_at, items: Vec::new() });
    }
    if let (Some(o), Some(p), Some(q)) = (orders.last_mut(), product, quantity) {
        o.items.push((p.to_owned(), q));
    }
}

/// The two events of one cancelled order. Everything in them comes from durable state and the
/// run, so a retried chunk produces identical records (eventTimestamp included).
fn events(run_id: &str, o: Cancelled) -> Result<[Emit; 2], EventError> {
    let notification = OrderExpirationNotification {
        event_id: event_id(NOTIFICATION_KIND, run_id, &o.order_id),
        event_timestamp: o.cancelled_at,
        order_id: o.order_id.clone(),
        user_id: o.user_id.clone(),
        expiration_reason: EXPIRATION_REASON.into(),
        expired_at: o.cancelled_at,
    };
    let cancelled = OrderCancelled {
        event_id: event_id(CANCELLED_KIND, run_id, &o.order_id),
        event_timestamp: o.cancelled_at,
        order_id: o.order_id,
        user_id: o.user_id,
        items: o.items.into_iter().map(|(product_id, quantity)| CancelledItem { product_id, quantity }).collect(),
        cancellation_reason: CancellationReason::PaymentTimeout,
        cancelled_at: o.cancelled_at,
    };
    Ok([emit(cancelled)?, emit(notification)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_the_tick_time_minus_the_timeout() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(cutoff(at, 300).unwrap(), at - TimeDelta::minutes(5));
        assert!(matches!(cutoff(at, u64::MAX), Err(JobError::Failed(_))));
    }

    #[test]
    fn rows_fold_into_orders_with_their_items() {
        let t = Utc::now();
        let mut orders = Vec::new();
        for (o, item) in [("a", Some(("p1", 2))), ("a", Some(("p2", 1))), ("b", None), ("c", Some(("p1", 3)))] {
            add_row(&mut orders, o, "u", t, item.map(|i| i.0), item.map(|i| i.1));
        }
        assert_eq!(orders.iter().map(|o| o.order_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(orders[0].items, vec![("p1".to_string(), 2), ("p2".to_string(), 1)]);
        assert!(orders[1].items.is_empty());
        assert_eq!(orders[2].items, vec![("p1".to_string(), 3)]);
    }
}
