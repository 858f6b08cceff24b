//! `stock-sync` on the real stack: one planted mismatch per cause, the urgency threshold,
//! exactly-once alerts under duplicate ticks and replay, a retried chunk, and a sync running
//! under a concurrent order load. Products and orders live in each test's own database; Redis
//! is shared, so every product and order id carries a random per-test prefix.
//!
//! The concurrent load plays the Order service with the order of operations the job's
//! confirmation relies on (see `src/jobs/stock_sync/mod.rs`):
//! - place: reserve in Redis (`Stock::reserve`, Lua) first, then insert the order
//!   (PAYMENT_WAIT) and its items in one SQL transaction — stock is never promised in the DB
//!   that Redis could not reserve;
//! - pay: one SQL transaction sets PAYMENT_COMPLETED and takes the quantities off
//!   `products.stock`, then `Stock::consume` drops the reservation (Redis stock stays taken);
//! - cancel: set ORDER_CANCELLED in SQL, then `Stock::release` gives the quantities back.
//!
//! Between the two steps of each, DB and Redis disagree for a moment; confirmation must
//! never mistake that for drift.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use redis::AsyncCommands;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::stock_sync::StockSync;
use scheduled_jobs::jobs::{Deadline, Job, JobCtx, Run};
use scheduled_jobs::jobs::stock::{stock_key, Reserve, Stock};
use scheduled_jobs::wire::derived_id;
use scheduled_jobs::wire::internal::{Outcome, RunResult};
use serde_json::Value as Json;
use sqlx::PgPool;

use crate::common::{isolated, read_all, unique};
use crate::processor::{drive, processor_on, publish, reset_group, results, test_db, tick};

const JOB: &str = "stock-sync";

struct Env {
    s: Settings,
    db: PgPool,
    stock: Stock,
    prefix: String,
}

async fn env(batch_size: u32, confirm_delay_ms: u64) -> Env {
    let mut s = isolated().await;
    let job = s.jobs.get_mut("stock_sync").expect("stock_sync settings");
    job.batch_size = batch_size;
    job.set_option("confirm_delay_ms", confirm_delay_ms as i64);
    let db = test_db(&s).await;
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let stock = Stock::connect(&url).await.unwrap();
    Env { s, db, stock, prefix: unique("ss") }
}

