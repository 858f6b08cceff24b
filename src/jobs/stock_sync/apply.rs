//! Applying one range `[first_id, last_id]`: compare, confirm, classify, record, repair, then
//! emit the range's alerts.
//!
//! Order of effects, and why:
//! 1. compare (reads): the range's products stream in while `MGET`s of their counters go
//!    out; the waiting orders' quantities for the range are read alongside. Candidates go on
//!    in groups of [`CONFIRM_GROUP`], so memory is bounded by a few groups whatever the range
//!    and however many products mismatch (a Redis that lost every key makes every product a
//!    candidate);
//! 2. confirm (reads), one group at a time while the compare goes on: `confirm_delay_ms` after
//!    the group's last candidate was seen, one SQL statement re-reads the candidates' expected
//!    values and their orders, then one Redis round trip re-reads their counters and
//!    reservation fields. A candidate is confirmed only if still mismatched *and* Redis still
//!    holds the value first observed — anything that moved is a change in flight, not drift;
//! 3. record: insert the confirmed rows, durably, before any write (`ON CONFLICT DO NOTHING`:
//!    a retry keeps the first observation), so a crash after a repair never loses its alert;
//! 4. repair: per product, one atomic compare-and-set `observed → expected` that also drops
//!    the stale reservation fields (all or nothing);
//! 5. note the repairs' outcomes: what the alert reports (`RESTORED` → restored; refused or
//!    unknown → deferred to the next run). A group that recorded all its rows notes its
//!    refusals on their rows and itself as complete in one row (its other rows read
//!    `RESTORED` through the `stock_sync_mismatches` view); otherwise, each outcome on its row;
//! 6. emit: the range's alerts, read back from the rows in product order, at most
//!    `alerts_per_transaction` per part ([`super::alert::page`]); a continuation of the chunk
//!    emits the rest without repeating 1–5.
//!
//! A chunk that is applied again (its Kafka commit lost) before it was recorded complete finds
//! the rows it recorded: those now consistent count as repaired, the others go through 2–5
//! again. One recorded complete (`JobCtx::effects_done`) only emits its rows: another chunk
//! may have finalised the run from them meanwhile, and a product that drifted since must wait
//! for the next run rather than change a finalised one (found by the cluster fault profile).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, TryStreamExt};
use redis::aio::ConnectionManager;

use super::{alert, Action, Cause, Options};
use crate::jobs::{ChunkOutput, Deadline, JobCtx, JobError};
use crate::jobs::stock::{reservation_key, stock_key, Cas, Stock};
use crate::wire::internal::WorkItem;

/// How many of a candidate product's most recent orders that no longer wait are checked for a
/// stale reservation field. Bounds the cost for a product with a long order history; an older
/// stale field is classified `REDIS_DRIFT` and left in place.
const RECENT_ORDERS_CHECKED: i64 = 1000;
/// Products per streamed batch, and so per `MGET` (several in flight): "1,000 at a time".
const STREAM_BATCH: usize = 1000;
const MGETS_IN_FLIGHT: usize = 4;
/// Candidates confirmed, recorded and repaired together. Bounds memory (a group and the next
/// one being gathered) and the size of each statement and Redis round trip.
pub const CONFIRM_GROUP: usize = 5000;
/// Repairs per Redis script call: long enough to save round trips, short enough not to hold
/// Redis (single-threaded) for more than about a millisecond.
const CAS_PER_CALL: usize = 1000;
/// Groups confirmed and repaired at the same time.
const GROUPS_IN_FLIGHT: usize = 2;
/// Groups the compare may gather ahead of their confirmation.
const GROUPS_AHEAD: usize = 8;

/// The range's products, and the action of this run's row for each if an earlier attempt of
/// this chunk recorded one.
const PRODUCTS_IN_RANGE: &str = "
SELECT p.id, p.stock, m.action AS recorded
FROM products p
LEFT JOIN stock_sync_mismatch_rows m ON m.run_id = $3 AND m.product_id = p.id
WHERE p.id >= $1 AND p.id <= $2
ORDER BY p.id";

/// Quantities reserved by waiting orders, per product of the range (few rows).
const RESERVED_IN_RANGE: &str = "
SELECT oi.product_id, sum(oi.quantity)::bigint
FROM orders o JOIN order_items oi ON oi.order_id = o.id
WHERE o.status = 'PAYMENT_WAIT' AND oi.product_id >= $1 AND oi.product_id <= $2
GROUP BY oi.product_id";

