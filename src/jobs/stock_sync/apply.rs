//! Applying one range `[first_id, last_id]`: compare, confirm, classify, record, repair.
//!
//! Order of effects, and why:
//! 1. compare (reads): one SQL statement for the expected values, one `MGET`;
//! 2. confirm (reads): after `confirm_delay_ms`, re-read both sides of every candidate; a
//!    candidate is confirmed only if still mismatched *and* Redis still holds the value first
//!    observed — anything that moved is a change in flight, not drift;
//! 3. record: insert the confirmed rows (`ON CONFLICT DO NOTHING`: a retry keeps the first
//!    observation) — before any write, so a crash after a repair never loses its alert;
//! 4. repair: delete stale reservation fields, then compare-and-set `observed → expected`;
//! 5. note each repair's outcome on its row (finalize counts from there).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Action, Cause};
use crate::jobs::{ChunkOutput, JobCtx, JobError};
use crate::stock::{reservation_key, stock_key, Stock};
use crate::wire::internal::WorkItem;

/// How many of a candidate product's most recent orders that no longer wait are checked for a
/// stale reservation field. Bounds the cost for a product with a long order history; an older
/// stale field is classified `REDIS_DRIFT` and left in place (see the module limits).
const RECENT_ORDERS_CHECKED: i64 = 1000;

/// Expected Redis stock of every product in the range, plus whether this run already has a
/// row for it whose repair is pending (an earlier attempt of this chunk stopped in between).
/// One statement, so products and orders are read from one snapshot.
const EXPECTED_IN_RANGE: &str = "
WITH waiting AS (
    SELECT oi.product_id, sum(oi.quantity)::bigint AS reserved
    FROM orders o JOIN order_items oi ON oi.order_id = o.id
    WHERE o.status = 'PAYMENT_WAIT' AND oi.product_id >= $1 AND oi.product_id <= $2
    GROUP BY oi.product_id)
SELECT p.id, p.stock, p.stock::bigint - COALESCE(w.reserved, 0) AS expected,
       m.product_id IS NOT NULL AS pending
FROM products p
LEFT JOIN waiting w ON w.product_id = p.id
LEFT JOIN stock_sync_mismatches m ON m.run_id = $3 AND m.product_id = p.id AND m.repair IS NULL
WHERE p.id >= $1 AND p.id <= $2
ORDER BY p.id";

/// The same expected value for a few products (the confirmation re-read).
const EXPECTED_OF: &str = "
WITH waiting AS (
    SELECT oi.product_id, sum(oi.quantity)::bigint AS reserved
    FROM orders o JOIN order_items oi ON oi.order_id = o.id
    WHERE o.status = 'PAYMENT_WAIT' AND oi.product_id = ANY($1)
    GROUP BY oi.product_id)
SELECT p.id, p.stock, p.stock::bigint - COALESCE(w.reserved, 0) AS expected
FROM products p LEFT JOIN waiting w ON w.product_id = p.id
WHERE p.id = ANY($1)";

/// Per confirmed product: its waiting orders, and its most recent orders that no longer wait.
const ORDERS_OF: &str = "
SELECT c.product_id, x.order_id, x.waiting
FROM unnest($1::text[]) AS c(product_id)
CROSS JOIN LATERAL (
    (SELECT oi.order_id, true AS waiting
     FROM order_items oi JOIN orders o ON o.id = oi.order_id
     WHERE oi.product_id = c.product_id AND o.status = 'PAYMENT_WAIT')
    UNION ALL
    (SELECT oi.order_id, false
     FROM order_items oi JOIN orders o ON o.id = oi.order_id
     WHERE oi.product_id = c.product_id AND o.status <> 'PAYMENT_WAIT'
     ORDER BY o.created_at DESC
     LIMIT $2)
) x";

const RECORD: &str = "
INSERT INTO stock_sync_mismatches
    (run_id, product_id, product_stock, db_stock, redis_stock, cause, action, repair, stale_orders, detected_at)
SELECT $1, u.product_id, u.product_stock, u.db_stock, u.redis_stock, u.cause, u.action, u.repair,
       ARRAY(SELECT jsonb_array_elements_text(u.stale::jsonb)), now()
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[])
    AS u(product_id, product_stock, db_stock, redis_stock, cause, action, repair, stale)
ON CONFLICT (run_id, product_id) DO NOTHING";