impl Env {
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A product with `db` stock in PostgreSQL and `redis` in `stock:{id}` (None: no key).
    async fn product(&self, name: &str, db: i32, redis: Option<i64>) -> String {
        let id = self.id(name);
        sqlx::query("INSERT INTO products (id, name, stock) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(name)
            .bind(db)
            .execute(&self.db)
            .await
            .unwrap();
        let mut c = self.stock.connection();
        match redis {
            Some(v) => c.set::<_, _, ()>(stock_key(&id), v).await.unwrap(),
            None => c.del::<_, ()>(stock_key(&id)).await.unwrap(),
        }
        id
    }

    async fn insert_order(&self, order: &str, status: &str, items: &[(String, i64)]) {
        let mut tx = self.db.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (id, user_id, status, total_amount, created_at) VALUES ($1, 'u', $2, 0, now())")
            .bind(order)
            .bind(status)
            .execute(&mut *tx)
            .await
            .unwrap();
        for (p, q) in items {
            sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ($1, $2, $3, 1)")
                .bind(order)
                .bind(p)
                .bind(*q as i32)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// The Order service placing an order: Redis first, then SQL. False if out of stock.
    async fn place(&self, order: &str, items: &[(String, i64)]) -> bool {
        match self.stock.reserve(order, items).await.unwrap() {
            Reserve::Reserved => {
                self.insert_order(order, "PAYMENT_WAIT", items).await;
                true
            }
            Reserve::AlreadyReserved | Reserve::InsufficientStock => false,
        }
    }

    /// Payment: SQL (status and DB stock together), then the reservation becomes a sale.
    async fn pay(&self, order: &str) {
        let mut tx = self.db.begin().await.unwrap();
        let paid = sqlx::query("UPDATE orders SET status = 'PAYMENT_COMPLETED', paid_at = now() WHERE id = $1 AND status = 'PAYMENT_WAIT'")
            .bind(order)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        if paid == 1 {
            sqlx::query(
                "UPDATE products p SET stock = p.stock - oi.quantity FROM order_items oi WHERE oi.order_id = $1 AND oi.product_id = p.id",
            )
            .bind(order)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        if paid == 1 {
            self.stock.consume(order).await.unwrap();
        }
    }

    /// Cancellation: SQL, then the reservation goes back to stock.
    async fn cancel(&self, order: &str) {
        let n = sqlx::query("UPDATE orders SET status = 'ORDER_CANCELLED', cancelled_at = now() WHERE id = $1 AND status = 'PAYMENT_WAIT'")
            .bind(order)
            .execute(&self.db)
            .await
            .unwrap()
            .rows_affected();
        if n == 1 {
            self.stock.release(order).await.unwrap();
        }
    }

    /// (product, expected from the DB, Redis value) for every product.
    async fn state(&self) -> Vec<(String, i64, Option<String>)> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.id, p.stock::bigint - COALESCE((SELECT sum(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id
                                                      WHERE oi.product_id = p.id AND o.status = 'PAYMENT_WAIT'), 0)::bigint
             FROM products p ORDER BY p.id",
        )
        .fetch_all(&self.db)
        .await
        .unwrap();
        let keys: Vec<String> = rows.iter().map(|(p, _)| stock_key(p)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut self.stock.connection()).await.unwrap();
        rows.into_iter().zip(values).map(|((p, e), v)| (p, e, v)).collect()
    }

    async fn redis(&self, product: &str) -> Option<String> {
        self.stock.connection().get(stock_key(product)).await.unwrap()
    }

    /// Publishes the tick of `at` and runs a processor until it settles.
    async fn sync(&self, at: DateTime<Utc>) {
        publish(&self.s, &[tick(JOB, at, &[])]).await;
        let mut p = processor_on(&self.s, self.db.clone()).await;
        drive(&mut p, 3).await;
    }

    fn ctx(&self) -> JobCtx {
        JobCtx {
            db: self.db.clone(),
            redis: Some(self.stock.connection()),
            tz: chrono_tz::UTC,
            settings: self.s.job(JOB).cloned().unwrap_or_default(),
            deadline: Deadline::none(),
            effects_done: false,
        }
    }
}

fn minutes_ago(m: i64) -> DateTime<Utc> {
    let t = Utc::now() - TimeDelta::minutes(m);
    DateTime::from_timestamp(t.timestamp() - t.timestamp() % 60, 0).unwrap()
}

/// Committed records of `topic`, decoded to JSON; each keyed by its field `key`.
async fn committed(s: &Settings, topic: Topic, key: &str) -> Vec<Json> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, k, value) in read_all(s, &s.topic(topic), "read_committed") {
        let d = codec.decode(&value.unwrap()).await.unwrap();
        let json = scheduled_jobs::wire::avro::to_json(&d.value, &d.schema);
        assert_eq!(k.as_deref(), json[key].as_str().map(str::as_bytes), "key is the {key}");
        out.push(json);
    }
    out
}

/// Committed alerts.
async fn alerts(s: &Settings) -> Vec<Json> {
    committed(s, Topic::StockSyncAlert, "productId").await
}

/// Committed run summaries.
async fn summaries(s: &Settings) -> Vec<Json> {
    committed(s, Topic::StockSyncRunSummary, "runId").await
}

fn by_product(alerts: &[Json]) -> BTreeMap<String, Json> {
    alerts.iter().map(|a| (a["productId"].as_str().unwrap().to_string(), a.clone())).collect()
}

fn sync_results(r: Vec<RunResult>) -> Vec<RunResult> {
    r.into_iter().filter(|r| r.job == JOB).collect()
}

#[tokio::test]
async fn each_cause_is_detected_classified_and_repaired_except_an_invalid_db_value() {
    let e = env(3, 100).await;
    let ok: Vec<String> = vec![e.product("a-ok-1", 50, Some(50)).await, e.product("a-ok-2", 7, Some(7)).await];
    // Consistent with a waiting order: 20 in stock, 3 reserved.
    let ok_waiting = e.product("a-ok-3", 20, Some(20)).await;
    assert!(e.place(&e.id("o-ok"), &[(ok_waiting.clone(), 3)]).await);
    let missing = e.product("b-missing", 40, None).await;
    let drift = e.product("c-drift", 30, Some(37)).await;
    // Cancelled in SQL, but the release never reached Redis: 4 still held by the hash.
    let stale = e.product("d-stale", 25, Some(25)).await;
    let stale_order = e.id("o-stale");
    assert!(e.place(&stale_order, &[(stale.clone(), 4)]).await);
    sqlx::query("UPDATE orders SET status = 'ORDER_CANCELLED', cancelled_at = now() WHERE id = $1")
        .bind(&stale_order)
        .execute(&e.db)
        .await
        .unwrap();
    // A waiting order whose reservation never reached Redis: expected 15, Redis 20.
    let no_res = e.product("e-no-reservation", 20, Some(20)).await;
    e.insert_order(&e.id("o-nores"), "PAYMENT_WAIT", &[(no_res.clone(), 5)]).await;
    let invalid = e.product("f-invalid", -2, Some(0)).await;
    let garbage = e.product("g-garbage", 10, None).await;
    let _: () = e.stock.connection().set(stock_key(&garbage), "not-a-number").await.unwrap();

    e.sync(minutes_ago(5)).await;

    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    let run = &r[0];
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    let c = |k: &str| run.counts.get(k).copied().unwrap_or(-1);
    assert_eq!((c("products"), c("chunks")), (9, 3), "nine products in ranges of three: {run:?}");
    assert_eq!((c("mismatches"), c("repaired"), c("manualReview"), c("casRefused"), c("urgent")), (6, 4, 2, 0, 0), "{run:?}");
    assert_eq!((c("restored"), c("deferred")), (4, 0), "{run:?}");
    let summary = summaries(&e.s).await;
    assert_eq!(summary.len(), 1, "one summary per run: {summary:#?}");
    let sm = &summary[0];
    assert_eq!((sm["runId"].as_str(), sm["urgent"].as_bool(), sm["severity"].as_str()), (Some(run.run_id.as_str()), Some(false), Some("HIGH")), "{sm}");
    assert_eq!((sm["mismatches"].as_i64(), sm["restored"].as_i64(), sm["deferred"].as_i64(), sm["manualReview"].as_i64()), (Some(6), Some(4), Some(0), Some(2)), "{sm}");
    assert_eq!(
        sm["mismatchesByCause"],
        serde_json::json!({"REDIS_KEY_MISSING": 1, "REDIS_DRIFT": 2, "STALE_RESERVATION": 1, "MISSING_RESERVATION": 1, "INVALID_DB_VALUE": 1}),
        "{sm}"
    );

    let a = alerts(&e.s).await;
    assert_eq!(a.len(), 6, "{a:#?}");
    let a = by_product(&a);
    let expect = |p: &str, cause: &str, action: &str, db: i64, redis: Json, severity: &str| {
        let x = &a[p];
        assert_eq!(x["cause"], cause, "{p}: {x}");
        assert_eq!(x["action"], action, "{p}: {x}");
        assert_eq!(x["dbStock"], db, "{p}: {x}");
        assert_eq!(x["redisStock"], redis, "{p}: {x}");
        let discrepancy = db - redis.as_i64().unwrap_or(0);
        assert_eq!(x["discrepancy"], discrepancy, "{p}: {x}");
        assert_eq!(x["severity"], severity, "{p}: {x}");
        assert_eq!(x["runId"], run.run_id.as_str());
        assert_eq!(x["mismatchesInRun"], 0, "the run's total is in its summary");
        assert_eq!(x["eventId"], derived_id(&["stock-sync-alert", &run.run_id, p]).to_string());
    };
    expect(&missing, "REDIS_KEY_MISSING", "REDIS_RESTORED", 40, Json::Null, "MEDIUM");
    expect(&drift, "REDIS_DRIFT", "REDIS_RESTORED", 30, 37.into(), "LOW");
    expect(&stale, "STALE_RESERVATION", "REDIS_RESTORED", 25, 21.into(), "LOW");
    expect(&no_res, "MISSING_RESERVATION", "REDIS_RESTORED", 15, 20.into(), "LOW");
    expect(&invalid, "INVALID_DB_VALUE", "MANUAL_REVIEW_REQUIRED", -2, 0.into(), "HIGH");
    expect(&garbage, "REDIS_DRIFT", "MANUAL_REVIEW_REQUIRED", 10, Json::Null, "HIGH");
    for p in ok.iter().chain([&ok_waiting]) {
        assert!(!a.contains_key(p), "no alert for the consistent {p}");
    }

    // Repaired: expected == Redis, except where the DB is invalid or Redis holds garbage.
    for (p, expected, redis) in e.state().await {
        if p == invalid {
            assert_eq!(redis.as_deref(), Some("0"), "invalid DB value: Redis left unchanged");
        } else if p == garbage {
            assert_eq!(redis.as_deref(), Some("not-a-number"), "left for manual review");
        } else {
            assert_eq!(redis, Some(expected.to_string()), "{p}");
        }
    }
    // The stale field is gone: a late release of that order can no longer give 4 back twice.
    assert_eq!(e.stock.release(&stale_order).await.unwrap(), 0);
    assert_eq!(e.redis(&stale).await.as_deref(), Some("25"));
    // The row keeps which orders' fields were dropped (and only that row has any).
    let dropped: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT product_id, stale_orders FROM stock_sync_mismatches WHERE run_id = $1 AND stale_orders <> '{}'")
            .bind(&run.run_id)
            .fetch_all(&e.db)
            .await
            .unwrap();
    assert_eq!(dropped, vec![(stale.clone(), vec![stale_order.clone()])]);
}

/// Plants `n` drifts (+1 each) among 5 consistent products and returns the run's alerts,
/// summaries and counts.
async fn run_with_mismatches(n: usize) -> (Vec<Json>, Vec<Json>, BTreeMap<String, i64>) {
    let e = env(4, 50).await;
    for i in 0..n {
        e.product(&format!("m{i:03}"), 100, Some(101)).await;
    }
    for i in 0..5 {
        e.product(&format!("k{i:03}"), 100, Some(100)).await;
    }
    e.sync(minutes_ago(5)).await;
    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    (alerts(&e.s).await, summaries(&e.s).await, r[0].counts.clone())
}

/// The seed's "more than 10 mismatches: urgent alert" is the run's one summary, not a
/// million CRITICAL alerts: the Notification service pages once per run.
#[tokio::test]
async fn eleven_mismatches_make_the_run_urgent_and_ten_do_not() {
    let ((eleven, s11, c11), (ten, s10, c10)) = tokio::join!(run_with_mismatches(11), run_with_mismatches(10));
    assert_eq!(eleven.len(), 11);
    assert!(eleven.iter().all(|a| a["severity"] == "LOW"), "an alert's severity is its own: {eleven:#?}");
    assert_eq!(s11.len(), 1, "{s11:#?}");
    assert_eq!((s11[0]["urgent"].as_bool(), s11[0]["severity"].as_str(), s11[0]["mismatches"].as_i64()), (Some(true), Some("CRITICAL"), Some(11)));
    assert_eq!(s11[0]["urgentAfterMismatches"], 10);
    assert_eq!((c11["mismatches"], c11["urgent"]), (11, 1), "{c11:?}");
    assert_eq!(ten.len(), 10);
    assert_eq!(s10.len(), 1, "{s10:#?}");
    assert_eq!((s10[0]["urgent"].as_bool(), s10[0]["severity"].as_str(), s10[0]["mismatches"].as_i64()), (Some(false), Some("LOW"), Some(10)));
    assert_eq!((c10["mismatches"], c10["urgent"]), (10, 0), "{c10:?}");
}

/// Issue 16.1: a repair refused because the product moved between confirmation and the
/// compare-and-set is reported REPAIR_DEFERRED — by the alert, the run's counts and its
/// summary — Redis keeps the concurrent change, and the next run repairs it.
#[tokio::test]
async fn a_refused_repair_is_reported_deferred_and_the_next_run_repairs_it() {
    let e = env(10, 20).await;
    let moved = e.product("moved", 30, Some(37)).await;
    let plain = e.product("plain", 12, Some(11)).await;
    // Hold the repair of `moved` after its row is recorded (the window between confirmation
    // and the CAS), long enough to change its counter there.
    scheduled_jobs::runtime::fault::pause_at(scheduled_jobs::runtime::fault::BEFORE_STOCK_REPAIR, moved.clone(), Duration::from_secs(3));
    let intervene = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_sync_mismatches WHERE product_id = $1")
                .bind(&moved)
                .fetch_one(&e.db)
                .await
                .unwrap();
            if n > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the mismatch of {moved} was never recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An order released 1 in the window: the product moved.
        let _: i64 = e.stock.connection().incr(stock_key(&moved), 1).await.unwrap();
    };
    tokio::join!(e.sync(minutes_ago(10)), intervene);

    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    let c = |k: &str| r[0].counts.get(k).copied().unwrap_or(-1);
    assert_eq!((c("mismatches"), c("casRefused"), c("deferred"), c("restored"), c("repaired")), (2, 1, 1, 1, 1), "{:?}", r[0]);
    let a = by_product(&alerts(&e.s).await);
    assert_eq!(a.len(), 2, "{a:#?}");
    assert_eq!((a[&moved]["action"].as_str(), a[&moved]["severity"].as_str()), (Some("REPAIR_DEFERRED"), Some("MEDIUM")), "{}", a[&moved]);
    assert_eq!(a[&moved]["redisStock"], 37, "what was observed and confirmed");
    assert_eq!(a[&plain]["action"], "REDIS_RESTORED");
    let sm = summaries(&e.s).await;
    assert_eq!((sm[0]["restored"].as_i64(), sm[0]["deferred"].as_i64(), sm[0]["severity"].as_str()), (Some(1), Some(1), Some("MEDIUM")), "{sm:#?}");
    assert_eq!(e.redis(&moved).await.as_deref(), Some("38"), "the concurrent change was not overwritten");
    assert_eq!(e.redis(&plain).await.as_deref(), Some("12"));