/// The confirmation re-read of a group: expected value, the orders waiting for them, and their
/// most recent orders that no longer wait (for the reservation checks). One statement, so one
/// snapshot. `{products}` is the group's predicate ([`Predicate`]): its candidates (`= ANY`),
/// or the span they fill (a range scan, when most products of the span are candidates — a
/// Redis that lost its keys). The orders are read set-wise, not per product: a product with
/// none costs nothing beyond the index probe.
const CONFIRM: &str = "
WITH items AS (
    SELECT oi.product_id, oi.order_id, oi.quantity, o.status = 'PAYMENT_WAIT' AS waiting,
           row_number() OVER (PARTITION BY oi.product_id, o.status = 'PAYMENT_WAIT'
                              ORDER BY o.created_at DESC) AS recent
    FROM order_items oi JOIN orders o ON o.id = oi.order_id
    WHERE {items}),
per_product AS (
    SELECT product_id,
           sum(quantity) FILTER (WHERE waiting)::bigint AS reserved,
           array_agg(order_id) FILTER (WHERE waiting) AS waiting_orders,
           array_agg(order_id) FILTER (WHERE NOT waiting AND recent <= $2) AS settled_orders
    FROM items GROUP BY product_id)
SELECT p.id, p.stock, p.stock::bigint - COALESCE(w.reserved, 0) AS expected,
       COALESCE(w.waiting_orders, '{}') AS waiting_orders,
       COALESCE(w.settled_orders, '{}') AS settled_orders
FROM products p LEFT JOIN per_product w ON w.product_id = p.id
WHERE {products}";

/// How a group's confirmation selects its products.
enum Predicate<'a> {
    /// The candidates themselves (`$1` = their ids).
    Ids,
    /// Every product in `[$1, $3]`; the rows of non-candidates are read and ignored.
    Span(&'a str, &'a str),
}

impl Predicate<'_> {
    /// The span when at least half of the products the compare saw in it are candidates:
    /// then a range scan reads at most twice the rows and skips one index probe per product.
    fn for_group<'a>(candidates: &'a [Seen], seen_in_span: usize) -> Predicate<'a> {
        match (candidates.first(), candidates.last()) {
            (Some(first), Some(last)) if candidates.len() * 2 >= seen_in_span => Predicate::Span(&first.id, &last.id),
            _ => Predicate::Ids,
        }
    }

    fn sql(&self) -> String {
        let (items, products) = match self {
            Predicate::Ids => ("oi.product_id = ANY($1)", "p.id = ANY($1)"),
            Predicate::Span(..) => ("oi.product_id >= $1 AND oi.product_id <= $3", "p.id >= $1 AND p.id <= $3"),
        };
        CONFIRM.replace("{items}", items).replace("{products}", products)
    }
}

/// Confirmed mismatches, recorded before any repair, each naming its group (`$11`). Stale
/// reservation fields are rare: they come as (product, order) pairs and are gathered per
/// product, so the common row costs no per-row array work. The path of a group some of whose
/// rows may exist already (a retry); a fresh group is written by [`copy_rows`].
const RECORD: &str = "
INSERT INTO stock_sync_mismatch_rows
    (run_id, product_id, product_stock, db_stock, redis_stock, cause, action, repair, stale_orders, detected_at, repair_group)
SELECT $1, u.product_id, u.product_stock, u.db_stock, u.redis_stock, u.cause, u.action, u.repair,
       COALESCE(s.orders, '{}'), now(), $11::uuid
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[])
    AS u(product_id, product_stock, db_stock, redis_stock, cause, action, repair)
LEFT JOIN (SELECT product_id, array_agg(order_id) AS orders
           FROM unnest($9::text[], $10::text[]) AS st(product_id, order_id)
           GROUP BY product_id) s ON s.product_id = u.product_id
ON CONFLICT (run_id, product_id) DO NOTHING";

/// Outcomes noted on their rows: the latest attempt's outcome wins, as it describes Redis as
/// it is now. Committed without waiting for the WAL flush (`set_config(..., true)` is local to
/// this statement's transaction): the outcome is diagnostic, and the processor's synchronous
/// record of the chunk, which follows, flushes it anyway. Saves one fsync per chunk with a
/// repair.
const MARK: &str = "
UPDATE stock_sync_mismatch_rows m SET repair = u.repair, repaired_at = now()
FROM unnest($2::text[], $3::text[]) AS u(product_id, repair),
     (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE m.run_id = $1 AND m.product_id = u.product_id AND m.action = 'REDIS_RESTORED'";

/// A group that recorded every one of its rows itself and whose repairs were all answered: its
/// rows without an outcome of their own read RESTORED (the `stock_sync_mismatches` view). Its
/// refusals (few) are noted on their rows first ([`MARK`]), so a crash between the two
/// statements leaves the group pending, never wrongly restored. Asynchronous commit, as
/// [`MARK`].
const COMPLETE: &str = "
INSERT INTO stock_sync_repair_groups (run_id, repair_group, repaired_at)
SELECT $1, $2::uuid, now() FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ON CONFLICT DO NOTHING";

/// What `stock:{id}` held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Observed {
    Missing,
    Value(i64),
    /// Not an integer: cannot be compare-and-set through the Order service's script.
    NotANumber(String),
}

