//! `order-expiration` on the real stack: E1 (one event of each kind per cancelled order under
//! read_committed) and E2 (an order cancelled once, its reservation given back once) with a
//! concurrent payer racing the run, duplicate and replayed ticks, a SIGKILL between effects
//! and Kafka commit of the real binary, two attempts at one chunk at once (zombie), and the
//! events' contents field by field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::order_expiration::{event_id, OrderExpiration, CANCELLED_KIND, EXPIRATION_REASON, NOTIFICATION_KIND};
use scheduled_jobs::jobs::{Deadline, Job, JobCtx};
use scheduled_jobs::runtime::processor::SEAL;
use scheduled_jobs::jobs::stock::{reservation_key, stock_key, Reserve, Stock};
use scheduled_jobs::wire::derived_id;
use scheduled_jobs::wire::internal::{Outcome, RunResult, WorkItem};
use sqlx::PgPool;

use crate::common::{binary, caught_up, fresh_db, isolated, read_all, repo_root, settled, unique};
use crate::processor::{drive, processor_on, publish, reset_group, results, test_db, tick, work_items};

const JOB: &str = "order-expiration";
const START_STOCK: i64 = 1_000_000;

/// The tick's fire time: the current minute (never in the future).
fn fire_time() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - now % 60, 0).unwrap()
}

fn set_batch(s: &mut Settings, batch: u32) {
    s.jobs.get_mut("order_expiration").unwrap().batch_size = batch;
}

async fn stock_of(s: &Settings) -> Stock {
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    Stock::connect(&url).await.unwrap()
}

/// An order as seeded: id, user, creation time, items (productId, quantity).
#[derive(Debug, Clone)]
struct Order {
    id: String,
    user: String,
    created_at: DateTime<Utc>,
    items: Vec<(String, i64)>,
}

/// Products and orders of one test, under a private tag (Redis is shared between tests).
struct Shop {
    pool: PgPool,
    stock: Stock,
    tag: String,
    products: Vec<String>,
}

impl Shop {
    async fn new(s: &Settings, pool: PgPool, products: usize) -> Shop {
        let tag = unique("oe");
        let products: Vec<String> = (0..products).map(|i| format!("{tag}-p{i}")).collect();
        sqlx::query("INSERT INTO products (id, name, stock) SELECT id, 'product ' || id, $2 FROM UNNEST($1::text[]) AS t(id)")
            .bind(&products)
            .bind(START_STOCK as i32)
            .execute(&pool)
            .await
            .unwrap();
        let stock = stock_of(s).await;
        let mut pipe = redis::pipe();
        for p in &products {
            pipe.set(stock_key(p), START_STOCK).ignore();
        }
        let _: () = pipe.query_async(&mut stock.connection()).await.unwrap();
        Shop { pool, stock, tag, products }
    }

    /// `n` orders created at `created(i)`, with 1–3 distinct products each, 1–3 of each.
    fn orders(&self, name: &str, n: usize, created: impl Fn(usize) -> DateTime<Utc>) -> Vec<Order> {
        (0..n)
            .map(|i| Order {
                id: format!("{}-{name}-{i:05}", self.tag),
                user: format!("user-{}", i % 37),
                created_at: created(i),
                items: (0..1 + i % 3).map(|k| (self.products[(i + k) % self.products.len()].clone(), 1 + ((i + k) % 3) as i64)).collect(),
            })
            .collect()
    }

    /// Inserts the orders in PAYMENT_WAIT and reserves their stock through the Order service's
    /// Lua script.
    async fn place(&self, orders: &[Order]) {
        let col = |f: &dyn Fn(&Order) -> String| orders.iter().map(f).collect::<Vec<String>>();
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, total_amount, created_at)
             SELECT id, u, 'PAYMENT_WAIT', 0, c FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS t(id, u, c)",
        )
        .bind(col(&|o| o.id.clone()))
        .bind(col(&|o| o.user.clone()))
        .bind(orders.iter().map(|o| o.created_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .unwrap();
        let lines: Vec<(&Order, &(String, i64))> = orders.iter().flat_map(|o| o.items.iter().map(move |it| (o, it))).collect();
        sqlx::query(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
             SELECT o, p, q, 12.34 FROM UNNEST($1::text[], $2::text[], $3::int[]) AS t(o, p, q)",
        )
        .bind(lines.iter().map(|(o, _)| o.id.clone()).collect::<Vec<_>>())
        .bind(lines.iter().map(|(_, (p, _))| p.clone()).collect::<Vec<_>>())
        .bind(lines.iter().map(|(_, (_, q))| *q as i32).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE orders o SET total_amount = t.total
             FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) t
             WHERE o.id = t.order_id AND o.id = ANY($1)",
        )
        .bind(col(&|o| o.id.clone()))
        .execute(&self.pool)
        .await
        .unwrap();
        let reserved: Vec<Reserve> = futures::stream::iter(orders)
            .map(|o| async move { self.stock.reserve(&o.id, &o.items).await.unwrap() })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(reserved.iter().all(|r| *r == Reserve::Reserved), "every seeded order holds a reservation");
    }

    async fn stocks(&self) -> BTreeMap<String, i64> {
        let v = self.stock.stocks(&self.products).await.unwrap();
        self.products.iter().cloned().zip(v.into_iter().map(|x| x.unwrap())).collect()
    }

    /// How many of these orders still hold a reservation.
    async fn reservations(&self, ids: &BTreeSet<String>) -> i64 {
        if ids.is_empty() {
            return 0;
        }
        let keys: Vec<String> = ids.iter().map(|o| reservation_key(o)).collect();
        redis::cmd("EXISTS").arg(keys).query_async(&mut self.stock.connection()).await.unwrap()
    }

    /// order id → (status, cancel_reason, cancelled_at set)
    async fn statuses(&self) -> BTreeMap<String, (String, Option<String>, bool)> {
        let rows: Vec<(String, String, Option<String>, bool)> =
            sqlx::query_as("SELECT id, status, cancel_reason, cancelled_at IS NOT NULL FROM orders WHERE id LIKE $1 || '%'")
                .bind(&self.tag)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        rows.into_iter().map(|(id, st, r, c)| (id, (st, r, c))).collect()
    }
}