    // The next run: the pause holds `moved` again, but nothing moves it this time.
    e.sync(minutes_ago(5)).await;
    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 2, "{r:#?}");
    let next = r.iter().find(|x| x.run_id != r[0].run_id).unwrap();
    assert_eq!((next.counts.get("mismatches"), next.counts.get("restored"), next.counts.get("deferred")), (Some(&1), Some(&1), Some(&0)), "{next:?}");
    assert_eq!(e.redis(&moved).await.as_deref(), Some("30"), "repaired by the next run");
    let next_alerts: Vec<Json> = alerts(&e.s).await.into_iter().filter(|x| x["runId"] == next.run_id.as_str()).collect();
    assert_eq!(next_alerts.len(), 1, "{next_alerts:#?}");
    assert_eq!((next_alerts[0]["productId"].as_str(), next_alerts[0]["action"].as_str()), (Some(moved.as_str()), Some("REDIS_RESTORED")));
}

/// Issue 16.2 at test scale: every key missing (Redis restarted empty). Every product is
/// restored, each alert is emitted exactly once, a range's alerts leave in parts of at most
/// `alerts_per_transaction` (continuations of the chunk, visible on the work-item topic), and
/// the run's one summary says urgent with the cause.
#[tokio::test]
async fn a_redis_that_lost_every_key_is_restored_with_bounded_transactions_and_one_summary() {
    let mut e = env(40, 20).await;
    e.s.jobs.get_mut("stock_sync").unwrap().set_option("alerts_per_transaction", 7);
    // One consumed record per transaction, so the largest transaction is one part's: the
    // committer's grouping of records has its own bound (10,000 records).
    e.s.processor.records_per_transaction = 1;
    for i in 0..100 {
        e.product(&format!("w{i:03}"), 10 + i, None).await;
    }
    publish(&e.s, &[tick(JOB, minutes_ago(5), &[])]).await;
    let mut p = processor_on(&e.s, e.db.clone()).await;
    drive(&mut p, 3).await;
    // 7 alerts and a continuation, or at the run's end the ledger entries, result and summary.
    assert!(p.largest_transaction() <= 7 + 4, "largest transaction: {} records", p.largest_transaction());

    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{:?}", r[0]);
    let c = |k: &str| r[0].counts.get(k).copied().unwrap_or(-1);
    assert_eq!((c("products"), c("chunks"), c("mismatches"), c("restored"), c("urgent")), (100, 3, 100, 100, 1), "{:?}", r[0]);
    for (p, expected, redis) in e.state().await {
        assert_eq!(redis, Some(expected.to_string()), "{p} restored");
    }
    let a = alerts(&e.s).await;
    assert_eq!(a.len(), 100, "one alert per product, none twice");
    assert_eq!(by_product(&a).len(), 100);
    assert!(a.iter().all(|x| x["cause"] == "REDIS_KEY_MISSING" && x["action"] == "REDIS_RESTORED" && x["severity"] == "MEDIUM"));
    let sm = summaries(&e.s).await;
    assert_eq!(sm.len(), 1);
    assert_eq!((sm[0]["urgent"].as_bool(), sm[0]["severity"].as_str()), (Some(true), Some("CRITICAL")));
    assert_eq!(sm[0]["mismatchesByCause"], serde_json::json!({"REDIS_KEY_MISSING": 100}));
    // Ranges of 40, 40 and 20 products: ceil(40/7) = 6 parts each for the first two, 3 for the
    // last; every part but a chunk's last writes a continuation.
    let continuations = read_all(&e.s, &e.s.topic(Topic::WorkItems), "read_committed")
        .into_iter()
        .filter(|(_, key, _)| key.is_some())
        .count()
        - 4; // three chunks and the seal
    assert_eq!(continuations, 5 + 5 + 2, "parts beyond each chunk's first");
}