impl Observed {
    fn parse(raw: Option<String>) -> Observed {
        match raw {
            None => Observed::Missing,
            Some(s) => match s.trim().parse::<i64>() {
                Ok(v) => Observed::Value(v),
                Err(_) => Observed::NotANumber(s),
            },
        }
    }

    /// As stored and emitted: NULL when there is no integer to report.
    fn value(&self) -> Option<i64> {
        match self {
            Observed::Value(v) => Some(*v),
            Observed::Missing | Observed::NotANumber(_) => None,
        }
    }
}

/// A negative stock, or more reserved than in stock, is a DB error nobody may "repair" into
/// Redis.
fn invalid_db_value(stock: i32, expected: i64) -> bool {
    stock < 0 || expected < 0
}

fn is_candidate(stock: i32, expected: i64, observed: &Observed) -> bool {
    invalid_db_value(stock, expected) || *observed != Observed::Value(expected)
}

struct Seen {
    id: String,
    observed: Observed,
    /// This run already has a row for the product (an earlier attempt of this chunk).
    recorded: Option<String>,
}

/// A mismatch that survived confirmation, with the values read at confirmation.
struct Mismatch {
    id: String,
    stock: i32,
    expected: i64,
    observed: Observed,
    cause: Cause,
    action: Action,
    stale_orders: Vec<String>,
}

impl Mismatch {
    /// The repair outcome recorded with the row: none yet for a repair to make, NOT_ATTEMPTED
    /// for a mismatch left to a person.
    fn not_attempted(&self) -> Option<&'static str> {
        match self.action {
            Action::RedisRestored => None,
            Action::ManualReviewRequired | Action::RepairDeferred | Action::Unknown => Some("NOT_ATTEMPTED"),
        }
    }
}

#[derive(Default)]
struct Reservations {
    /// Orders no longer waiting whose reservation hash still holds this product.
    stale_orders: Vec<String>,
    /// A waiting order holds no reservation for this product.
    missing: bool,
}

/// The chunk's counters (the run result sums them over chunks; a retry replaces them).
#[derive(Default)]
struct Counts {
    products: i64,
    candidates: i64,
    confirmed: i64,
    unconfirmed: i64,
    repaired: i64,
    cas_refused: i64,
    unresolved: i64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.products += other.products;
        self.candidates += other.candidates;
        self.confirmed += other.confirmed;
        self.unconfirmed += other.unconfirmed;
        self.repaired += other.repaired;
        self.cas_refused += other.cas_refused;
        self.unresolved += other.unresolved;
    }

    fn into_output(self, mut out: ChunkOutput) -> ChunkOutput {
        for (k, v) in [
            ("products", self.products),
            ("candidates", self.candidates),
            ("confirmed", self.confirmed),
            ("unconfirmed", self.unconfirmed),
            ("repaired", self.repaired),
            ("casRefused", self.cas_refused),
            ("unresolved", self.unresolved),
        ] {
            out.counts.insert(k.into(), v);
        }
        out
    }
}

type RangeRow = (String, i32, Option<String>);
type ConfirmRow = (String, i32, i64, Vec<String>, Vec<String>);

/// One group of the compare's output for confirmation.
struct Group {
    candidates: Vec<Seen>,
    /// When the group's last candidate was observed: its confirmation waits for this plus
    /// `confirm_delay_ms`.
    last_seen: Option<Instant>,
    /// Products an earlier attempt recorded for repair and that are consistent now.
    settled: Vec<String>,
    /// Products the compare saw from the first candidate to the last one, both included: how
    /// densely the candidates fill their span ([`Predicate::for_group`]).
    seen_in_span: usize,
    seen_since_first: usize,
}

impl Group {
    fn new() -> Group {
        Group { candidates: Vec::new(), last_seen: None, settled: Vec::new(), seen_in_span: 0, seen_since_first: 0 }
    }