fn ids(orders: &[Order]) -> BTreeSet<String> {
    orders.iter().map(|o| o.id.clone()).collect()
}

/// Stock each product should have after `cancelled` gave their quantities back to `before`.
fn restocked(before: &BTreeMap<String, i64>, orders: &[&Order]) -> BTreeMap<String, i64> {
    let mut want = before.clone();
    for o in orders {
        for (p, q) in &o.items {
            *want.get_mut(p).unwrap() += q;
        }
    }
    want
}

/// Every committed record of `topic` as (key, decoded fields by name).
async fn events(s: &Settings, topic: Topic) -> Vec<(String, BTreeMap<String, Value>)> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, key, value) in read_all(s, &s.topic(topic), "read_committed") {
        let key = String::from_utf8(key.unwrap()).unwrap();
        match codec.decode(&value.unwrap()).await.unwrap().value {
            Value::Record(fields) => out.push((key, fields.into_iter().collect())),
            other => panic!("not a record: {other:?}"),
        }
    }
    out
}

/// Committed events per key: every key must appear exactly once; returns the keys.
async fn once_each(s: &Settings, topic: Topic) -> BTreeSet<String> {
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut event_ids = BTreeSet::new();
    for (key, f) in events(s, topic).await {
        *per_key.entry(key).or_default() += 1;
        let id = string(&f, "eventId");
        assert!(event_ids.insert(id.clone()), "eventId {id} repeated on {topic:?}");
    }
    let doubled: Vec<_> = per_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "{topic:?}: orders with more than one event: {doubled:?}");
    per_key.into_keys().collect()
}