#[tokio::test]
async fn alerts_are_emitted_once_per_mismatch_under_duplicate_ticks_and_replay() {
    let e = env(2, 50).await;
    let planted: BTreeSet<String> = [
        e.product("p1", 10, Some(12)).await,
        e.product("p2", 10, None).await,
        e.product("p3", 10, Some(10)).await,
        e.product("p4", 10, Some(3)).await,
        e.product("p5", 10, Some(10)).await,
    ]
    .into_iter()
    .filter(|p| !p.ends_with("p3") && !p.ends_with("p5"))
    .collect();
    let at = minutes_ago(5);
    let t = tick(JOB, at, &[]);
    let mut twin = t.clone();
    twin.producer = Some("producer-b".into());
    publish(&e.s, &[t.clone(), twin]).await;
    let mut p = processor_on(&e.s, e.db.clone()).await;
    drive(&mut p, 3).await;

    let check = |a: &[Json], when: &str| {
        assert_eq!(a.len(), 3, "{when}: {a:#?}");
        let products: BTreeSet<String> = a.iter().map(|x| x["productId"].as_str().unwrap().to_string()).collect();
        assert_eq!(products, planted, "{when}");
        let ids: BTreeSet<&str> = a.iter().map(|x| x["eventId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3, "{when}: distinct event ids");
    };
    check(&alerts(&e.s).await, "after the run (two identical ticks)");

    // The same tick again, later.
    publish(&e.s, std::slice::from_ref(&t)).await;
    drive(&mut p, 2).await;
    check(&alerts(&e.s).await, "after the same tick again");
    drop(p);

    // Replay the tick topic from offset 0 with a fresh processor.
    reset_group(&e.s, &e.s.processor.group_id, &e.s.topic(Topic::Tick));
    let mut p = processor_on(&e.s, e.db.clone()).await;
    let handled = drive(&mut p, 3).await;
    assert!(handled >= 3, "the ticks were consumed again ({handled})");
    check(&alerts(&e.s).await, "after replaying the tick topic");
    assert_eq!(sync_results(results(&e.s).await).len(), 1, "one run");
}

/// stock-sync's plan of a run over `db` in ranges of `batch`, collected.
async fn plan_at(s: &Settings, db: &PgPool, batch: u32) -> Vec<Vec<String>> {
    let mut settings = s.job(JOB).cloned().unwrap_or_default();
    settings.batch_size = batch;
    let ctx = JobCtx { db: db.clone(), redis: None, tz: chrono_tz::UTC, settings, deadline: Deadline::none(), effects_done: false };
    let run = Run {
        run_id: unique("run"),
        job: JOB.into(),
        period: "p".into(),
        attempt: 1,
        tick: tick(JOB, minutes_ago(1), &[]),
        planned_at: Utc::now(),
    };
    StockSync.plan(&ctx, &run).map(|r| r.unwrap()).collect().await
}

/// Planning cuts contiguous ranges that cover every product exactly once, whatever the
/// batch size, and plans nothing for an empty table.
#[tokio::test]
async fn plan_cuts_ranges_that_cover_every_product_once() {
    let s = crate::common::settings();
    let db = test_db(&s).await;
    let plan = |batch: u32| plan_at(&s, &db, batch);
    assert!(plan(3).await.is_empty(), "no products, no chunks");
    let ids: Vec<String> = (0..10).map(|i| format!("p{i:02}")).collect();
    sqlx::query("INSERT INTO products (id, name, stock) SELECT id, id, 1 FROM unnest($1::text[]) AS t(id)")
        .bind(&ids)
        .execute(&db)
        .await
        .unwrap();
    for (batch, chunks) in [(1u32, 10usize), (3, 4), (5, 2), (10, 1), (1000, 1)] {
        let ranges = plan(batch).await;
        assert_eq!(ranges.len(), chunks, "batch {batch}: {ranges:?}");
        let mut covered = Vec::new();
        for r in &ranges {
            assert_eq!(r.len(), 2, "a range is [first, last]: {r:?}");
            covered.extend(ids.iter().filter(|id| **id >= r[0] && **id <= r[1]).cloned());
        }
        assert_eq!(covered, ids, "batch {batch}: every product exactly once, in order: {ranges:?}");
        assert!(ranges.iter().all(|r| ids.iter().filter(|id| **id >= r[0] && **id <= r[1]).count() <= batch as usize));
    }
}

/// From 100,000 products, an analysed catalogue is split where its statistics put every
/// `batch` products (no walk over the index): every product is still in exactly one range, in
/// order, each range is near its size, and the inner ranges begin at histogram bounds — the
/// walk would begin them at exact multiples of the batch, which are not.
#[tokio::test]
async fn a_large_analysed_catalogue_is_split_at_its_statistics_and_covered_exactly_once() {
    let s = crate::common::settings();
    let db = test_db(&s).await;
    // This test's own database: autovacuum must not re-analyse between the plan and the
    // statistics read below.
    sqlx::query("ALTER TABLE products SET (autovacuum_enabled = false)").execute(&db).await.unwrap();
    sqlx::query("INSERT INTO products (id, name, stock) SELECT 'p' || lpad(i::text, 6, '0'), 'p', 1 FROM generate_series(0, 149999) i")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("ANALYZE products").execute(&db).await.unwrap();
    let batch = 40_000usize;
    let ranges = plan_at(&s, &db, batch as u32).await;
    assert_eq!(ranges.len(), 4, "150,000 products in ranges of about 40,000: {ranges:?}");

    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM products ORDER BY id").fetch_all(&db).await.unwrap();
    let mut covered = Vec::new();
    for r in &ranges {
        let inside: Vec<String> = ids.iter().filter(|id| **id >= r[0] && **id <= r[1]).cloned().collect();
        assert!((batch * 3 / 4..=batch * 5 / 4).contains(&inside.len()), "range {r:?} holds {} products", inside.len());
        covered.extend(inside);
    }
    assert_eq!(covered, ids, "every product exactly once, in order: {ranges:?}");
    let bounds: Vec<String> =
        sqlx::query_scalar("SELECT histogram_bounds::text::text[] FROM pg_stats WHERE tablename = 'products' AND attname = 'id'")
            .fetch_one(&db)
            .await
            .unwrap();
    for r in &ranges[1..] {
        assert!(bounds.contains(&r[0]), "range {r:?} begins at a histogram bound");
    }
}

/// A chunk applied twice (its Kafka commit lost after the effects) records and repairs once
/// and keeps the first observation; finalisation from the table is repeatable.
#[tokio::test]
async fn a_retried_chunk_keeps_its_first_observation_and_finalize_is_repeatable() {
    let e = env(100, 10).await;
    let drift = e.product("r-drift", 30, Some(33)).await;
    let fine = e.product("r-fine", 5, Some(5)).await;
    let ctx = e.ctx();
    let run_id = unique("run");
    let item = crate::common::work_item(JOB, &run_id, 0, vec![drift.clone(), fine.clone()], Utc::now());
    let first = StockSync.apply(&ctx, &item).await.unwrap();
    assert_eq!(first.counts.get("confirmed"), Some(&1), "{first:?}");
    assert_eq!(e.redis(&drift).await.as_deref(), Some("30"));
    let again = StockSync.apply(&ctx, &item).await.unwrap();
    assert_eq!(again.counts.get("candidates"), Some(&0), "nothing left to repair: {again:?}");
    assert_eq!(again.counts.get("repaired"), Some(&1), "the retry still reports the first attempt's repair: {again:?}");
    let fields = |v: &apache_avro::types::Value| match v {
        apache_avro::types::Value::Record(f) => f.iter().filter(|(k, _)| k != "eventTimestamp").cloned().collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!((first.records.len(), again.records.len(), first.more.as_deref()), (1, 1, None));
    assert_eq!(fields(&first.records[0].value.value().unwrap()), fields(&again.records[0].value.value().unwrap()), "a retried chunk emits the same alert");
    let redis_stock = fields(&first.records[0].value.value().unwrap()).into_iter().find(|(k, _)| k == "redisStock").unwrap().1;
    assert_eq!(redis_stock, apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Int(33))), "first observation kept");

    let run = Run {
        run_id: run_id.clone(),
        job: JOB.into(),
        period: "p".into(),
        attempt: 1,
        tick: tick(JOB, minutes_ago(1), &[]),
        planned_at: Utc::now(),
    };
    let f1 = StockSync.finalize(&ctx, &run).await.unwrap();
    let f2 = StockSync.finalize(&ctx, &run).await.unwrap();
    assert_eq!(f1.records.len(), 1, "the run's summary");
    assert_eq!(f1.counts, f2.counts);
    assert_eq!((f1.counts.get("mismatches"), f1.counts.get("restored")), (Some(&1), Some(&1)), "{:?}", f1.counts);
    assert_eq!(fields(&f1.records[0].value.value().unwrap()), fields(&f2.records[0].value.value().unwrap()), "same summary from a retried finalisation");

    // A malformed work item fails the chunk instead of guessing.
    let mut bad = item.clone();
    bad.ids = vec![drift.clone()];
    assert!(StockSync.apply(&ctx, &bad).await.is_err());
}

/// A group that recorded its rows itself notes its outcome once, as a whole: its rows carry no
/// outcome of their own and read RESTORED through `stock_sync_mismatches` only once the group
/// completed. A chunk stopped between the record and the repair (a crash) leaves them pending
/// (the alert would say REPAIR_DEFERRED); its retry repairs them and notes each on its row.
#[tokio::test]
async fn a_group_outcome_is_noted_once_and_a_crash_before_it_leaves_the_rows_pending() {
    let e = env(100, 10).await;
    let held = e.product("g-held", 30, Some(33)).await;
    let other = e.product("g-other", 8, Some(5)).await;
    let run_id = unique("run");
    let item = crate::common::work_item(JOB, &run_id, 0, vec![held.clone(), other.clone()], Utc::now());
    let ctx = e.ctx();
    let outcomes = |e: &Env| {
        let (db, run_id) = (e.db.clone(), run_id.clone());
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
                "SELECT v.product_id, r.repair, v.repair FROM stock_sync_mismatches v
                 JOIN stock_sync_mismatch_rows r USING (run_id, product_id) WHERE run_id = $1 ORDER BY product_id",
            )
            .bind(&run_id)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    // The first attempt stops (is dropped) while holding its group's repair. It runs on a
    // pool of its own, closed after it like a crashed process's connections: an attempt
    // dropped mid-statement can leave its connection out of step with the server (sqlx then
    // answers the next statement on it with a protocol error), and the retry would otherwise
    // take that connection from the shared pool.
    let dying = sqlx::PgPool::connect_with((*e.db.connect_options()).clone()).await.unwrap();
    let crashing = JobCtx { db: dying.clone(), ..e.ctx() };
    scheduled_jobs::runtime::fault::pause_at(scheduled_jobs::runtime::fault::BEFORE_STOCK_REPAIR, held.clone(), Duration::from_secs(30));
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        let recorded = async {
            while outcomes(&e).await.len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = StockSync.apply(&crashing, &item) => panic!("the chunk went past its pause"),
            () = recorded => {}
        }
    })
    .await;
    assert!(stopped.is_ok(), "the group was never recorded");
    dying.close().await;
    assert_eq!(
        outcomes(&e).await,
        vec![(held.clone(), None, None), (other.clone(), None, None)],
        "recorded, not repaired: pending"
    );
    assert_eq!(e.redis(&held).await.as_deref(), Some("33"), "not repaired");
    let run = Run { run_id: run_id.clone(), job: JOB.into(), period: "p".into(), attempt: 1, tick: tick(JOB, minutes_ago(1), &[]), planned_at: Utc::now() };
    let pending = StockSync.finalize(&ctx, &run).await.unwrap();
    assert_eq!((pending.counts.get("restored"), pending.counts.get("deferred")), (Some(&0), Some(&2)), "{:?}", pending.counts);

    // The retry (no pause now): both rows are its predecessor's, so each outcome goes on its row.
    scheduled_jobs::runtime::fault::unpause(scheduled_jobs::runtime::fault::BEFORE_STOCK_REPAIR, &held);
    let retried = StockSync.apply(&ctx, &item).await.unwrap();
    assert_eq!(retried.counts.get("repaired"), Some(&2), "{retried:?}");
    let restored = Some("RESTORED".to_string());
    assert_eq!(
        outcomes(&e).await,
        vec![(held.clone(), restored.clone(), restored.clone()), (other.clone(), restored.clone(), restored.clone())]
    );

    // A fresh run of drifted products: one group, its rows without an outcome of their own,
    // RESTORED by the group's completion.
    e.stock.connection().set::<_, _, ()>(stock_key(&held), 40).await.unwrap();
    e.stock.connection().set::<_, _, ()>(stock_key(&other), 1).await.unwrap();
    let run_id2 = unique("run");
    let item2 = crate::common::work_item(JOB, &run_id2, 0, vec![held.clone(), other.clone()], Utc::now());
    let out = StockSync.apply(&ctx, &item2).await.unwrap();
    assert_eq!(out.counts.get("repaired"), Some(&2), "{out:?}");
    let rows: Vec<(Option<String>, Option<String>, bool)> = sqlx::query_as(
        "SELECT r.repair, v.repair, r.repair_group IS NOT NULL FROM stock_sync_mismatches v
         JOIN stock_sync_mismatch_rows r USING (run_id, product_id) WHERE run_id = $1 ORDER BY product_id",
    )
    .bind(&run_id2)
    .fetch_all(&e.db)
    .await
    .unwrap();
    assert_eq!(rows, vec![(None, restored.clone(), true), (None, restored.clone(), true)]);
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_sync_repair_groups WHERE run_id = $1").bind(&run_id2).fetch_one(&e.db).await.unwrap();
    assert_eq!(groups, 1);
    assert!(out.records.iter().all(|r| format!("{:?}", r.value.value().unwrap()).contains("REDIS_RESTORED")), "{:?}", out.records);
}