    fn len(&self) -> usize {
        self.candidates.len() + self.settled.len()
    }
}

pub async fn apply(ctx: &JobCtx, item: &WorkItem) -> Result<ChunkOutput, JobError> {
    let (first, last) = match item.ids.as_slice() {
        [first, last] => (first, last),
        other => {
            return Err(JobError::Failed(format!(
                "stock-sync work item {} carries {} ids; expected a range [first_id, last_id]",
                item.key(),
                other.len()
            )))
        }
    };
    let options: Options = ctx.settings.options().map_err(JobError::Failed)?;
    let per_part = options.alerts_per_transaction as usize;
    if let Some(after) = &item.resume_after {
        // A continuation: the first part made every effect; this one only emits.
        return alert::page(ctx, &item.run_id, first, last, Some(after), per_part).await;
    }
    if ctx.effects_done {
        // An earlier attempt completed 1–5 (only its transaction was lost): emit its rows, and
        // record nothing new — the run may be finalised from them already.
        return alert::page(ctx, &item.run_id, first, last, None, per_part).await;
    }
    let redis =
        ctx.redis.clone().ok_or_else(|| JobError::Failed("stock-sync needs Redis but the processor has no Redis connection".into()))?;

    // The compare feeds groups to the confirmation through a channel: it runs up to
    // GROUPS_AHEAD groups ahead, so their confirmation waits overlap instead of adding up (a
    // Redis that lost every key fills a group in milliseconds, then waits `confirm_delay_ms`).
    // A group's candidates are ~0.5 MB. Both halves run in this task (no spawned work
    // outlives a cancelled chunk).
    let (tx, rx) = mpsc::channel::<Group>(GROUPS_AHEAD);
    // Joined, not try-joined: when the deadline stops the compare, groups already past their
    // record still complete (their effects began), and the other way round.
    let (compared, repaired) = tokio::join!(compare(ctx, &redis, item, first, last, tx), repair_groups(ctx, &redis, item, &options, rx));
    let mut counts = Counts::default();
    let mut cut = false;
    for half in [compared, repaired] {
        match half {
            Ok(c) => counts.add(&c),
            Err(JobError::DeadlineReached(_)) => cut = true,
            Err(e) => return Err(e),
        }
    }
    if counts.cas_refused > 0 {
        tracing::warn!(run_id = %item.run_id, chunk = item.chunk_index, refused = counts.cas_refused,
            "stock changed after confirmation; repair left for the next run (alerts say REPAIR_DEFERRED)");
    }
    // Whatever stopped it, every recorded mismatch of the range is emitted (in parts).
    let out = counts.into_output(alert::page(ctx, &item.run_id, first, last, None, per_part).await?);
    if cut {
        return Err(JobError::deadline_after(out));
    }
    Ok(out)
}

/// Streams the range and sends its candidates (and products settled since an earlier
/// attempt) in groups of [`CONFIRM_GROUP`]. Returns the counts of what it saw.
async fn compare(
    ctx: &JobCtx,
    redis: &ConnectionManager,
    item: &WorkItem,
    first: &str,
    last: &str,
    mut tx: mpsc::Sender<Group>,
) -> Result<Counts, JobError> {
    let mut counts = Counts::default();
    // The first pass only nominates candidates; confirmation re-reads everything in one
    // statement. So the two halves of `expected` are read by two simple statements (they plan
    // and run faster than their join) at the price of two snapshots a few milliseconds apart:
    // a skew can only add a candidate that confirmation drops, or (an order landing exactly
    // then, on a drifted product, by exactly the drift) hide one until the next run. The
    // reserved quantities (few rows: waiting orders only) come first, so the products can be
    // compared as they stream in and only the candidates are kept, whatever the range size.
    let reserved: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>(RESERVED_IN_RANGE).bind(first).bind(last).fetch_all(&ctx.db).await?.into_iter().collect();
    let mut batches = sqlx::query_as::<_, RangeRow>(PRODUCTS_IN_RANGE)
        .bind(first)
        .bind(last)
        .bind(&item.run_id)
        .fetch(&ctx.db)
        .map_err(JobError::from)
        .try_chunks(STREAM_BATCH)
        .map(|batch| {
            let mut conn = redis.clone();
            async move {
                let rows = batch.map_err(|e| e.1)?;
                let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
                let observed = observe(&mut conn, &ids, ctx.deadline).await?;
                Ok::<_, JobError>((rows, observed))
            }
        })
        .buffered(MGETS_IN_FLIGHT);
    let mut group = Group::new();
    while let Some((rows, observed)) = batches.try_next().await? {
        // The run's deadline holds between batches (comparing is reads only: nothing to emit).
        ctx.deadline.check()?;
        counts.products += rows.len() as i64;
        for ((id, stock, recorded), observed) in rows.into_iter().zip(observed) {
            let expected = i64::from(stock) - reserved.get(&id).copied().unwrap_or(0);
            let candidate = is_candidate(stock, expected, &observed);
            if candidate || !group.candidates.is_empty() {
                group.seen_since_first += 1;
            }
            if candidate {
                counts.candidates += 1;
                group.candidates.push(Seen { id, observed, recorded });
                group.last_seen = Some(Instant::now());
                group.seen_in_span = group.seen_since_first;
            } else if recorded.as_deref() == Some(Action::RedisRestored.as_str()) {
                group.settled.push(id);
            }
        }
        if group.len() >= CONFIRM_GROUP {
            // The receiver only goes away when it failed; its error is the one returned.
            if tx.send(std::mem::replace(&mut group, Group::new())).await.is_err() {
                return Ok(counts);
            }
        }
    }
    drop(batches);
    if group.len() > 0 {
        let _ = tx.send(group).await;
    }
    Ok(counts)
}

