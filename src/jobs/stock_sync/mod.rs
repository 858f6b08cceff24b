//! `stock-sync` (SPEC §2.2): reconciles the Redis stock counters (`stock:{productId}`) with
//! PostgreSQL, the trusted source, repairs Redis without clobbering concurrent orders, emits
//! one `stock.sync.alert` per mismatch saying what was actually done, and one
//! `stock.sync.run.summary` per run; a run with more than `urgent_after_mismatches`
//! mismatches is urgent (its summary is `CRITICAL`: the one record to page on).
//!
//! # Shape
//! - **plan** cuts the product ids, in id order, into ranges of `batch_size` products: exactly,
//!   by walking the primary-key index (one streamed statement, constant memory), or — from
//!   100,000 products, by the table's statistics, when `ANALYZE` (autovacuum) has run — of
//!   about `batch_size`, split at the histogram bounds of `products.id` nearest each boundary
//!   (two index probes per range; stale statistics only make the ranges uneven, every
//!   product is still in exactly one). A stock-sync work item carries a
//!   *range*, `ids = [first_id, last_id]` (inclusive, in the database's text order), not every
//!   id: 1,000,000 products would otherwise put ~40 MB of ids through Kafka for a job that
//!   re-reads them anyway. A product created after planning is checked by this run if its id
//!   falls inside a range, otherwise by the next run. Plan reads only.
//! - **apply** ([`apply`]) compares one range:
//!   `expected = products.stock - Σ quantity of order_items whose order is PAYMENT_WAIT`
//!   against `stock:{id}`, read with `MGET`s of 1,000 keys that go out while the products
//!   stream in, 1,000 at a time. Candidates (key missing, value ≠ expected, invalid DB value)
//!   go on in groups of 5,000, each *confirmed* `confirm_delay_ms` after its last candidate
//!   was seen (while the compare goes on), classified, recorded in `stock_sync_mismatches`,
//!   then repaired with a compare-and-set on the observed value. Then the range's alerts are
//!   read back from the rows and emitted, at most `alerts_per_transaction` per transaction:
//!   more continue in further parts of the chunk (continuation work items, which only emit).
//!   Memory: the batches in flight plus two or three groups, whatever the range size and
//!   however many products mismatch.
//! - **finalize** ([`alert`]) runs once per run, in the transaction of the chunk that
//!   completes it, and emits the run's summary from the recorded rows.
//!
//! # Delivery guarantee
//! - Alerts: exactly once per (run, product) mismatch for `read_committed` consumers. A range's
//!   alerts are read from durable rows in product order after its effects, each part
//!   committed with its offset (or its continuation) exactly once, so a retried part emits the
//!   same alerts. `eventId` = UUIDv5(run, product) for consumers that deduplicate by id. The
//!   summary: once per run, in the transaction of the run's completion.
//! - Repairs: effectively once. The row is recorded before Redis is touched (a crash cannot
//!   lose the alert); the write is a compare-and-set on the value observed twice, so a retry, a
//!   zombie or a concurrent order can never be overwritten — a refused CAS is counted and left
//!   for the next run. A stale reservation field is deleted in the *same atomic step* as the
//!   CAS, so its quantity is given back exactly once: by the repair, or (CAS refused) by its
//!   late release.
//!
//! # The concurrency assumption
//! The Order service changes Redis and PostgreSQL in two steps (reserve in Redis, then insert
//! the order; update the order, then release/consume in Redis). A mismatch seen inside such a
//! window is transient: confirmation re-reads both sides after `confirm_delay_ms` and requires
//! Redis to still hold the first value, so a window shorter than the delay is never repaired.
//! A window longer than the delay (a stalled Order service instance) can still be mistaken for
//! drift; the delay is the knob. A release or consume that lands *after* the repair composes
//! correctly (it is relative, and a stale field goes with the CAS that accounted for it).
//!
//! # Deadline
//! The run's deadline stops the compare between its 1,000-product batches, the confirmation
//! wait and reads (Redis commands bounded by the time left), and each group before its rows
//! are recorded; a group already recorded completes its repair. Whatever stopped it, the range
//! then emits every mismatch it recorded (in parts), and the chunk is recorded TIMED_OUT.
//!
//! # Run result counts
//! From the chunks (summed; a retried chunk replaces its own): `products` compared,
//! `candidates`, `confirmed`, `unconfirmed` (moved during confirmation: left for the next run),
//! `repaired`, `casRefused` (Redis moved between confirmation and the CAS: left for the next
//! run), `unresolved` (recorded by an earlier attempt, still wrong, not confirmable now). From
//! the finalisation, from the same rows as the alerts: `mismatches` (= alerts), `restored`,
//! `deferred`, `manualReview` (= alerts of each action), `urgent` (0/1).
//!
//! # Limits
//! - A zombie (a fenced instance whose effects still run) can record and repair a product
//!   after its range's alerts were emitted: that repair has no alert. The next run finds
//!   nothing to report for it, as Redis is right.
//! - A stale reservation is looked for among each candidate's 1000 most recent orders that no
//!   longer wait; an older one is classified `REDIS_DRIFT` and its field left in place.
//! - `MISSING_RESERVATION` is repaired like drift (CAS to expected); the reservation hash is
//!   not recreated, so if that order is later cancelled its release gives nothing back and
//!   Redis stays low by its quantity (never oversells) until the next run.
//! - A non-integer value in `stock:{id}` cannot be compared-and-set through the Order
//!   service's script: reported `REDIS_DRIFT` with `MANUAL_REVIEW_REQUIRED`, left unchanged.
//! - `stock:{id}` keys without a product row are not visited (ranges come from the DB).