/// A group is recorded with a plain insert when none of its products had a row as the range
/// was read; a row that appears meanwhile (a zombie attempt of the same chunk recording first)
/// must not fail the chunk: the group is recorded again keeping that first observation.
#[tokio::test]
async fn a_row_recorded_by_a_zombie_during_confirmation_keeps_the_first_observation() {
    let e = env(100, 1500).await;
    let drift = e.product("z-drift", 30, Some(33)).await;
    let other = e.product("z-other", 8, Some(5)).await;
    let run_id = unique("run");
    let item = crate::common::work_item(JOB, &run_id, 0, vec![drift.clone(), other.clone()], Utc::now());
    let ctx = e.ctx();
    let zombie = async {
        // Well inside the 1,500 ms confirmation wait: the compare has read the range by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query(
            "INSERT INTO stock_sync_mismatch_rows (run_id, product_id, product_stock, db_stock, redis_stock, cause, action, detected_at)
             VALUES ($1, $2, 30, 30, 34, 'REDIS_DRIFT', 'REDIS_RESTORED', now())",
        )
        .bind(&run_id)
        .bind(&drift)
        .execute(&e.db)
        .await
        .unwrap();
    };
    let (out, ()) = tokio::join!(StockSync.apply(&ctx, &item), zombie);
    let out = out.expect("the chunk completes despite the zombie's row");
    assert_eq!(out.counts.get("confirmed"), Some(&2), "{out:?}");
    let rows: Vec<(String, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT product_id, redis_stock, repair FROM stock_sync_mismatches WHERE run_id = $1 ORDER BY product_id")
            .bind(&run_id)
            .fetch_all(&e.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(drift.clone(), Some(34), Some("RESTORED".into())), (other.clone(), Some(5), Some("RESTORED".into()))],
        "the zombie's first observation is kept, the other product recorded, both outcomes noted"
    );
    assert_eq!((e.redis(&drift).await.as_deref(), e.redis(&other).await.as_deref()), (Some("30"), Some("8")));
    assert_eq!(out.records.len(), 2, "{out:?}");
}