/// Confirms, records and repairs the groups as they arrive, [`GROUPS_IN_FLIGHT`] at a time
/// (one group's confirmation reads overlap another's writes). Groups hold disjoint products.
async fn repair_groups(
    ctx: &JobCtx,
    redis: &ConnectionManager,
    item: &WorkItem,
    options: &Options,
    rx: mpsc::Receiver<Group>,
) -> Result<Counts, JobError> {
    let mut done = rx.map(|group| repair_group(ctx, redis, item, options, group)).buffer_unordered(GROUPS_IN_FLIGHT);
    let mut counts = Counts::default();
    let mut cut = false;
    // Every group is driven to its end, so none is dropped between its record and its mark;
    // after the deadline the rest stop before recording anything.
    while let Some(group) = done.next().await {
        match group {
            Ok(c) => counts.add(&c),
            Err(JobError::DeadlineReached(_)) => cut = true,
            Err(e) => return Err(e),
        }
    }
    if cut {
        // The counts of the groups that completed are lost with the cut; the run-level ones
        // (finalisation) come from the recorded rows.
        return Err(JobError::deadline());
    }
    Ok(counts)
}

async fn repair_group(ctx: &JobCtx, redis: &ConnectionManager, item: &WorkItem, options: &Options, group: Group) -> Result<Counts, JobError> {
    let mut counts = Counts::default();
    let waited = group.last_seen.map(|t| t.elapsed());
    // No product of the group had a row when the compare read the range: the common case,
    // recorded without the conflict check.
    let fresh = group.candidates.iter().all(|c| c.recorded.is_none());
    let t0 = Instant::now();
    let mismatches = confirm(ctx, redis, group.candidates, group.last_seen, group.seen_in_span, options, &mut counts).await?;
    let t1 = Instant::now();
    // The last point where the deadline stops the group: from the record on, effects begin,
    // and they complete (their alerts come from the recorded rows).
    ctx.deadline.check()?;
    let repair_group = uuid::Uuid::new_v4().to_string();
    let own = record(&ctx.db, &item.run_id, &mismatches, fresh, &repair_group).await?;
    let t2 = Instant::now();
    crate::runtime::fault::pause(crate::runtime::fault::BEFORE_STOCK_REPAIR, mismatches.iter().map(|m| m.id.as_str())).await;
    let t3 = Instant::now();
    let mut outcomes = repair(redis, &mismatches).await?;
    let t4 = Instant::now();
    for (_, applied) in &outcomes {
        if *applied == "RESTORED" {
            counts.repaired += 1;
        } else {
            counts.cas_refused += 1;
        }
    }
    counts.repaired += group.settled.len() as i64;
    let settled = group.settled.into_iter().map(|id| (id, "RESTORED"));
    if own {
        // Every row of the group is this attempt's: one row notes the group's outcome.
        // Refused repairs, and rows of earlier attempts found consistent now (a retry), carry
        // their own outcome.
        let refused = outcomes.iter().filter(|(_, o)| *o != "RESTORED").cloned();
        mark(&ctx.db, &item.run_id, &refused.chain(settled).collect::<Vec<_>>()).await?;
        if !outcomes.is_empty() {
            sqlx::query(COMPLETE).bind(&item.run_id).bind(&repair_group).execute(&ctx.db).await?;
        }
    } else {
        outcomes.extend(settled);
        mark(&ctx.db, &item.run_id, &outcomes).await?;
    }
    // Where a group's time goes (the wait for `confirm_delay_ms` is inside `confirm_ms`).
    tracing::debug!(
        run_id = %item.run_id, chunk = item.chunk_index, mismatches = mismatches.len(),
        since_seen_ms = waited.map(|w| w.as_millis() as u64), confirm_ms = (t1 - t0).as_millis() as u64,
        record_ms = (t2 - t1).as_millis() as u64, repair_ms = (t4 - t3).as_millis() as u64,
        mark_ms = t4.elapsed().as_millis() as u64,
        "stock-sync group repaired"
    );
    Ok(counts)
}