mod alert;
mod apply;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use serde::{Deserialize, Serialize};

use super::{ChunkOutput, Job, JobCtx, JobError, JobSettings, Run};
use crate::wire::internal::WorkItem;

pub struct StockSync;

/// stock-sync's own settings (`jobs.stock_sync.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// A run with more mismatches than this is urgent: all its alerts carry CRITICAL.
    pub urgent_after_mismatches: u32,
    /// Pause before re-reading a mismatch to confirm it (orders keep arriving).
    pub confirm_delay_ms: u64,
    /// Alerts per Kafka transaction (a range with more continues in further transactions):
    /// at most [`MAX_ALERTS_PER_TRANSACTION`], so no transaction exceeds 10,000 records.
    pub alerts_per_transaction: u32,
}

/// A part's alerts plus the records that may share its transaction (continuation or chunk
/// and run ledger entries, run result, run summary) stay within 10,000 records.
pub const MAX_ALERTS_PER_TRANSACTION: u32 = 9_990;

impl Default for Options {
    fn default() -> Self {
        Options { urgent_after_mismatches: 10, confirm_delay_ms: 200, alerts_per_transaction: 9_000 }
    }
}

impl Options {
    fn check(&self) -> Result<(), String> {
        if !(1..=MAX_ALERTS_PER_TRANSACTION).contains(&self.alerts_per_transaction) {
            return Err(format!(
                "jobs.stock_sync.alerts_per_transaction = {}: must be between 1 and {MAX_ALERTS_PER_TRANSACTION} (a Kafka transaction holds at most 10,000 records)",
                self.alerts_per_transaction
            ));
        }
        Ok(())
    }
}

/// Why a product's Redis stock differs from the DB (first match wins, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Negative `products.stock`, or more reserved than in stock: the DB itself is wrong.
    InvalidDbValue,
    /// `stock:{id}` does not exist.
    RedisKeyMissing,
    /// A `reservation:{order}` field for this product remains for an order no longer waiting.
    StaleReservation,
    /// An order of this product waits for payment but holds no reservation for it.
    MissingReservation,
    /// Anything else (including a non-integer value in the key).
    RedisDrift,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::InvalidDbValue => "INVALID_DB_VALUE",
            Cause::RedisKeyMissing => "REDIS_KEY_MISSING",
            Cause::StaleReservation => "STALE_RESERVATION",
            Cause::MissingReservation => "MISSING_RESERVATION",
            Cause::RedisDrift => "REDIS_DRIFT",
        }
    }
}