/// A chunk recorded complete whose transaction was lost is applied again — possibly after
/// another chunk finalised the run from its rows (the cluster fault profile caught a summary of
/// 6 mismatches next to 8 alerts: the retry had found 2 products that drifted since). The retry
/// only emits what the first attempt recorded; a product that drifted since waits for the next
/// run, and the summary agrees with the alerts.
#[tokio::test]
async fn a_chunk_applied_again_after_it_completed_records_nothing_new() {
    let e = env(100, 10).await;
    let drift = e.product("n-drift", 30, Some(33)).await;
    let later = e.product("n-later", 10, Some(10)).await;
    let run_id = unique("run");
    let item = crate::common::work_item(JOB, &run_id, 0, vec![drift.clone(), later.clone()], Utc::now());
    let first = StockSync.apply(&e.ctx(), &item).await.unwrap();
    assert_eq!(first.records.len(), 1, "{first:?}");
    let run = Run { run_id: run_id.clone(), job: JOB.into(), period: "p".into(), attempt: 1, tick: tick(JOB, minutes_ago(1), &[]), planned_at: Utc::now() };
    let summary = StockSync.finalize(&e.ctx(), &run).await.unwrap();
    assert_eq!(summary.counts.get("mismatches"), Some(&1));

    // Drifts after the run was finalised; then the completed chunk is applied again.
    let _: () = e.stock.connection().set(stock_key(&later), 12).await.unwrap();
    let again = StockSync.apply(&JobCtx { effects_done: true, ..e.ctx() }, &item).await.unwrap();
    let products: Vec<String> = again
        .records
        .iter()
        .map(|r| match &r.value.value().unwrap() {
            apache_avro::types::Value::Record(f) => format!("{:?}", f.iter().find(|(k, _)| k == "productId").unwrap().1),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(products, vec![format!("{:?}", apache_avro::types::Value::String(drift.clone()))], "only the recorded mismatch is emitted again");
    assert_eq!(e.redis(&later).await.as_deref(), Some("12"), "the new drift is left for the next run");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_sync_mismatches WHERE run_id = $1").bind(&run_id).fetch_one(&e.db).await.unwrap();
    assert_eq!(recorded, 1, "nothing new recorded under a finalised run");
    let again_summary = StockSync.finalize(&e.ctx(), &run).await.unwrap();
    assert_eq!(again_summary.counts, summary.counts, "the summary still agrees with the alerts");
}

/// A tiny deterministic generator (no extra dependency) for the load.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_under_concurrent_orders_overwrites_nothing_and_converges() {
    // A confirmation window far above the load's two-step windows (milliseconds), so a busy
    // machine cannot turn an order in flight into a false mismatch.
    let e = Arc::new(env(5, 400).await);
    let mut products = Vec::new();
    for i in 0..40 {
        products.push(e.product(&format!("c{i:03}"), 10_000, Some(10_000)).await);
    }
    // The load orders the first 20 (hot); the rest stay quiet. Real drift on two hot and two
    // quiet products: the quiet ones can be confirmed and repaired while the load runs.
    let hot: Vec<String> = products[..20].to_vec();
    let planted: BTreeSet<String> = [3usize, 7, 25, 33].iter().map(|i| products[*i].clone()).collect();
    let mut c = e.stock.connection();
    let _: () = c.set(stock_key(&products[3]), 10_005).await.unwrap();
    let _: () = c.set(stock_key(&products[7]), 9_990).await.unwrap();
    let _: () = c.set(stock_key(&products[25]), 10_001).await.unwrap();
    let _: () = c.del(stock_key(&products[33])).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let (e, stop, placed, products) = (e.clone(), stop.clone(), placed.clone(), hot.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut waiting: Vec<String> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let order = e.id(&format!("w{w}-o{n}"));
                n += 1;
                let mut items = vec![(products[rng.next(products.len() as u64) as usize].clone(), 1 + rng.next(3) as i64)];
                let second = products[rng.next(products.len() as u64) as usize].clone();
                if rng.next(3) == 0 && second != items[0].0 {
                    items.push((second, 1 + rng.next(2) as i64));
                }
                if e.place(&order, &items).await {
                    placed.fetch_add(1, Ordering::SeqCst);
                    waiting.push(order);
                }
                // Settle an earlier order now and then; some stay waiting to the end.
                if waiting.len() > 3 {
                    let o = waiting.remove(rng.next(waiting.len() as u64) as usize);
                    match rng.next(10) {
                        0..=4 => e.pay(&o).await,
                        5..=8 => e.cancel(&o).await,
                        _ => {}
                    }
                }
                // The load's pace (think time between a customer's actions), not a wait.
                tokio::time::sleep(Duration::from_millis(rng.next(20))).await;
            }
        }));
    }

    // The sync starts with the load under way: orders placed, some settled, some waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while placed.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "the load placed only {} orders", placed.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.sync(minutes_ago(10)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let placed = placed.load(Ordering::SeqCst);
    assert!(placed > 50, "the load ran alongside the sync ({placed} orders)");
    let run1 = sync_results(results(&e.s).await);
    assert_eq!(run1.len(), 1);
    let rows1: Vec<(String, Option<String>)> = sqlx::query_as("SELECT product_id, repair FROM stock_sync_mismatches WHERE run_id = $1")
        .bind(&run1[0].run_id)
        .fetch_all(&e.db)
        .await
        .unwrap();
    eprintln!("run 1 under load ({placed} orders): {:?}; rows {rows1:?}", run1[0].counts);
    for quiet in [&products[25], &products[33]] {
        assert!(
            rows1.iter().any(|(p, r)| p == quiet && r.as_deref() == Some("RESTORED")),
            "a quiet product's drift is repaired while the load runs: {quiet} {rows1:?}"
        );
    }

    // With the load stopped, a second run finishes whatever the first had to leave.
    e.sync(minutes_ago(5)).await;
    let runs = sync_results(results(&e.s).await);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let run2 = runs.iter().find(|r| r.run_id != run1[0].run_id).unwrap();
    eprintln!("run 2 after the load: {:?}", run2.counts);

    for (p, expected, redis) in e.state().await {
        assert_eq!(redis, Some(expected.to_string()), "{p}: expected == Redis after the runs");
    }
    let all = alerts(&e.s).await;
    let alerted: BTreeSet<String> = all.iter().map(|a| a["productId"].as_str().unwrap().to_string()).collect();
    let false_alarms: Vec<&String> = alerted.difference(&planted).collect();
    assert!(false_alarms.is_empty(), "an order in flight was taken for drift (and overwritten): {false_alarms:?}");
    assert_eq!(alerted, planted, "every planted drift was found");
    // Anything run 1 restored stayed right: a product it restored reappearing in run 2 would
    // mean its repair overwrote an order.
    let restored1: BTreeSet<&str> = rows1.iter().filter(|(_, r)| r.as_deref() == Some("RESTORED")).map(|(p, _)| p.as_str()).collect();
    for a in all.iter().filter(|a| a["runId"] == run2.run_id.as_str()) {
        let p = a["productId"].as_str().unwrap();
        assert!(!restored1.contains(p), "{p} was restored by run 1 and is wrong again: {a}");
    }
}