/// `MGET` of the products' counters, values kept raw so a non-integer does not fail the chunk;
/// a read, so the run's deadline bounds it.
async fn observe(redis: &mut ConnectionManager, ids: &[&str], deadline: Deadline) -> Result<Vec<Observed>, JobError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| stock_key(id)).collect();
    let raw: Vec<Option<String>> = deadline.redis(redis::cmd("MGET").arg(&keys).query_async(redis)).await?;
    if raw.len() != ids.len() {
        return Err(JobError::Failed(format!("MGET of {} keys returned {} values", ids.len(), raw.len())));
    }
    Ok(raw.into_iter().map(Observed::parse).collect())
}

/// Waits until `confirm_delay_ms` after the last candidate was seen, re-reads both sides (DB
/// first, Redis last: the CAS compares against the Redis value, so the gap to it stays
/// short), and returns the confirmed mismatches, classified.
async fn confirm(
    ctx: &JobCtx,
    redis: &ConnectionManager,
    candidates: Vec<Seen>,
    last_seen: Option<Instant>,
    seen_in_span: usize,
    options: &Options,
    counts: &mut Counts,
) -> Result<Vec<Mismatch>, JobError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(seen) = last_seen {
        ctx.deadline.sleep_until((seen + Duration::from_millis(options.confirm_delay_ms)).into()).await?;
    }
    let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
    let predicate = Predicate::for_group(&candidates, seen_in_span);
    let sql = predicate.sql();
    let query = match predicate {
        Predicate::Ids => sqlx::query_as::<_, ConfirmRow>(&sql).bind(&ids).bind(RECENT_ORDERS_CHECKED),
        Predicate::Span(first, last) => sqlx::query_as::<_, ConfirmRow>(&sql).bind(first).bind(RECENT_ORDERS_CHECKED).bind(last),
    };
    let db: HashMap<String, (i32, i64, Vec<String>, Vec<String>)> = query
        .fetch_all(&ctx.db)
        .await?
        .into_iter()
        .map(|(id, stock, expected, waiting, settled)| (id, (stock, expected, waiting, settled)))
        .collect();

    // Which reservation fields exist, for every (order, product) of the candidates: one
    // pipeline, sent together with the MGET (the connection multiplexes both).
    let mut pairs: Vec<(&str, &str, bool)> = Vec::new();
    for c in &candidates {
        if let Some((_, _, waiting, settled)) = db.get(&c.id) {
            pairs.extend(waiting.iter().map(|o| (c.id.as_str(), o.as_str(), true)));
            pairs.extend(settled.iter().map(|o| (c.id.as_str(), o.as_str(), false)));
        }
    }
    let mut pipe = redis::pipe();
    for (product, order, _) in &pairs {
        pipe.cmd("HEXISTS").arg(reservation_key(order)).arg(*product);
    }
    let (mut c1, mut c2) = (redis.clone(), redis.clone());
    let held = async {
        if pairs.is_empty() {
            Ok(Vec::new())
        } else {
            ctx.deadline.redis(pipe.query_async::<Vec<bool>>(&mut c2)).await
        }
    };
    let (again, held) = tokio::try_join!(observe(&mut c1, &ids, ctx.deadline), held)?;
    let mut reservations: HashMap<&str, Reservations> = HashMap::new();
    for ((product, order, waiting), held) in pairs.iter().zip(held) {
        let r = reservations.entry(product).or_default();
        match (waiting, held) {
            (true, false) => r.missing = true,
            (false, true) => r.stale_orders.push(order.to_string()),
            _ => {}
        }
    }

    let mut confirmed = Vec::new();
    for (seen, now) in candidates.iter().zip(again) {
        match db.get(&seen.id) {
            Some(&(stock, expected, ..)) if now == seen.observed && is_candidate(stock, expected, &now) => {
                let r = reservations.remove(seen.id.as_str()).unwrap_or_default();
                let action = action_for(stock, expected, &now);
                let cause = classify(stock, expected, &now, &r);
                // Stale fields are removed for every product we restore, whatever the cause,
                // so a late release can never give the same quantity back on top of our repair.
                let stale_orders = if action == Action::RedisRestored { r.stale_orders } else { Vec::new() };
                confirmed.push(Mismatch { id: seen.id.clone(), stock, expected, observed: now, cause, action, stale_orders });
            }
            // Redis moved (an order in flight) or the mismatch is gone: not ours to touch.
            _ => {
                counts.unconfirmed += 1;
                if seen.recorded.as_deref() == Some(Action::RedisRestored.as_str()) {
                    // Recorded by an earlier attempt, still wrong, not confirmable now.
                    counts.unresolved += 1;
                }
            }
        }
    }
    counts.confirmed += confirmed.len() as i64;
    Ok(confirmed)
}