/// The latest attempt's outcome wins: it describes Redis as it is now.
const MARK: &str = "
UPDATE stock_sync_mismatches m SET repair = u.repair, repaired_at = now()
FROM unnest($2::text[], $3::text[]) AS u(product_id, repair)
WHERE m.run_id = $1 AND m.product_id = u.product_id AND m.action = 'REDIS_RESTORED'";

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

#[derive(Default)]
struct Reservations {
    /// Orders no longer waiting whose reservation hash still holds this product.
    stale_orders: Vec<String>,
    /// A waiting order holds no reservation for this product.
    missing: bool,
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
    let mut redis = ctx
        .redis
        .clone()
        .ok_or_else(|| JobError::Failed("stock-sync needs Redis but the processor has no Redis connection".into()))?;

    let rows: Vec<(String, i32, i64, bool)> =
        sqlx::query_as(EXPECTED_IN_RANGE).bind(first).bind(last).bind(&item.run_id).fetch_all(&ctx.db).await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let observed = observe(&mut redis, &ids).await?;

    let mut out = ChunkOutput::default();
    out.counts.insert("products".into(), rows.len() as i64);
    let mut candidates = Vec::new();
    // Rows an earlier attempt recorded but did not get to mark, and that are consistent now.
    let mut settled = Vec::new();
    for ((id, stock, expected, pending), observed) in rows.into_iter().zip(observed) {
        if is_candidate(stock, expected, &observed) {
            candidates.push(Seen { id, observed });
        } else if pending {
            settled.push(id);
        }
    }
    out.counts.insert("candidates".into(), candidates.len() as i64);
    if candidates.is_empty() && settled.is_empty() {
        return Ok(out);
    }

    let (confirmed, unconfirmed) = confirm(ctx, &mut redis, candidates).await?;
    out.counts.insert("unconfirmed".into(), unconfirmed as i64);
    out.counts.insert("confirmed".into(), confirmed.len() as i64);

    let to_restore: Vec<String> = confirmed
        .iter()
        .filter(|(_, stock, expected, observed)| action_for(*stock, *expected, observed) == Action::RedisRestored)
        .map(|(id, ..)| id.clone())
        .collect();
    let mut reservations = reservations_of(&ctx.db, &mut redis, &to_restore).await?;
    let mismatches: Vec<Mismatch> = confirmed
        .into_iter()
        .map(|(id, stock, expected, observed)| {
            let r = reservations.remove(&id).unwrap_or_default();
            let action = action_for(stock, expected, &observed);
            let cause = classify(stock, expected, &observed, &r);
            // Stale fields are removed for every product we restore, whatever the cause, so
            // a late release can never give the same quantity back on top of our repair.
            let stale_orders = if action == Action::RedisRestored { r.stale_orders } else { Vec::new() };
            Mismatch { id, stock, expected, observed, cause, action, stale_orders }
        })
        .collect();

    record(&ctx.db, &item.run_id, &mismatches).await?;
    let mut outcomes = repair(&redis, &mismatches).await?;
    let refused = outcomes.iter().filter(|(_, o)| *o == "CAS_REFUSED").count();
    if refused > 0 {
        tracing::warn!(run_id = %item.run_id, chunk = item.chunk_index, refused, "stock changed after confirmation; repair left for the next run");
    }
    outcomes.extend(settled.into_iter().map(|id| (id, "RESTORED")));
    mark(&ctx.db, &item.run_id, &outcomes).await?;
    Ok(out)
}

/// `MGET` of the products' counters, values kept raw so a non-integer does not fail the chunk.
async fn observe(redis: &mut ConnectionManager, ids: &[&str]) -> Result<Vec<Observed>, JobError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| stock_key(id)).collect();
    let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await?;
    if raw.len() != ids.len() {
        return Err(JobError::Failed(format!("MGET of {} keys returned {} values", ids.len(), raw.len())));
    }
    Ok(raw.into_iter().map(Observed::parse).collect())
}