/// The run's deadline holds inside the chunk: a confirmation wait longer than the run's
/// timeout is cut at the deadline, before anything is recorded or repaired. The run is
/// TIMED_OUT with no alert, no recorded mismatch and Redis untouched (no effect, so no event
/// owed); the next run finds, repairs and reports the drift, once.
#[tokio::test]
async fn a_chunk_cut_at_the_run_deadline_repairs_nothing_and_the_next_run_does() {
    let mut e = env(1000, 120_000).await;
    e.s.jobs.get_mut("stock_sync").unwrap().timeout_secs = 2;
    let mut drifted = Vec::new();
    for i in 0..3 {
        drifted.push(e.product(&format!("d{i}"), 30, Some(37)).await);
    }
    for i in 0..5 {
        e.product(&format!("k{i}"), 10, Some(10)).await;
    }
    publish(&e.s, &[tick(JOB, minutes_ago(5), &[])]).await;
    let mut p = processor_on(&e.s, e.db.clone()).await;
    // Without a deadline inside the chunk, confirmation would wait its 120 s.
    tokio::time::timeout(Duration::from_secs(60), drive(&mut p, 3)).await.expect("the chunk stopped at its deadline");
    drop(p);
    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::TimedOut, "{r:#?}");
    assert!(alerts(&e.s).await.is_empty());
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM stock_sync_mismatches").fetch_one(&e.db).await.unwrap();
    assert_eq!(recorded, 0);
    for p in &drifted {
        assert_eq!(e.redis(p).await.as_deref(), Some("37"), "not repaired by the cut run");
    }

    e.s.jobs.get_mut("stock_sync").unwrap().set_option("confirm_delay_ms", 50);
    e.sync(minutes_ago(1)).await;
    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 2, "{r:#?}");
    let next = r.iter().find(|x| x.outcome != Outcome::TimedOut).expect("the next run");
    assert_eq!(next.outcome, Outcome::Succeeded, "{next:?}");
    let a = by_product(&alerts(&e.s).await);
    assert_eq!(a.keys().cloned().collect::<BTreeSet<_>>(), drifted.iter().cloned().collect::<BTreeSet<_>>());
    for p in &drifted {
        assert_eq!(e.redis(p).await.as_deref(), Some("30"), "repaired by the next run");
    }
}