fn action_for(stock: i32, expected: i64, observed: &Observed) -> Action {
    if invalid_db_value(stock, expected) || matches!(observed, Observed::NotANumber(_)) {
        Action::ManualReviewRequired
    } else {
        Action::RedisRestored
    }
}

fn classify(stock: i32, expected: i64, observed: &Observed, r: &Reservations) -> Cause {
    if invalid_db_value(stock, expected) {
        Cause::InvalidDbValue
    } else if *observed == Observed::Missing {
        Cause::RedisKeyMissing
    } else if !r.stale_orders.is_empty() {
        Cause::StaleReservation
    } else if r.missing {
        Cause::MissingReservation
    } else {
        Cause::RedisDrift
    }
}

/// Records the group's mismatches as `repair_group`; a row already there (an earlier
/// attempt's) is kept: the first observation wins. `fresh`: none had a row when the range was
/// read, so a plain `COPY` is tried first ([`copy_rows`]) — `ON CONFLICT` costs a speculative
/// insertion per row (5,000 rows: 33–42 ms against 21–24 ms in psql), and the day Redis lost
/// every key records 1,000,000. A row that appeared since (a zombie attempt of the same chunk)
/// fails the `COPY` as a whole, which is then redone as an insert with the conflict check.
///
/// True when every mismatch's row is the one just inserted (the plain insert succeeded): then
/// the group's outcome can be noted once for all of them ([`COMPLETE`]); otherwise each
/// outcome is noted on its row ([`MARK`]).
async fn record(db: &sqlx::PgPool, run_id: &str, mismatches: &[Mismatch], fresh: bool, repair_group: &str) -> Result<bool, JobError> {
    if mismatches.is_empty() {
        return Ok(true);
    }
    if fresh {
        match copy_rows(db, run_id, mismatches, repair_group).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            other => return other.map(|_| true).map_err(JobError::from),
        }
    }
    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut stale_products, mut stale_orders) = (Vec::new(), Vec::new());
    for m in mismatches {
        cols.0.push(m.id.as_str());
        cols.1.push(m.stock);
        cols.2.push(m.expected);
        cols.3.push(m.observed.value());
        cols.4.push(m.cause.as_str());
        cols.5.push(m.action.as_str());
        cols.6.push(m.not_attempted());
        for o in &m.stale_orders {
            stale_products.push(m.id.as_str());
            stale_orders.push(o.as_str());
        }
    }
    sqlx::query(RECORD)
        .bind(run_id)
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&cols.5)
        .bind(&cols.6)
        .bind(&stale_products)
        .bind(&stale_orders)
        .bind(repair_group)
        .execute(db)
        .await?;
    Ok(false)
}