/// What the run does about a mismatch: the alert's `SyncAction`, one enum for the table and
/// the event.
pub use crate::wire::events::SyncAction as Action;

/// The run's ranges, `batch_size` ($1) products each, in id order: the database walks the
/// primary-key index and returns only each range's first and last id, so planning 1,000,000
/// products moves 1,000 rows instead of 1,000,000 (and decodes as few). One statement: one
/// snapshot, contiguous ranges. The last range ends at the largest id.
const RANGES: &str = "
WITH RECURSIVE r(first_id, last_id) AS (
    SELECT s.first_id, COALESCE(s.last_id, (SELECT max(id) FROM products))
    FROM (SELECT (SELECT min(id) FROM products) AS first_id,
                 (SELECT id FROM products ORDER BY id OFFSET $1 - 1 LIMIT 1) AS last_id) s
    WHERE s.first_id IS NOT NULL
  UNION ALL
    SELECT n.first_id, COALESCE(n.last_id, (SELECT max(id) FROM products))
    FROM r, LATERAL (
        SELECT (SELECT id FROM products WHERE id > r.last_id ORDER BY id LIMIT 1) AS first_id,
               (SELECT id FROM products WHERE id > r.last_id ORDER BY id OFFSET $1 - 1 LIMIT 1) AS last_id) n
    WHERE n.first_id IS NOT NULL)
SELECT first_id, last_id FROM r";

/// Below this many products (as the table's statistics count them) the plan walks the index:
/// it takes under ~40 ms there, and its ranges are exact.
const SPLIT_AT_STATISTICS_FROM: f64 = 100_000.0;

/// The table's statistics of `products.id`: the equi-depth histogram `ANALYZE` (autovacuum)
/// keeps, and the row count it estimated. None if it was never analysed.
const STATISTICS: &str = "
SELECT s.histogram_bounds::text::text[], c.reltuples::float8
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'id' AND NOT s.inherited
WHERE c.oid = 'products'::regclass";

/// The run's ranges split at the given ids ($1, ascending; the first range starts at the
/// smallest id, the last ends at the largest): each range's first and last existing id, found
/// by two index probes, empty ranges left out. One statement: one snapshot, contiguous
/// ranges, every product of the table in exactly one.
const RANGES_AT: &str = "
WITH s AS (
    SELECT u.lo, lead(u.lo) OVER (ORDER BY u.k) AS hi, u.k
    FROM unnest(array_prepend(NULL::text, $1::text[])) WITH ORDINALITY AS u(lo, k))
SELECT r.first_id, r.last_id
FROM s CROSS JOIN LATERAL (
    SELECT CASE WHEN s.k = 1 THEN (SELECT min(id) FROM products)
                ELSE (SELECT min(id) FROM products WHERE id >= s.lo) END AS first_id,
           CASE WHEN s.hi IS NULL THEN (SELECT max(id) FROM products)
                ELSE (SELECT max(id) FROM products WHERE id < s.hi) END AS last_id) r
WHERE r.first_id <= r.last_id
ORDER BY s.k";

/// Where to split a catalogue of `rows` products (by its statistics) into ranges of about
/// `batch`: the histogram bounds nearest the range boundaries. None — walk the index — when
/// the catalogue is small or the histogram is coarser than the ranges asked for.
fn split_points(bounds: &[String], rows: f64, batch: i64) -> Option<Vec<String>> {
    if !(rows >= SPLIT_AT_STATISTICS_FROM) || batch < 1 {
        return None;
    }
    let ranges = (rows / batch as f64).ceil().max(1.0) as usize;
    let buckets = bounds.len().saturating_sub(1);
    if ranges > buckets {
        return None;
    }
    Some((1..ranges).map(|i| bounds[i * buckets / ranges].clone()).collect())
}