fn only_result(r: &[RunResult]) -> &RunResult {
    let mine: Vec<&RunResult> = r.iter().filter(|x| x.job == JOB).collect();
    assert_eq!(mine.len(), 1, "{r:#?}");
    mine[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_orders_are_cancelled_once_while_payments_race_the_run() {
    let mut s = isolated().await;
    let batch = 100;
    set_batch(&mut s, batch);
    let at = fire_time();
    let shop = Shop::new(&s, test_db(&s).await, 20).await;
    // 1,100 expired orders in creation order; every 11th is the one a customer pays during the
    // run, so payments land in every chunk, some before and some after it is applied.
    let expired = shop.orders("expired", 1_100, |i| at - TimeDelta::minutes(6) - TimeDelta::milliseconds(10 * (1_100 - i as i64)));
    let to_pay: Vec<Order> = expired.iter().skip(5).step_by(11).cloned().collect();
    let plain: Vec<Order> = expired.iter().filter(|o| !ids(&to_pay).contains(&o.id)).cloned().collect();
    assert_eq!((to_pay.len(), plain.len()), (100, 1_000));
    let fresh = shop.orders("fresh", 200, |i| at - TimeDelta::minutes(4) + TimeDelta::milliseconds(i as i64));
    shop.place(&expired).await;
    shop.place(&fresh).await;
    let reserved = shop.stocks().await;
    publish(&s, &[tick(JOB, at, &[])]).await;

    let mut p = processor_on(&s, shop.pool.clone()).await;
    // The payer: what the Order service does on payment — a conditional status change, then
    // the reservation becomes a sale. It starts with the run and keeps paying through it.
    let payer = {
        let (pool, stock, to_pay) = (shop.pool.clone(), shop.stock.clone(), to_pay.clone());
        tokio::spawn(async move {
            let mut won = BTreeSet::new();
            for o in &to_pay {
                let paid = sqlx::query(
                    "UPDATE orders SET status = 'PAYMENT_COMPLETED', paid_at = now() WHERE id = $1 AND status = 'PAYMENT_WAIT'",
                )
                .bind(&o.id)
                .execute(&pool)
                .await
                .unwrap();
                if paid.rows_affected() == 1 {
                    assert!(stock.consume(&o.id).await.unwrap(), "a paid order still had its reservation");
                    won.insert(o.id.clone());
                }
                // Spreads the payments over the run (the simulated customers), not a wait.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            won
        })
    };
    drive(&mut p, 3).await;
    let won = payer.await.unwrap();
    let lost: BTreeSet<String> = ids(&to_pay).difference(&won).cloned().collect();
    eprintln!("payments: {} won the race, {} came after the order was cancelled", won.len(), lost.len());
    assert!(!won.is_empty(), "some payments happened during the run");

    let cancelled: BTreeSet<String> = ids(&plain).union(&lost).cloned().collect();
    // E1: one event of each kind per cancelled order, none for paid or unexpired orders.
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, cancelled);
    assert_eq!(once_each(&s, Topic::OrderExpirationNotification).await, cancelled);

    // DB statuses.
    let st = shop.statuses().await;
    for id in &cancelled {
        assert_eq!(st[id], ("ORDER_CANCELLED".into(), Some("PAYMENT_TIMEOUT".into()), true), "{id}");
    }
    for id in &won {
        assert_eq!(st[id].0, "PAYMENT_COMPLETED", "{id}: a paid order is never cancelled");
    }
    for id in ids(&fresh) {
        assert_eq!(st[&id], ("PAYMENT_WAIT".into(), None, false), "{id}: not yet expired");
    }

    // E2: reservations of cancelled orders gone (paid ones consumed), unexpired ones kept, and
    // Redis stock = after reservation + exactly what the cancelled orders held.
    assert_eq!(shop.reservations(&cancelled).await, 0);
    assert_eq!(shop.reservations(&won).await, 0);
    assert_eq!(shop.reservations(&ids(&fresh)).await, 200);
    let back: Vec<&Order> = expired.iter().filter(|o| cancelled.contains(&o.id)).collect();
    assert_eq!(shop.stocks().await, restocked(&reserved, &back), "stock given back exactly once per cancelled order");

    // The plan: chunks of at most batch_size distinct ids, all expired, then one seal.
    let items = work_items(&s).await;
    let (seals, chunks): (Vec<&WorkItem>, Vec<&WorkItem>) = items.iter().partition(|w| w.chunk_index == SEAL);
    assert_eq!(seals.len(), 1);
    assert_eq!(seals[0].chunk_count as usize, chunks.len());
    assert!(chunks.iter().all(|w| !w.ids.is_empty() && w.ids.len() <= batch as usize), "chunk sizes: {:?}", chunks.iter().map(|w| w.ids.len()).collect::<Vec<_>>());
    let planned: Vec<&String> = chunks.iter().flat_map(|w| &w.ids).collect();
    let planned_set: BTreeSet<String> = planned.iter().map(|x| x.to_string()).collect();
    assert_eq!(planned.len(), planned_set.len(), "an order is in one chunk");
    assert!(planned_set.is_subset(&ids(&expired)) && planned_set.is_superset(&cancelled));

    let r = results(&s).await;
    let r = only_result(&r);
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.counts["ordersCancelled"], cancelled.len() as i64, "{r:?}");
    assert_eq!(r.counts["reservationsReleased"], cancelled.len() as i64, "{r:?}");
    assert_eq!(r.counts["alreadyHandled"], (planned_set.len() - cancelled.len()) as i64, "{r:?}");
    let lines: i64 = back.iter().map(|o| o.items.len() as i64).sum();
    assert_eq!(r.counts["productsRestocked"], lines, "{r:?}");
}

/// Everything a run could change or emit, to compare before and after.
async fn observe(s: &Settings, shop: &Shop) -> impl PartialEq + std::fmt::Debug {
    let n = |t: Topic| read_all(s, &s.topic(t), "read_committed").len();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM order_expirations").fetch_one(&shop.pool).await.unwrap();
    (
        [n(Topic::OrderCancelled), n(Topic::OrderExpirationNotification), n(Topic::WorkItems), n(Topic::RunResults), n(Topic::DeadLetters)],
        recorded,
        shop.statuses().await,
        shop.stocks().await,
    )
}

#[tokio::test]
async fn the_same_tick_twice_and_a_replay_from_offset_zero_change_and_emit_nothing() {
    let s = isolated().await;
    let at = fire_time();
    let shop = Shop::new(&s, test_db(&s).await, 10).await;
    let expired = shop.orders("expired", 250, |i| at - TimeDelta::minutes(30) + TimeDelta::seconds(i as i64));
    let fresh = shop.orders("fresh", 20, |_| at - TimeDelta::minutes(1));
    shop.place(&expired).await;
    shop.place(&fresh).await;
    let t = tick(JOB, at, &[]);
    publish(&s, std::slice::from_ref(&t)).await;
    let mut p = processor_on(&s, shop.pool.clone()).await;
    drive(&mut p, 3).await;
    let first = observe(&s, &shop).await;
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, ids(&expired));

    // The same fire time again (a second tick producer, or a retry of the first).
    publish(&s, &[t]).await;
    drive(&mut p, 2).await;
    assert_eq!(observe(&s, &shop).await, first, "a duplicate tick changed something");

    // Replay: the group back to offset 0 of scheduler.tick, a new processor.
    drop(p);
    reset_group(&s, &s.processor.group_id, &s.topic(Topic::Tick));
    let mut p = processor_on(&s, shop.pool.clone()).await;
    assert!(drive(&mut p, 3).await >= 2, "the ticks were consumed again");
    assert_eq!(observe(&s, &shop).await, first, "a replay changed something");
    assert_eq!(results(&s).await.len(), 1);
}