/// The rows of a fresh group, by `COPY`: PostgreSQL writes them a page at a time (one WAL
/// record per page instead of one per row), the cost that dominates a run where every key is
/// missing. All or nothing, like an `INSERT`: a row already there fails the whole `COPY`.
async fn copy_rows(db: &sqlx::PgPool, run_id: &str, mismatches: &[Mismatch], repair_group: &str) -> Result<(), sqlx::Error> {
    use std::fmt::Write as _;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let run_id = copy_text(run_id);
    let mut data = String::with_capacity(mismatches.len() * 192);
    for m in mismatches {
        let stale: Vec<String> = m.stale_orders.iter().map(|o| array_element(o)).collect();
        // Writing to a String cannot fail.
        let _ = write!(data, "{run_id}\t{}\t{}\t{}\t", copy_text(&m.id), m.stock, m.expected);
        match m.observed.value() {
            Some(v) => {
                let _ = write!(data, "{v}\t");
            }
            None => data.push_str("\\N\t"),
        }
        let _ = writeln!(
            data,
            "{}\t{}\t{}\t{}\t{now}\t{repair_group}",
            m.cause.as_str(),
            m.action.as_str(),
            m.not_attempted().unwrap_or("\\N"),
            copy_text(&format!("{{{}}}", stale.join(","))),
        );
    }
    let mut conn = db.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY stock_sync_mismatch_rows (run_id, product_id, product_stock, db_stock, redis_stock, cause, action, repair, stale_orders, detected_at, repair_group) FROM STDIN",
        )
        .await?;
    copy.send(data.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// A value in `COPY`'s text format.
fn copy_text(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r")
}

/// An element of an array literal, quoted.
fn array_element(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Repairs every restorable mismatch, [`CAS_PER_CALL`] per atomic script call; returns
/// (product, RESTORED | CAS_REFUSED).
async fn repair(redis: &ConnectionManager, mismatches: &[Mismatch]) -> Result<Vec<(String, &'static str)>, JobError> {
    let restorable: Vec<Cas<'_>> = mismatches
        .iter()
        .filter(|m| m.action == Action::RedisRestored)
        .filter_map(|m| {
            let observed = match &m.observed {
                Observed::Missing => None,
                Observed::Value(v) => Some(*v),
                // Unreachable by `action_for`; never guess a value to compare against.
                Observed::NotANumber(_) => return None,
            };
            // The stale reservation fields go in the same atomic step as the new value: a late
            // release then finds nothing to add on top of the repair, and a refused repair
            // leaves them for that release to give back. (Dropping them first and then being
            // refused lost their quantity until a later run could repair the product — found
            // by the fault suite.)
            Some(Cas { product_id: &m.id, observed, new: m.expected, stale_orders: &m.stale_orders })
        })
        .collect();
    let stock = Stock::new(redis.clone());
    let mut outcomes = Vec::with_capacity(restorable.len());
    for calls in restorable.chunks(CAS_PER_CALL) {
        let applied = stock.compare_and_set_many(calls).await?;
        if applied.len() != calls.len() {
            return Err(JobError::Failed(format!("compare-and-set of {} products answered {}", calls.len(), applied.len())));
        }
        outcomes.extend(calls.iter().zip(applied).map(|(c, ok)| (c.product_id.to_string(), if ok { "RESTORED" } else { "CAS_REFUSED" })));
    }
    Ok(outcomes)
}

async fn mark(db: &sqlx::PgPool, run_id: &str, outcomes: &[(String, &'static str)]) -> Result<(), JobError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let (ids, repairs): (Vec<&str>, Vec<&str>) = outcomes.iter().map(|(id, o)| (id.as_str(), *o)).unzip();
    sqlx::query(MARK).bind(run_id).bind(ids).bind(repairs).execute(db).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_and_causes() {
        let v = Observed::Value;
        assert!(!is_candidate(10, 7, &v(7)));
        assert!(is_candidate(10, 7, &v(8)));
        assert!(is_candidate(10, 7, &Observed::Missing));
        assert!(is_candidate(-1, -1, &v(-1)), "an invalid DB value is reported even when Redis agrees");
        assert!(is_candidate(2, -3, &v(-3)), "more reserved than in stock");
        assert_eq!(Observed::parse(Some("x".into())), Observed::NotANumber("x".into()));
        assert_eq!(Observed::parse(Some("12".into())), v(12));

        let none = Reservations::default();
        let stale = Reservations { stale_orders: vec!["o".into()], missing: true };
        let missing = Reservations { stale_orders: vec![], missing: true };
        assert_eq!(classify(-1, -1, &Observed::Missing, &stale), Cause::InvalidDbValue);
        assert_eq!(classify(5, 5, &Observed::Missing, &stale), Cause::RedisKeyMissing);
        assert_eq!(classify(5, 5, &v(3), &stale), Cause::StaleReservation);
        assert_eq!(classify(5, 5, &v(7), &missing), Cause::MissingReservation);
        assert_eq!(classify(5, 5, &v(7), &none), Cause::RedisDrift);
        assert_eq!(action_for(5, 5, &Observed::NotANumber("x".into())), Action::ManualReviewRequired);
        assert_eq!(action_for(-1, -1, &v(3)), Action::ManualReviewRequired);
        assert_eq!(action_for(5, 5, &Observed::Missing), Action::RedisRestored);
    }
}