/// [`split_points`] from the database's statistics.
async fn split_points_of(db: &sqlx::PgPool, batch: i64) -> Result<Option<Vec<String>>, JobError> {
    let stats: Option<(Option<Vec<String>>, f64)> = sqlx::query_as(STATISTICS).fetch_optional(db).await?;
    Ok(match stats {
        Some((Some(bounds), rows)) => split_points(&bounds, rows, batch),
        _ => None,
    })
}

impl Job for StockSync {
    fn name(&self) -> &'static str {
        "stock-sync"
    }

    /// At 02:00, ranges of 500,000 products (streamed 1,000 at a time), 30 minutes to run.
    fn defaults(&self) -> JobSettings {
        JobSettings { schedule: "0 0 2 * * *".into(), timeout_secs: 1800, batch_size: 500_000, ..JobSettings::default() }
            .with_options(&Options::default())
    }

    fn check(&self, settings: &JobSettings) -> Result<(), String> {
        settings.options::<Options>()?.check()
    }

    /// The run looks at current state, so an older queued tick is worth nothing once a newer
    /// one is behind it.
    fn coalesce(&self) -> bool {
        true
    }

    /// A range's first part makes its effects and emits its first alerts; a continuation
    /// (`resume_after`) emits the next ones.
    fn plan<'a>(&'a self, ctx: &'a JobCtx, _run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        let batch = i64::from(ctx.settings.batch_size.max(1));
        let db = &ctx.db;
        // A large catalogue is split where its statistics put every `batch` products (two
        // index probes per range): walking 1,000,000 index entries took 0.3-0.5 s of a run
        // whose compare takes 2 s. Streamed: one range (two ids) is held at a time.
        futures::stream::once(split_points_of(db, batch))
            .map_ok(move |splits| match splits {
                Some(splits) => sqlx::query_as::<_, (String, String)>(RANGES_AT).bind(splits).fetch(db),
                None => sqlx::query_as::<_, (String, String)>(RANGES).bind(batch).fetch(db),
            })
            .map_ok(|ranges| ranges.map(|r| r.map(|(first, last)| vec![first, last]).map_err(JobError::from)))
            .try_flatten()
            .boxed()
    }

    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(apply::apply(ctx, item))
    }

    fn finalize<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(alert::finalize(ctx, run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_catalogue_is_split_at_the_histogram_bounds_nearest_each_boundary() {
        let bounds: Vec<String> = (0..=100).map(|i| format!("p{:06}", i * 10_000)).collect();
        // 1,000,000 products in ranges of 500,000: one split, at the middle bound.
        assert_eq!(split_points(&bounds, 1_000_000.0, 500_000), Some(vec!["p500000".to_string()]));
        // Three ranges of about 340,000: at a third and two thirds of the histogram.
        assert_eq!(split_points(&bounds, 1_000_000.0, 340_000), Some(vec!["p330000".to_string(), "p660000".to_string()]));
        // One range: no split, one range [min, max] with no walk.
        assert_eq!(split_points(&bounds, 400_000.0, 500_000), Some(vec![]));
        // Small (counted exactly), finer than the histogram, or never analysed: walk the index.
        assert_eq!(split_points(&bounds, 99_999.0, 10_000), None);
        assert_eq!(split_points(&bounds, 1_000_000.0, 9_000), None);
        assert_eq!(split_points(&bounds, -1.0, 500_000), None);
        assert_eq!(split_points(&[], 1_000_000.0, 500_000), None);
    }

    #[test]
    fn wire_names_match_the_schema() {
        assert_eq!(Action::RedisRestored.as_str(), "REDIS_RESTORED");
        assert_eq!(Action::ManualReviewRequired.as_str(), "MANUAL_REVIEW_REQUIRED");
        assert_eq!(Cause::StaleReservation.as_str(), "STALE_RESERVATION");
    }
}