/// Waits `confirm_delay_ms`, re-reads both sides; returns the confirmed candidates as
/// (id, stock, expected, observed) with the values of the re-read, and how many were not.
async fn confirm(
    ctx: &JobCtx,
    redis: &mut ConnectionManager,
    candidates: Vec<Seen>,
) -> Result<(Vec<(String, i32, i64, Observed)>, usize), JobError> {
    if candidates.is_empty() {
        return Ok((Vec::new(), 0));
    }
    tokio::time::sleep(Duration::from_millis(ctx.settings.confirm_delay_ms)).await;
    let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
    let db: HashMap<String, (i32, i64)> = sqlx::query_as::<_, (String, i32, i64)>(EXPECTED_OF)
        .bind(&ids)
        .fetch_all(&ctx.db)
        .await?
        .into_iter()
        .map(|(id, stock, expected)| (id, (stock, expected)))
        .collect();
    // Redis last: the CAS compares against this value, so keep the gap to it short.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let again = observe(redis, &refs).await?;
    let mut confirmed = Vec::new();
    let mut unconfirmed = 0;
    for (seen, now) in candidates.into_iter().zip(again) {
        match db.get(&seen.id) {
            // Redis moved (an order in flight) or the mismatch is gone: not ours to touch.
            Some(&(stock, expected)) if now == seen.observed && is_candidate(stock, expected, &now) => {
                confirmed.push((seen.id, stock, expected, now));
            }
            _ => unconfirmed += 1,
        }
    }
    Ok((confirmed, unconfirmed))
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

/// Which reservations of the products' orders exist in Redis: one SQL query, one pipeline.
async fn reservations_of(
    db: &sqlx::PgPool,
    redis: &mut ConnectionManager,
    ids: &[String],
) -> Result<HashMap<String, Reservations>, JobError> {
    let mut out: HashMap<String, Reservations> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let orders: Vec<(String, String, bool)> =
        sqlx::query_as(ORDERS_OF).bind(ids).bind(RECENT_ORDERS_CHECKED).fetch_all(db).await?;
    if orders.is_empty() {
        return Ok(out);
    }
    let mut pipe = redis::pipe();
    for (product, order, _) in &orders {
        pipe.cmd("HEXISTS").arg(reservation_key(order)).arg(product);
    }
    let held: Vec<bool> = pipe.query_async(redis).await?;
    for ((product, order, waiting), held) in orders.into_iter().zip(held) {
        let r = out.entry(product).or_default();
        match (waiting, held) {
            (true, false) => r.missing = true,
            (false, true) => r.stale_orders.push(order),
            _ => {}
        }
    }
    Ok(out)
}

async fn record(db: &sqlx::PgPool, run_id: &str, mismatches: &[Mismatch]) -> Result<(), JobError> {
    if mismatches.is_empty() {
        return Ok(());
    }
    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for m in mismatches {
        cols.0.push(m.id.clone());
        cols.1.push(m.stock);
        cols.2.push(m.expected);
        cols.3.push(m.observed.value());
        cols.4.push(m.cause.as_str());
        cols.5.push(m.action.as_str());
        cols.6.push(match m.action {
            Action::RedisRestored => None,
            Action::ManualReviewRequired => Some("NOT_ATTEMPTED"),
        });
        cols.7.push(serde_json::to_string(&m.stale_orders).map_err(|e| JobError::Failed(e.to_string()))?);
    }
    sqlx::query(RECORD)
        .bind(run_id)
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .bind(cols.5)
        .bind(cols.6)
        .bind(cols.7)
        .execute(db)
        .await?;
    Ok(())
}

/// Repairs every restorable mismatch; returns (product, RESTORED | CAS_REFUSED).
async fn repair(redis: &ConnectionManager, mismatches: &[Mismatch]) -> Result<Vec<(String, &'static str)>, JobError> {
    let mut outcomes = Vec::new();
    if mismatches.iter().all(|m| m.action != Action::RedisRestored) {
        return Ok(outcomes);
    }
    let stock = Stock::new(redis.clone());
    let mut conn = redis.clone();
    for m in mismatches.iter().filter(|m| m.action == Action::RedisRestored) {
        let observed = match &m.observed {
            Observed::Missing => None,
            Observed::Value(v) => Some(*v),
            // Unreachable by `action_for`; never guess a value to compare against.
            Observed::NotANumber(_) => continue,
        };
        if !m.stale_orders.is_empty() {
            // First make the stale quantity impossible to release; only then give it back
            // through the CAS. The other order would leave a window in which a late release
            // adds the same quantity on top of our repair. If the CAS is then refused, Redis
            // stays too low (never oversells) and the next run restores it as drift.
            let mut pipe = redis::pipe();
            for order in &m.stale_orders {
                pipe.cmd("HDEL").arg(reservation_key(order)).arg(&m.id).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let applied = stock.compare_and_set(&m.id, observed, m.expected).await?;
        outcomes.push((m.id.clone(), if applied { "RESTORED" } else { "CAS_REFUSED" }));
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