/// Issue 16.3: a range whose repair is still running when the run's deadline passes completes
/// it and emits its alert (effects made always produce their events); a range not started
/// by then is skipped; the run is TIMED_OUT and the next run repairs what it did not reach.
#[tokio::test]
async fn a_repair_running_past_the_deadline_is_emitted_and_the_next_run_does_the_rest() {
    let mut e = env(1, 20).await;
    e.s.jobs.get_mut("stock_sync").unwrap().timeout_secs = 3;
    // One range's effects ahead of the current one's (`processor.effects_ahead` = 1, pinned
    // whatever the default), so a range starts only after the 3 s deadline: with more ahead,
    // all three would start in time.
    e.s.processor.effects_ahead = 1;
    let products = [e.product("a", 10, Some(12)).await, e.product("b", 5, Some(6)).await, e.product("c", 7, Some(9)).await];
    // Every range's repair is held 5 s after its mismatch is recorded. One range at a time is
    // applied, and at most one has its effects started ahead of it (when it came in the same
    // poll), whatever order the work items arrive in: one or two ranges start before the 3 s
    // deadline and complete past it; the last starts after it.
    for p in &products {
        scheduled_jobs::runtime::fault::pause_at(scheduled_jobs::runtime::fault::BEFORE_STOCK_REPAIR, p.clone(), Duration::from_secs(5));
    }
    e.sync(minutes_ago(10)).await;

    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::TimedOut, "{:?}", r[0]);
    let a = by_product(&alerts(&e.s).await);
    assert!((1..=2).contains(&a.len()), "the repairs that had begun are emitted, no more: {a:#?}");
    let recorded: BTreeSet<String> = sqlx::query_scalar("SELECT product_id FROM stock_sync_mismatches WHERE run_id = $1")
        .bind(&r[0].run_id)
        .fetch_all(&e.db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(recorded, a.keys().cloned().collect::<BTreeSet<_>>(), "every recorded mismatch has its alert");
    let state = e.state().await;
    for (p, expected, redis) in &state {
        if a.contains_key(p) {
            assert_eq!(a[p]["action"], "REDIS_RESTORED", "{p}");
            assert_eq!(redis.as_deref(), Some(expected.to_string().as_str()), "{p}: the repair that had begun completed");
        } else {
            assert_ne!(redis.as_deref(), Some(expected.to_string().as_str()), "{p}: a range never started repairs nothing");
        }
    }
    let sm = summaries(&e.s).await;
    assert_eq!(sm.len(), 1, "a timed-out run is summarised too: {sm:#?}");
    assert_eq!(sm[0]["mismatches"].as_i64(), Some(a.len() as i64));

    // The next run, with time enough, repairs the rest.
    e.s.jobs.get_mut("stock_sync").unwrap().timeout_secs = 600;
    e.sync(minutes_ago(5)).await;
    let r = sync_results(results(&e.s).await);
    assert_eq!(r.len(), 2, "{r:#?}");
    assert!(r.iter().any(|x| x.outcome == Outcome::Succeeded), "{r:#?}");
    for (p, expected, redis) in e.state().await {
        assert_eq!(redis, Some(expected.to_string()), "{p}");
    }
}