/// The real binary as a child, killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(s: &Settings, db: &str, batch: u32, fault_after: Option<u32>) -> Proc {
        Proc::start_with(s, db, batch, fault_after, &[])
    }

    fn start_with(s: &Settings, db: &str, batch: u32, fault_after: Option<u32>, env: &[(&str, &str)]) -> Proc {
        let log = std::env::temp_dir().join(format!("{}.log", unique("order-expiration-crash")));
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .current_dir(repo_root())
            .env("SJ_TOPICS__PREFIX", &s.topics.prefix)
            .env("SJ_PROCESSOR__GROUP_ID", &s.processor.group_id)
            .env("SJ_PROCESSOR__TRANSACTIONAL_ID_PREFIX", &s.processor.transactional_id_prefix)
            // Fixed, so each incarnation fences the one before it and aborts what it left open.
            .env("SJ_PROCESSOR__INSTANCE_ID", "crash-test")
            .env("SJ_POSTGRES__DATABASE", db)
            .env("SJ_JOBS__ORDER_EXPIRATION__BATCH_SIZE", batch.to_string())
            .env("RUST_LOG", "info")
            .env_remove("SJ_FAULT_POINT")
            .env_remove("SJ_FAULT_JOB")
            .env_remove("SJ_FAULT_AFTER")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(after) = fault_after {
            cmd.env("SJ_FAULT_POINT", "before-apply-commit").env("SJ_FAULT_JOB", JOB).env("SJ_FAULT_AFTER", after.to_string());
        }
        cmd.envs(env.iter().copied());
        Proc { child: cmd.spawn().unwrap(), log }
    }

    fn wait_killed(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!status.success(), "the processor should have been killed at the fault point");
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(log.contains("fault point before-apply-commit reached"), "{status}: {log}");
                return;
            }
            assert!(Instant::now() < deadline, "the fault point was never reached: {}", self.tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_processor_killed_between_effects_and_commit_leaves_events_and_stock_exact() {
    let s = isolated().await;
    let batch = 50;
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let at = fire_time();
    let shop = Shop::new(&s, pool, 12).await;
    let expired = shop.orders("expired", 500, |i| at - TimeDelta::minutes(20) + TimeDelta::seconds(i as i64));
    shop.place(&expired).await;
    publish(&s, &[tick(JOB, at, &[])]).await;

    // SIGKILL right before the Kafka commit of a work item, after its DB and Redis effects.
    // The killed item may be the seal (no effects); then crash again until a chunk's effects
    // are left without their events.
    let pending = || async {
        let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'ORDER_CANCELLED'").fetch_one(&shop.pool).await.unwrap();
        cancelled - events(&s, Topic::OrderCancelled).await.len() as i64
    };
    let mut crashes = 0;
    loop {
        let mut p = Proc::start(&s, &db, batch, Some(2));
        p.wait_killed();
        crashes += 1;
        if pending().await > 0 {
            break;
        }
        assert!(crashes < 6, "no crash left effects without events");
    }
    assert!(shop.reservations(&ids(&expired)).await < 500, "the killed chunk had released reservations");

    // Restart without the fault: the same instance id fences the dead incarnation.
    let p = Proc::start(&s, &db, batch, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while results(&s).await.is_empty() || pending().await > 0 {
        assert!(Instant::now() < deadline, "the run did not complete after the restart:\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Before counting for duplicates, nothing left that could add an event: the processor
    // has consumed every tick and work item, and no transaction is open on what is counted.
    caught_up(&s, &s.processor.group_id, &[Topic::Tick, Topic::WorkItems]).await;
    settled(&s, &[Topic::OrderCancelled, Topic::OrderExpirationNotification, Topic::RunResults]).await;
    drop(p);

    let all = ids(&expired);
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, all, "E1 after {crashes} crash(es)");
    assert_eq!(once_each(&s, Topic::OrderExpirationNotification).await, all);
    assert!(shop.statuses().await.values().all(|v| v.0 == "ORDER_CANCELLED"));
    assert_eq!(shop.reservations(&all).await, 0);
    let start: BTreeMap<String, i64> = shop.products.iter().map(|p| (p.clone(), START_STOCK)).collect();
    assert_eq!(shop.stocks().await, start, "E2: every reservation given back exactly once");
    let r = results(&s).await;
    let r = only_result(&r);
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.counts["ordersCancelled"], 500, "{r:?}");
    // The killed chunk's reservations were released by the killed attempt (and those of the
    // next chunks too when their effects had started ahead and got that far: one Lua call per
    // chunk, so whole chunks); its retry found them gone and still emitted their events, from
    // order_expirations. Which attempt's counts the result shows depends on timing: the killed
    // attempt had already recorded the chunk (APPLIED, released 50), so when another chunk
    // completes the run before the retry re-records it (the known limit of
    // docs/decisions/2026-11-25-plan-apply.md), the result reports released 50 / absent 0 for
    // it, which is what happened in Redis. Either way every reservation is counted once.
    let absent = r.counts["reservationsAbsent"];
    assert!(absent % i64::from(batch) == 0, "whole chunks: {r:?}");
    assert_eq!(r.counts["reservationsReleased"] + absent, 500, "{r:?}");
    eprintln!("crash test: {crashes} crash(es), run result counts {:?}", r.counts);
}

/// A run of one chunk is applied in its tick's own transaction: no work item. Killed between
/// its effects and that commit, it has cancelled its orders with no event out; the tick's
/// retry must carry out that same chunk, although a new plan would now find nothing expired
/// and the job was paused meanwhile (a new decision would skip the tick).
#[tokio::test]
async fn a_one_chunk_run_killed_before_its_tick_commits_is_carried_out_by_the_retry_even_when_paused() {
    let s = isolated().await;
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let at = fire_time();
    let shop = Shop::new(&s, pool, 5).await;
    let expired = shop.orders("expired", 30, |i| at - TimeDelta::minutes(20) + TimeDelta::seconds(i as i64));
    shop.place(&expired).await;
    publish(&s, &[tick(JOB, at, &[])]).await;

    let mut p = Proc::start(&s, &db, 100, Some(0));
    p.wait_killed();
    drop(p);
    let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'ORDER_CANCELLED'").fetch_one(&shop.pool).await.unwrap();
    assert_eq!(cancelled, 30, "the killed attempt applied the chunk's effects");
    assert!(events(&s, Topic::OrderCancelled).await.is_empty(), "nothing committed before the kill");
    assert!(scheduled_jobs::runtime::control::pause(&shop.pool, JOB, "test", Some("paused between attempts")).await.unwrap());

    let p = Proc::start(&s, &db, 100, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while results(&s).await.is_empty() {
        assert!(Instant::now() < deadline, "the retry did not finish the run:\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    caught_up(&s, &s.processor.group_id, &[Topic::Tick, Topic::WorkItems]).await;
    settled(&s, &[Topic::OrderCancelled, Topic::OrderExpirationNotification, Topic::RunResults, Topic::WorkItems]).await;
    drop(p);

    let all = ids(&expired);
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, all, "the same chunk, carried out once");
    assert_eq!(once_each(&s, Topic::OrderExpirationNotification).await, all);
    let start: BTreeMap<String, i64> = shop.products.iter().map(|p| (p.clone(), START_STOCK)).collect();
    assert_eq!(shop.stocks().await, start, "every reservation given back exactly once");
    let r = results(&s).await;
    let r = only_result(&r);
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.counts["ordersCancelled"], 30, "{r:?}");
    assert!(work_items(&s).await.is_empty(), "a one-chunk run writes no work item");
}

fn string(f: &BTreeMap<String, Value>, name: &str) -> String {
    match &f[name] {
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        // `eventId` is a `uuid` string.
        Value::Uuid(u) => u.to_string(),
        other => panic!("{name}: {other:?}"),
    }
}

fn millis(f: &BTreeMap<String, Value>, name: &str) -> i64 {
    match &f[name] {
        Value::TimestampMillis(ms) => *ms,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn events_carry_the_spec_fields_and_deterministic_ids() {
    let s = isolated().await;
    let at = fire_time();
    let shop = Shop::new(&s, test_db(&s).await, 6).await;
    let mut expired = shop.orders("expired", 3, |i| at - TimeDelta::minutes(5) - TimeDelta::seconds(i as i64));
    // An order with no item at all: its events still go out, with an empty item list.
    let mut bare = shop.orders("bare", 1, |_| at - TimeDelta::minutes(6));
    bare[0].items.clear();
    expired.extend(bare);
    let fresh = shop.orders("fresh", 1, |_| at - TimeDelta::minutes(5) + TimeDelta::milliseconds(1));
    shop.place(&expired).await;
    shop.place(&fresh).await;
    publish(&s, &[tick(JOB, at, &[])]).await;
    let mut p = processor_on(&s, shop.pool.clone()).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    let run_id = only_result(&r).run_id.clone();

    let cancelled_at: BTreeMap<String, DateTime<Utc>> =
        sqlx::query_as("SELECT id, cancelled_at FROM orders WHERE status = 'ORDER_CANCELLED'").fetch_all(&shop.pool).await.unwrap().into_iter().collect();
    assert_eq!(cancelled_at.keys().cloned().collect::<BTreeSet<_>>(), ids(&expired), "created at or before the cutoff, and only those");
    let order = |id: &str| expired.iter().find(|o| o.id == id).unwrap();

    let cancelled = events(&s, Topic::OrderCancelled).await;
    assert_eq!(cancelled.len(), expired.len());
    for (key, f) in &cancelled {
        let o = order(key);
        let when = cancelled_at[key].timestamp_millis();
        assert_eq!(f.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut v = vec!["eventId", "eventTimestamp", "orderId", "userId", "items", "cancellationReason", "cancelledAt"];
            v.sort();
            v
        });
        assert_eq!(string(f, "eventId"), derived_id(&["order-cancelled", &run_id, key]).to_string());
        assert_eq!(string(f, "eventId"), event_id(CANCELLED_KIND, &run_id, key));
        assert_eq!(millis(f, "eventTimestamp"), when);
        assert_eq!(&string(f, "orderId"), key);
        assert_eq!(string(f, "userId"), o.user);
        let Value::Array(items) = &f["items"] else { panic!("items: {:?}", f["items"]) };
        let got: Vec<(String, i64)> = items
            .iter()
            .map(|it| match it {
                Value::Record(kv) => {
                    let kv: BTreeMap<String, Value> = kv.iter().cloned().collect();
                    let Value::Int(q) = kv["quantity"] else { panic!("quantity: {kv:?}") };
                    (string(&kv, "productId"), i64::from(q))
                }
                other => panic!("item: {other:?}"),
            })
            .collect();
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "items in product order: {got:?}");
        let mut want = o.items.clone();
        want.sort();
        assert_eq!(got, want, "{key}");
        assert!(matches!(&f["cancellationReason"], Value::Enum(0, s) if s == "PAYMENT_TIMEOUT"), "{:?}", f["cancellationReason"]);
        assert_eq!(millis(f, "cancelledAt"), when);
    }

    assert!(cancelled.iter().any(|(key, f)| key.contains("-bare-") && matches!(&f["items"], Value::Array(v) if v.is_empty())));

    let notes = events(&s, Topic::OrderExpirationNotification).await;
    assert_eq!(notes.len(), expired.len());
    for (key, f) in &notes {
        let when = cancelled_at[key].timestamp_millis();
        assert_eq!(f.len(), 6, "{f:?}");
        assert_eq!(string(f, "eventId"), derived_id(&["order-expiration-notification", &run_id, key]).to_string());
        assert_eq!(string(f, "eventId"), event_id(NOTIFICATION_KIND, &run_id, key));
        assert_eq!(millis(f, "eventTimestamp"), when);
        assert_eq!(&string(f, "orderId"), key);
        assert_eq!(string(f, "userId"), order(key).user);
        assert_eq!(string(f, "expirationReason"), "주문이 자동 취소되었습니다 (결제 시간 초과)");
        assert_eq!(string(f, "expirationReason"), EXPIRATION_REASON);
        assert_eq!(millis(f, "expiredAt"), when);
    }

    // The same decision applied again (a retry after a crash) yields the very same records.
    // One chunk: applied in the tick's transaction, kept in `job_runs` (no work item).
    let item = match work_items(&s).await.into_iter().find(|w| w.chunk_index == 0) {
        Some(item) => item,
        None => sqlx::query_scalar::<_, sqlx::types::Json<WorkItem>>("SELECT inline_item FROM job_runs WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&shop.pool)
            .await
            .unwrap()
            .0,
    };
    let ctx = JobCtx {
        db: shop.pool.clone(),
        redis: Some(shop.stock.connection()),
        tz: chrono_tz::UTC,
        settings: s.job(JOB).unwrap().clone(),
        deadline: Deadline::none(),
        effects_done: false,
    };
    let again = OrderExpiration.apply(&ctx, &item).await.unwrap();
    assert_eq!(again.counts["ordersCancelled"], expired.len() as i64);
    assert_eq!(again.counts["reservationsAbsent"], expired.len() as i64, "released once, by the first attempt");
    let codec = Codec::new(&s).unwrap();
    let mut replayed = BTreeSet::new();
    for e in &again.records {
        replayed.insert((e.key.clone(), codec.encode_payload(&s.topic(e.topic), e.value.clone()).await.unwrap()));
    }
    let mut committed = BTreeSet::new();
    for t in [Topic::OrderCancelled, Topic::OrderExpirationNotification] {
        for (_, k, v) in read_all(&s, &s.topic(t), "read_committed") {
            committed.insert((String::from_utf8(k.unwrap()).unwrap(), v.unwrap()));
        }
    }
    assert_eq!(replayed, committed, "a re-applied chunk emits byte-identical records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_attempts_at_the_same_chunk_at_once_both_emit_every_order_it_cancelled() {
    // A zombie and the partition's new owner applying the same work item concurrently: whichever
    // cancels an order, both must emit it (only one of them can commit its Kafka transaction),
    // and stock must come back once.
    let s = crate::common::settings();
    let at = fire_time();
    let shop = Shop::new(&s, test_db(&s).await, 8).await;
    let ctx = JobCtx { db: shop.pool.clone(), redis: Some(shop.stock.connection()), tz: chrono_tz::UTC, settings: s.job(JOB).unwrap().clone(), deadline: Deadline::none(), effects_done: false };
    for round in 0..5 {
        let orders = shop.orders(&format!("r{round}"), 200, |i| at - TimeDelta::minutes(10) + TimeDelta::milliseconds(i as i64));
        shop.place(&orders).await;
        let before = shop.stocks().await;
        let item = WorkItem {
            period: at.to_rfc3339(),
            ..crate::common::work_item(JOB, &format!("run-{round}"), 0, orders.iter().map(|o| o.id.clone()).collect(), at)
        };
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (ctx, item) = (ctx.clone(), item.clone());
                async move { OrderExpiration.apply(&ctx, &item).await.unwrap() }
            }),
            tokio::spawn({
                let (ctx, item) = (ctx.clone(), item.clone());
                async move { OrderExpiration.apply(&ctx, &item).await.unwrap() }
            })
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let keys = |o: &scheduled_jobs::jobs::ChunkOutput| o.records.iter().map(|e| (e.topic.base_name(), e.key.clone())).collect::<BTreeSet<_>>();
        assert_eq!(keys(&a).len(), 400, "round {round}: {:?}", a.counts);
        assert_eq!(keys(&a), keys(&b), "round {round}");
        assert_eq!(a.counts["reservationsReleased"] + b.counts["reservationsReleased"], 200, "round {round}: released once");
        assert_eq!(shop.stocks().await, restocked(&before, &orders.iter().collect::<Vec<_>>()), "round {round}");
    }
}

/// A free loopback port (bound and released: the child binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path`; (status, body), or None while nothing answers.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of the sample `series` (name and labels exactly as exposed); 0 when absent
/// (a counter is exposed from its first increment).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_metrics_endpoint_counts_what_runs_committed_and_downstream_lag() {
    let s = isolated().await;
    let (pool, db) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let at = fire_time();
    let shop = Shop::new(&s, pool, 6).await;
    let expired = shop.orders("expired", 45, |i| at - TimeDelta::minutes(20) + TimeDelta::seconds(i as i64));
    let fresh = shop.orders("fresh", 5, |i| at - TimeDelta::minutes(1) + TimeDelta::seconds(i as i64));
    shop.place(&expired).await;
    shop.place(&fresh).await;
    let port = free_port();
    let analytics = unique("analytics");
    let cancelled_topic = s.topic(Topic::OrderCancelled);
    let p = Proc::start_with(
        &s,
        &db,
        20,
        None,
        &[
            ("SJ_METRICS__LISTEN", &format!("127.0.0.1:{port}")),
            ("SJ_METRICS__DOWNSTREAM_GROUPS", &format!("{analytics}:order.cancelled")),
            ("SJ_METRICS__LAG_INTERVAL_SECS", "1"),
            ("SJ_LOG_FORMAT", "json"),
        ],
    );
    // Ready once it has joined and stepped; /healthz answers from the start.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(port, "/readyz").await {
            Some((200, body)) => {
                assert_eq!(body, "ready\n");
                break;
            }
            other => assert!(Instant::now() < deadline, "not ready: {other:?}\n{}", p.tail()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(port, "/healthz").await, Some((200, "ok\n".into())));
    let before = http_get(port, "/metrics").await.unwrap().1;
    // OpenMetrics text; a family appears with its first sample.
    assert!(before.ends_with("# EOF\n") && before.contains("# TYPE scheduled_jobs_consumer_group_lag_errors counter"), "{before}");
    assert_eq!(sample(&before, "scheduled_jobs_runs_total{job=\"order-expiration\",outcome=\"succeeded\"}"), 0.0);

    // One run, then the same tick again (a duplicate: handled, nothing re-done or re-counted).
    let t = tick(JOB, at, &[]);
    let t_id = t.tick_id.clone();
    publish(&s, &[t.clone()]).await;
    let runs = "scheduled_jobs_runs_total{job=\"order-expiration\",outcome=\"succeeded\"}";
    let scrape = || async { http_get(port, "/metrics").await.map(|(_, b)| b).unwrap_or_default() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample(&scrape().await, runs) < 1.0 {
        assert!(Instant::now() < deadline, "no run counted:\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    publish(&s, &[t]).await;
    let ticks = "scheduled_jobs_records_handled_total{kind=\"tick\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape().await, ticks) < 2.0 {
        assert!(Instant::now() < deadline, "the duplicate tick was not handled:\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = scrape().await;
    let oe = |counter: &str| sample(&m, &format!("scheduled_jobs_job_items_total{{job=\"order-expiration\",counter=\"{counter}\"}}"));
    assert_eq!(sample(&m, runs), 1.0, "{m}");
    assert_eq!(sample(&m, ticks), 2.0, "{m}");
    assert_eq!(oe("ordersCancelled"), 45.0, "{m}");
    assert_eq!(oe("reservationsReleased"), 45.0, "{m}");
    let lines: i64 = expired.iter().map(|o| o.items.len() as i64).sum();
    assert_eq!(oe("productsRestocked"), lines as f64, "{m}");
    // 45 orders in chunks of 20: three chunks and the seal.
    assert_eq!(sample(&m, "scheduled_jobs_chunks_total{job=\"order-expiration\",outcome=\"applied\"}"), 3.0, "{m}");
    assert_eq!(sample(&m, "scheduled_jobs_records_handled_total{kind=\"work-item\"}"), 4.0, "{m}");
    for topic in [Topic::OrderCancelled, Topic::OrderExpirationNotification] {
        assert_eq!(sample(&m, &format!("scheduled_jobs_records_emitted_total{{topic=\"{}\"}}", s.topic(topic))), 45.0, "{m}");
    }
    assert!(sample(&m, "scheduled_jobs_run_duration_seconds_count{job=\"order-expiration\"}") == 1.0, "{m}");
    // The run was planned once, late by how long ago its fire time `at` was (the duplicate
    // planned nothing).
    assert_eq!(sample(&m, "scheduled_jobs_tick_delay_seconds_count{job=\"order-expiration\"}"), 1.0, "{m}");
    let late = sample(&m, "scheduled_jobs_tick_delay_seconds_sum{job=\"order-expiration\"}");
    let since_fire_time = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
    assert!((0.0..=since_fire_time).contains(&late), "planned {late} s after {at}, which was {since_fire_time} s ago: {m}");
    // The counters agree with what the run result says.
    let r = results(&s).await;
    assert_eq!(only_result(&r).counts["ordersCancelled"], 45);

    // Downstream lag: the Analytics-like group has read nothing yet, so it lags by at least
    // the 45 events; once it has read and committed everything, by nothing.
    let lag = format!("scheduled_jobs_consumer_group_lag{{group=\"{analytics}\",topic=\"{cancelled_topic}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape().await, &lag) < 45.0 {
        assert!(Instant::now() < deadline, "lag not measured:\n{}", scrape().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    consume_and_commit(&s, &analytics, &cancelled_topic);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&scrape().await, &lag) != 0.0 {
        assert!(Instant::now() < deadline, "lag did not fall to 0:\n{}", scrape().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Structured logs: lines about a work item carry its job, tick, run and chunk.
    let log = std::fs::read_to_string(&p.log).unwrap();
    let line = log.lines().find(|l| l.contains("\"run finished\"")).unwrap_or_else(|| panic!("{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["span"]["job"], "order-expiration", "{line}");
    assert_eq!(v["span"]["tick_id"], t_id.as_str(), "{line}");
    assert!(v["span"]["run_id"].is_string() && v["span"]["chunk"].is_i64(), "{line}");
    // Its own group has consumed every tick and work item.
    // The only instance exports every tick partition (`it lag` checks how several share them).
    let own = format!("scheduled_jobs_consumer_partition_lag{{group=\"{}\",topic=\"{}\",", s.processor.group_id, s.topic(Topic::Tick));
    let m = scrape().await;
    let lags: Vec<f64> = m.lines().filter_map(|l| l.strip_prefix(&own)).filter_map(|rest| rest.rsplit(' ').next()?.parse().ok()).collect();
    assert!(!lags.is_empty() && lags.iter().sum::<f64>() == 0.0, "{m}");
    drop(p);
}

/// Reads `topic` to its end as a member of `group` and commits its end.
fn consume_and_commit(s: &Settings, group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let mut cfg = scheduled_jobs::kafka::client_config(s, scheduled_jobs::kafka::Role::Consumer);
    cfg.set("group.id", group).set("enable.partition.eof", "true").set("auto.offset.reset", "earliest").set("enable.auto.commit", "false");
    let c: BaseConsumer = cfg.create().unwrap();
    c.subscribe(&[topic]).unwrap();
    let partitions = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap().topics()[0].partitions().len();
    let mut at_end = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.len() < partitions {
        assert!(Instant::now() < deadline, "could not read {topic} to its end");
        match c.poll(Duration::from_millis(200)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("{e}"),
            _ => {}
        }
    }
    // Its position past the last commit marker, as a Java consumer commits it.
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The run's deadline holds inside a chunk: a chunk whose orders are locked (a payment
/// transaction that does not end) waits in its cancelling statement until the deadline cuts
/// it. That statement rolls back — none of the chunk's orders is cancelled, even those not
/// locked — and the run is TIMED_OUT. The other chunks were applied before the deadline (their
/// effects and events kept, once each) or, queued behind the blocked one, not started at all
/// (skipped): either way events match effects. The next tick expires the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_cut_at_the_run_deadline_cancels_nothing_and_the_next_run_expires_its_orders() {
    let mut s = isolated().await;
    set_batch(&mut s, 10);
    s.jobs.get_mut("order_expiration").unwrap().timeout_secs = 4;
    let now = fire_time();
    let (first, second) = (now - TimeDelta::minutes(1), now);
    let shop = Shop::new(&s, test_db(&s).await, 6).await;
    // 30 expired orders in creation order: three chunks of 10; the last one's first 5 locked.
    let expired = shop.orders("expired", 30, |i| first - TimeDelta::minutes(6) - TimeDelta::milliseconds(10 * (30 - i as i64)));
    shop.place(&expired).await;
    let reserved = shop.stocks().await;
    let mut payment = shop.pool.begin().await.unwrap();
    let locked: Vec<String> = expired[20..25].iter().map(|o| o.id.clone()).collect();
    sqlx::query("SELECT id FROM orders WHERE id = ANY($1) FOR UPDATE").bind(&locked).execute(&mut *payment).await.unwrap();

    publish(&s, &[tick(JOB, first, &[])]).await;
    let mut p = processor_on(&s, shop.pool.clone()).await;
    // Without a deadline inside the chunk, its statement would wait for the lock for good.
    tokio::time::timeout(Duration::from_secs(60), drive(&mut p, 3)).await.expect("the chunk stopped at its deadline");
    let r = results(&s).await;
    let r = only_result(&r);
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert_eq!(r.counts["chunks"], 3, "{r:?}");
    assert!((1..=3).contains(&r.counts["chunksTimedOut"]), "{r:?}");

    // Effects and events agree: what was cancelled is released and emitted once, nothing else;
    // the cut chunk's 10 orders are all still waiting with their reservations.
    let st = shop.statuses().await;
    let (cut, others) = (&expired[20..], &expired[..20]);
    let done: Vec<&Order> = others.iter().filter(|o| st[&o.id].0 == "ORDER_CANCELLED").collect();
    let done_ids: BTreeSet<String> = done.iter().map(|o| o.id.clone()).collect();
    assert_eq!(done.len() % 10, 0, "whole chunks: {done_ids:?}");
    assert_eq!(r.counts["ordersCancelled"], done.len() as i64, "{r:?}");
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, done_ids);
    assert_eq!(once_each(&s, Topic::OrderExpirationNotification).await, done_ids);
    assert!(cut.iter().all(|o| st[&o.id] == ("PAYMENT_WAIT".into(), None, false)), "{st:?}");
    assert_eq!(shop.reservations(&done_ids).await, 0);
    assert_eq!(shop.reservations(&ids(cut)).await, 10);
    assert_eq!(shop.stocks().await, restocked(&reserved, &done));

    // The payment transaction ends without paying; the next tick expires the rest.
    payment.rollback().await.unwrap();
    let t2 = tick(JOB, second, &[]);
    publish(&s, &[t2.clone()]).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    let next = r.iter().find(|x| x.tick_id == t2.tick_id).expect("the next run");
    assert_eq!(next.outcome, Outcome::Succeeded, "{next:?}");
    assert_eq!(next.counts["ordersCancelled"], 30 - done.len() as i64, "{next:?}");
    assert_eq!(once_each(&s, Topic::OrderCancelled).await, ids(&expired));
    assert_eq!(once_each(&s, Topic::OrderExpirationNotification).await, ids(&expired));
    assert_eq!(shop.reservations(&ids(&expired)).await, 0);
    assert_eq!(shop.stocks().await, restocked(&reserved, &expired.iter().collect::<Vec<_>>()));
}

/// A chunk stopped by the deadline after an earlier attempt of it cancelled orders (that
/// attempt's Kafka transaction failed): it cancels nothing new — not even an order that has
/// expired meanwhile in its list — but still releases and emits every order the chunk did
/// cancel, the same records as the earlier attempt, so no cancellation is left without its
/// events. The job's apply, called directly, as the processor calls it on such a retry.
#[tokio::test]
async fn a_chunk_stopped_at_the_deadline_still_emits_what_its_earlier_attempt_cancelled() {
    let s = crate::common::settings();
    let at = fire_time();
    let shop = Shop::new(&s, test_db(&s).await, 4).await;
    let orders = shop.orders("o", 10, |i| at - TimeDelta::minutes(10) + TimeDelta::milliseconds(i as i64));
    shop.place(&orders[..6]).await;
    let reserved = shop.stocks().await;
    let item = WorkItem {
        period: at.to_rfc3339(),
        ..crate::common::work_item(JOB, "run-cut", 0, orders.iter().map(|o| o.id.clone()).collect(), at)
    };
    let ctx = |deadline| JobCtx {
        db: shop.pool.clone(),
        redis: Some(shop.stock.connection()),
        tz: chrono_tz::UTC,
        settings: s.job(JOB).unwrap().clone(),
        deadline,
        effects_done: false,
    };
    let first = OrderExpiration.apply(&ctx(Deadline::none()), &item).await.unwrap();
    assert_eq!(first.counts["ordersCancelled"], 6);
    // Four more of the chunk's orders are placed now, already expired: a new attempt with time
    // left would cancel them.
    shop.place(&orders[6..]).await;
    let passed = Deadline::at(Utc::now() - TimeDelta::seconds(1));
    let Err(scheduled_jobs::jobs::JobError::DeadlineReached(done)) = OrderExpiration.apply(&ctx(passed), &item).await else {
        panic!("the deadline did not stop the chunk")
    };
    assert_eq!(format!("{:?}", done.records), format!("{:?}", first.records), "the same records as the earlier attempt");
    assert_eq!(done.counts["ordersCancelled"], 6);
    assert_eq!(done.counts["reservationsAbsent"], 6, "released once, by the first attempt");
    let st = shop.statuses().await;
    assert!(orders[6..].iter().all(|o| st[&o.id].0 == "PAYMENT_WAIT"), "nothing new cancelled past the deadline: {st:?}");
    assert_eq!(shop.reservations(&ids(&orders[6..])).await, 4);
    let back: Vec<&Order> = orders[..6].iter().collect();
    let mut want = restocked(&reserved, &back);
    for o in &orders[6..] {
        for (p, q) in &o.items {
            *want.get_mut(p).unwrap() -= q;
        }
    }
    assert_eq!(shop.stocks().await, want);
}
