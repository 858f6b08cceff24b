//! `order-expiration` end to end on the real stack (`cargo bench --bench order_expiration`):
//! a backlog of expired orders, each with 1–3 items and a Redis reservation, drained until
//! every event is committed (read_committed) and the run result has appeared. Variants, on
//! the same data shape, each on fresh topics, database and Redis keys:
//!
//! - naive: what the seed's sketch does, order by order — select a page of 100, then per order
//!   read it, update it, read its items, release its reservation, produce each event and wait
//!   for it (producer `linger.ms=0`, so the baseline is not slowed by batching delays). Run on
//!   a sample (`SJ_BENCH_NAIVE_ORDERS`, default min(5000, orders)) and extrapolated linearly; it runs after the floor, so both meet a warmed-up broker.
//! - floor: one batched UPDATE of all the rows (returning what the events need) plus producing
//!   the same events with an idempotent producer, no transactions, no Redis, no bookkeeping;
//!   timed, like the pipeline, until a `read_committed` reader running beside it has seen
//!   every event (its note gives the time to the last acknowledgement too: the floor's
//!   measure before 2026-12-01, when the reader ran only beside the pipeline).
//! - pipeline: the processor with batch 100 and 1000, then two instances at batch 1000 (the
//!   table shows how many chunks each applied, from `job_run_chunks.applied_by`). Timed from
//!   the tick's send, by the producer that sent the warm-up tick (before 2026-12-01, session
//!   17, each tick had a producer and registry client of its own, created inside the timed
//!   span: 0.5–0.7 s of this harness counted as the pipeline's).
//!
//! - crash1, crash100: throughput against the cost of a crash, with the real binary at batch
//!   100: `records_per_transaction` 1 and `effects_ahead` 0, or the defaults (100, 2). Each
//!   drains the backlog once as is and once SIGKILLed at half and restarted with the same
//!   instance id; prints the rate, what the crash cost in time, the recovery (kill → first
//!   new commit) and how many chunks the restart redid.
//!
//! Size: `SJ_BENCH_ORDERS` (default 100000); `SJ_BENCH_ROUNDS` (default 1) runs the chosen
//! variants that many times, interleaved, and prints batch 1000's time over the floor's per
//! round and their median; `SJ_BENCH_VARIANTS` picks variants (comma list of
//! naive, floor, batch10, batch100, batch1000, batch10000, batch1000x2, crash1, crash100;
//! default all but batch10 and batch10000, which `scripts/plots.sh` runs, and the crash ones). `SJ_BENCH_CSV=path` also writes the table as
//! CSV (variant, instances, orders, batch, seconds, orders_per_s). Prints a table; asserts only
//! correctness (every order cancelled, every event committed). `RUST_LOG=
//! scheduled_jobs::jobs::order_expiration=debug` shows each chunk's DB and Redis time.

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/cpu.rs"]
mod cpu;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::order_expiration::{OrderExpiration, EXPIRATION_REASON};
use scheduled_jobs::jobs::{ChunkOutput, Job, JobCtx, JobError, JobSettings, Registry, Run};
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::processor::Processor;
use scheduled_jobs::jobs::stock::{stock_key, Reserve, Stock};
use scheduled_jobs::wire::internal::WorkItem;
use scheduled_jobs::wire::tick::{Tick, Trigger};
use scheduled_jobs::wire::{enum_value, ts};
use sqlx::PgPool;

use common::{drop_db, drop_topics, fresh_db, handled_and_committed, isolated, unique, unlink_tagged, WAIT};

const JOB: &str = "order-expiration";
const PRODUCTS: usize = 100;
const START_STOCK: i64 = 1_000_000_000;
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fire_time() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - now % 60, 0).expect("valid time")
}

/// A fresh database and Redis namespace holding `n` expired orders with reservations.
struct Data {
    settings: Settings,
    /// In every id, so the Redis keys of this data set can be removed with it.
    tag: String,
    db_name: String,
    pool: PgPool,
    stock: Stock,
    at: DateTime<Utc>,
}

async fn seed(mut s: Settings, n: usize, batch: u32) -> Data {
    s.jobs.get_mut("order_expiration").expect("job settings").batch_size = batch;
    let (pool, db_name) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.expect("migrate");
    let tag = unique("oeb");
    let products: Vec<String> = (0..PRODUCTS).map(|i| format!("{tag}-p{i}")).collect();
    sqlx::query("INSERT INTO products (id, name, stock) SELECT id, id, 1000000 FROM UNNEST($1::text[]) AS t(id)")
        .bind(&products)
        .execute(&pool)
        .await
        .expect("products");
    let stock = Stock::connect(secrecy::ExposeSecret::expose_secret(&s.redis_url())).await.expect("redis");
    let mut pipe = redis::pipe();
    for p in &products {
        pipe.set(stock_key(p), START_STOCK).ignore();
    }
    let _: () = pipe.query_async(&mut stock.connection()).await.expect("stock");

    let at = fire_time();
    let orders: Vec<(String, Vec<(String, i64)>)> = (0..n)
        .map(|i| {
            let items = (0..1 + i % 3).map(|k| (products[(i + k * 7) % PRODUCTS].clone(), 1 + ((i + k) % 3) as i64)).collect();
            (format!("{tag}-o{i:07}"), items)
        })
        .collect();
    for slice in orders.chunks(20_000) {
        let ids: Vec<String> = slice.iter().map(|(id, _)| id.clone()).collect();
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, total_amount, created_at)
             SELECT id, 'user-' || (ord % 1000), 'PAYMENT_WAIT', 24.68, $2 - ord * interval '1 millisecond'
             FROM UNNEST($1::text[]) WITH ORDINALITY AS t(id, ord)",
        )
        .bind(&ids)
        .bind(at - TimeDelta::minutes(30))
        .execute(&pool)
        .await
        .expect("orders");
        let lines: Vec<(&String, &(String, i64))> = slice.iter().flat_map(|(o, items)| items.iter().map(move |it| (o, it))).collect();
        sqlx::query(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
             SELECT o, p, q, 12.34 FROM UNNEST($1::text[], $2::text[], $3::int[]) AS t(o, p, q)",
        )
        .bind(lines.iter().map(|(o, _)| (*o).clone()).collect::<Vec<_>>())
        .bind(lines.iter().map(|(_, (p, _))| p.clone()).collect::<Vec<_>>())
        .bind(lines.iter().map(|(_, (_, q))| *q as i32).collect::<Vec<_>>())
        .execute(&pool)
        .await
        .expect("items");
    }
    let reserved = futures::stream::iter(&orders)
        .map(|(id, items)| {
            let stock = stock.clone();
            async move { stock.reserve(id, items).await.expect("reserve") }
        })
        .buffer_unordered(64)
        .filter(|r| futures::future::ready(*r == Reserve::Reserved))
        .count()
        .await;
    assert_eq!(reserved, n);
    sqlx::query("ANALYZE").execute(&pool).await.expect("analyze");
    Data { settings: s, tag, db_name, pool, stock, at }
}

impl Data {
    async fn drop(self) {
        drop_db(&self.settings, self.pool, &self.db_name).await;
        unlink_tagged(&self.settings, &self.tag).await;
        drop_topics(&self.settings).await;
    }

    async fn cancelled(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'ORDER_CANCELLED'").fetch_one(&self.pool).await.expect("count")
    }

    fn tick(&self, at: DateTime<Utc>) -> Tick {
        Tick::for_fire_time(JOB, at, Trigger::Scheduled, Some("bench".into()))
    }
}

fn event_values(order: &str, user: &str, at: DateTime<Utc>, items: &[(String, i32)]) -> [Value; 2] {
    let items = items
        .iter()
        .map(|(p, q)| Value::Record(vec![("productId".into(), Value::String(p.clone())), ("quantity".into(), Value::Int(*q))]))
        .collect();
    let reasons = ["PAYMENT_TIMEOUT", "USER_REQUESTED", "STOCK_UNAVAILABLE", "SYSTEM_ERROR"];
    [
        Value::Record(vec![
            ("eventId".into(), Value::String(uuid::Uuid::new_v4().to_string())),
            ("eventTimestamp".into(), ts(at)),
            ("orderId".into(), Value::String(order.into())),
            ("userId".into(), Value::String(user.into())),
            ("items".into(), Value::Array(items)),
            ("cancellationReason".into(), enum_value(&reasons, "PAYMENT_TIMEOUT")),
            ("cancelledAt".into(), ts(at)),
        ]),
        Value::Record(vec![
            ("eventId".into(), Value::String(uuid::Uuid::new_v4().to_string())),
            ("eventTimestamp".into(), ts(at)),
            ("orderId".into(), Value::String(order.into())),
            ("userId".into(), Value::String(user.into())),
            ("expirationReason".into(), Value::String(EXPIRATION_REASON.into())),
            ("expiredAt".into(), ts(at)),
        ]),
    ]
}

/// Seed's sketch, order by order, every event produced and awaited before the next step.
async fn naive(d: &Data) -> Duration {
    let s = &d.settings;
    let codec = Codec::new(s).expect("codec");
    let mut cfg = client_config(s, Role::Producer);
    cfg.set("linger.ms", "0");
    let producer: FutureProducer = cfg.create().expect("producer");
    let topics = [s.topic(Topic::OrderCancelled), s.topic(Topic::OrderExpirationNotification)];
    let cutoff = d.at - TimeDelta::minutes(5);
    let t0 = Instant::now();
    loop {
        let page: Vec<String> =
            sqlx::query_scalar("SELECT id FROM orders WHERE status = 'PAYMENT_WAIT' AND created_at <= $1 ORDER BY created_at LIMIT 100")
                .bind(cutoff)
                .fetch_all(&d.pool)
                .await
                .expect("page");
        if page.is_empty() {
            return t0.elapsed();
        }
        for id in page {
            let (status, user): (String, String) =
                sqlx::query_as("SELECT status, user_id FROM orders WHERE id = $1").bind(&id).fetch_one(&d.pool).await.expect("order");
            if status == "ORDER_CANCELLED" {
                continue;
            }
            let at: DateTime<Utc> = sqlx::query_scalar(
                "UPDATE orders SET status = 'ORDER_CANCELLED', cancel_reason = 'PAYMENT_TIMEOUT', cancelled_at = now()
                 WHERE id = $1 RETURNING cancelled_at",
            )
            .bind(&id)
            .fetch_one(&d.pool)
            .await
            .expect("update");
            let items: Vec<(String, i32)> = sqlx::query_as("SELECT product_id, quantity FROM order_items WHERE order_id = $1")
                .bind(&id)
                .fetch_all(&d.pool)
                .await
                .expect("items");
            d.stock.release(&id).await.expect("release");
            for (topic, value) in topics.iter().zip(event_values(&id, &user, at, &items)) {
                let bytes = codec.encode(topic, value).await.expect("encode");
                producer.send(FutureRecord::to(topic).key(&id).payload(&bytes), WAIT).await.map_err(|(e, _)| e).expect("send");
            }
        }
    }
}

/// The cost floor: one UPDATE of every row, then the same events, batched, no transactions.
/// Gives the time until a `read_committed` reader has seen every event — where the
/// pipeline's clock stops too, with the same reader running beside it — and the time until
/// the producer had every acknowledgement.
async fn floor(d: &Data, n: usize) -> (Duration, Duration) {
    let s = &d.settings;
    let codec = Codec::new(s).expect("codec");
    let producer: FutureProducer = client_config(s, Role::Producer).create().expect("producer");
    let topics = [s.topic(Topic::OrderCancelled), s.topic(Topic::OrderExpirationNotification)];
    let seen = count_until(s, &topics, 2 * n);
    let t0 = Instant::now();
    type Row = (String, String, DateTime<Utc>, Option<String>, Option<i32>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH c AS (
            UPDATE orders SET status = 'ORDER_CANCELLED', cancel_reason = 'PAYMENT_TIMEOUT', cancelled_at = now()
            WHERE status = 'PAYMENT_WAIT' AND created_at <= $1 RETURNING id, user_id, cancelled_at)
         SELECT c.id, c.user_id, c.cancelled_at, i.product_id, i.quantity
         FROM c LEFT JOIN order_items i ON i.order_id = c.id ORDER BY c.id",
    )
    .bind(d.at - TimeDelta::minutes(5))
    .fetch_all(&d.pool)
    .await
    .expect("update");
    let mut pending = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let (id, user, at) = (&rows[i].0, &rows[i].1, rows[i].2);
        let mut items = Vec::new();
        while i < rows.len() && &rows[i].0 == id {
            if let (Some(p), Some(q)) = (&rows[i].3, rows[i].4) {
                items.push((p.clone(), q));
            }
            i += 1;
        }
        for (topic, value) in topics.iter().zip(event_values(id, user, at, &items)) {
            let bytes = codec.encode(topic, value).await.expect("encode");
            let mut record = FutureRecord::to(topic).key(id).payload(&bytes);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => break pending.push(delivery),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        delivered(&mut pending).await;
                    }
                    Err((e, _)) => panic!("send: {e}"),
                }
            }
        }
    }
    delivered(&mut pending).await;
    let acked = t0.elapsed();
    let seen = tokio::task::spawn_blocking(move || seen.join().expect("reader")).await.expect("join");
    (seen - t0, acked)
}

async fn delivered(pending: &mut Vec<DeliveryFuture>) {
    for r in futures::future::join_all(pending.drain(..)).await {
        r.expect("delivery").map_err(|(e, _)| e).expect("delivery");
    }
}

/// The real job, timed: how much of the drain is the job's own work (DB + Redis).
#[derive(Default)]
struct Timed {
    apply_micros: AtomicU64,
}

impl Job for Timed {
    fn name(&self) -> &'static str {
        JOB
    }
    fn defaults(&self) -> JobSettings {
        OrderExpiration.defaults()
    }
    fn plan<'a>(&'a self, ctx: &'a JobCtx, run: &'a Run) -> BoxStream<'a, Result<Vec<String>, JobError>> {
        OrderExpiration.plan(ctx, run)
    }
    fn apply<'a>(&'a self, ctx: &'a JobCtx, item: &'a WorkItem) -> BoxFuture<'a, Result<ChunkOutput, JobError>> {
        Box::pin(async move {
            let t0 = Instant::now();
            let out = OrderExpiration.apply(ctx, item).await;
            self.apply_micros.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            out
        })
    }
}

/// Committed records on `topics`, counted until `until` is reached; returns when.
fn count_until(s: &Settings, topics: &[String], until: usize) -> std::thread::JoinHandle<Instant> {
    count_into(s, topics, until, Arc::new(AtomicU64::new(0)))
}

/// [`count_until`], with the count so far kept in `seen` for whoever watches.
fn count_into(s: &Settings, topics: &[String], until: usize, seen: Arc<AtomicU64>) -> std::thread::JoinHandle<Instant> {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", unique("bench-reader"));
    let consumer: BaseConsumer = cfg.create().expect("reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), WAIT).expect("metadata");
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(t, p.id(), rdkafka::Offset::Beginning).expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");
    std::thread::spawn(move || {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while (seen.load(Ordering::Relaxed) as usize) < until {
            assert!(Instant::now() < deadline, "only {} of {until} records committed", seen.load(Ordering::Relaxed));
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                m.expect("read");
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        Instant::now()
    })
}

/// The real binary (built with the bench profile) as a processor of `d`'s data, with `env`
/// on top; killed with SIGKILL when dropped.
struct Binary(std::process::Child);

impl Binary {
    fn start(d: &Data, env: &[(String, String)]) -> Binary {
        let log = std::env::temp_dir().join(format!("{}.log", unique("order-expiration-bench-crash")));
        let child = std::process::Command::new(common::binary())
            .arg("run")
            .current_dir(common::repo_root())
            .envs(common::isolated_env(&d.settings, &d.db_name))
            .env("SJ_PROCESSOR__INSTANCE_ID", "bench-crash")
            .env("SJ_JOBS__ORDER_EXPIRATION__BATCH_SIZE", d.settings.jobs["order_expiration"].batch_size.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the binary");
        Binary(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a crash costs: the binary drains the backlog, and with `crash` it is SIGKILLed once
/// half of the events are committed and started again with the same instance id (a static
/// group member and the same transactional id: it takes its partitions back and fences the
/// dead one at once, as a restarted pod would). Gives the time from the tick to the last
/// event and the run result, and with `crash` the recovery: from the kill to the first event
/// the restarted process commits. Chunks whose effects the dead process had made without
/// committing are redone by the new one.
async fn crash_pipeline(d: &Data, n: usize, env: &[(String, String)], crash: bool) -> (Duration, Option<Duration>) {
    let s = &d.settings;
    let mut p = Binary::start(d, env);
    let ticker = Ticker::new(d);
    let results = warm_up(d, 1, &ticker).await;

    let seen = Arc::new(AtomicU64::new(0));
    let events = count_into(s, &[s.topic(Topic::OrderCancelled), s.topic(Topic::OrderExpirationNotification)], 2 * n, seen.clone());
    let result = count_until(s, &results, 2);
    let tick = ticker.encode(&d.tick(d.at)).await;
    let t0 = Instant::now();
    ticker.send(&tick).await;
    let mut recovery = None;
    if crash {
        while (seen.load(Ordering::Relaxed) as usize) < n {
            assert!(t0.elapsed() < DRAIN_LIMIT, "half of the events never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.kill();
        let killed = Instant::now();
        // What the dead process committed becomes visible to the counter within its polls.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = seen.load(Ordering::Relaxed);
        p = Binary::start(d, env);
        while seen.load(Ordering::Relaxed) == before {
            assert!(killed.elapsed() < DRAIN_LIMIT, "the restarted process committed nothing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        recovery = Some(killed.elapsed());
    }
    let done = tokio::task::spawn_blocking(move || events.join().expect("events").max(result.join().expect("result"))).await.expect("join");
    drop(p);
    assert_eq!(d.cancelled().await, n as i64);
    (done - t0, recovery)
}

/// The chunks a crash made the restarted process redo: their reservations were already
/// released by the dead one (`reservationsAbsent` of the run result, whole chunks).
async fn redone_chunks(d: &Data) -> i64 {
    let codec = Codec::new(&d.settings).expect("codec");
    let mut absent = 0;
    for (_, _, v) in common::read_all(&d.settings, &d.settings.topic(Topic::RunResults), "read_committed") {
        let r = scheduled_jobs::wire::internal::RunResult::from_avro(codec.decode(&v.expect("value")).await.expect("decode").value).expect("result");
        absent += r.counts.get("reservationsAbsent").copied().unwrap_or(0);
    }
    absent / i64::from(d.settings.jobs["order_expiration"].batch_size)
}

fn stable_members(s: &Settings) -> usize {
    let c: BaseConsumer = client_config(s, Role::Consumer).create().expect("admin consumer");
    match c.fetch_group_list(Some(&s.processor.group_id), WAIT) {
        Ok(list) => list.groups().first().filter(|g| g.state() == "Stable").map(|g| g.members().len()).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Publishes ticks as a real tick producer does: one long-lived producer, set up once. The
/// timed tick is encoded before the clock starts and sent by the producer that sent the
/// warm-up tick, so the time measured is the tick's way to the processor, not this harness
/// creating a registry client and a producer (whose first record waited ~500 ms here; the
/// floor, too, sets up its producer before its clock starts).
struct Ticker {
    producer: FutureProducer,
    codec: Codec,
    topic: String,
}

impl Ticker {
    fn new(d: &Data) -> Ticker {
        let s = &d.settings;
        let producer: FutureProducer = client_config(s, Role::Producer).create().expect("producer");
        Ticker { producer, codec: Codec::new(s).expect("codec"), topic: s.topic(Topic::Tick) }
    }

    async fn encode(&self, tick: &Tick) -> Vec<u8> {
        self.codec.encode(&self.topic, tick.to_avro()).await.expect("encode")
    }

    async fn send(&self, bytes: &[u8]) {
        self.producer.send(FutureRecord::to(&self.topic).key(JOB).payload(bytes), WAIT).await.map_err(|(e, _)| e).expect("tick");
    }
}

/// Waits until `instances` processors are stable group members, then for the result of a run
/// with nothing to do (its cutoff precedes every order): group joined, caches and first
/// transactions warm. Gives the run-results topic, for what follows.
async fn warm_up(d: &Data, instances: usize, ticker: &Ticker) -> [String; 1] {
    let s = &d.settings;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stable_members(s) < instances {
        assert!(Instant::now() < deadline, "group did not stabilise");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let results = [s.topic(Topic::RunResults)];
    let warm = count_until(s, &results, 1);
    ticker.send(&ticker.encode(&d.tick(d.at - TimeDelta::hours(2))).await).await;
    tokio::task::spawn_blocking(move || warm.join().expect("warm-up")).await.expect("join");
    results
}

/// The processor(s), warmed up, then one tick drained: time until every event and the run
/// result are committed, the chunks each instance applied (the processor's own record,
/// `job_run_chunks.applied_by`) and the time spent in the job's apply, over all instances.
async fn pipeline(d: &Data, n: usize, instances: usize) -> (Duration, Vec<(String, i64)>, Duration, usize) {
    let mut running = Vec::new();
    let mut metrics = Vec::new();
    for i in 0..instances {
        let mut s = d.settings.clone();
        s.processor.instance_id = format!("bench-{i}");
        let mut pg = s.postgres.clone();
        pg.database = d.db_name.clone();
        let pool = scheduled_jobs::db::connect_processor(&pg).await.expect("pool");
        let timed = Arc::new(Timed::default());
        let mut jobs = Registry::builtin();
        jobs.add(timed.clone());
        let p = Processor::new(s, jobs, pool).await.expect("processor");
        metrics.push(p.metrics());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(p.run(async move {
            let _ = stopped.await;
        }));
        running.push((stop, handle, timed));
    }
    let s = &d.settings;
    let ticker = Ticker::new(d);
    let results = warm_up(d, instances, &ticker).await;

    let events = count_until(s, &[s.topic(Topic::OrderCancelled), s.topic(Topic::OrderExpirationNotification)], 2 * n);
    let result = count_until(s, &results, 2);
    let tick = ticker.encode(&d.tick(d.at)).await;
    let committed = || metrics.iter().map(|m| handled_and_committed(&m.encode()).1).sum::<usize>();
    let before = committed();
    let t0 = Instant::now();
    ticker.send(&tick).await;
    let done = tokio::task::spawn_blocking(move || events.join().expect("events").max(result.join().expect("result"))).await.expect("join");
    let elapsed = done - t0;
    let transactions = committed() - before;
    let mut in_apply = Duration::ZERO;
    for (stop, handle, timed) in running {
        let _ = stop.send(());
        handle.await.expect("task").expect("processor");
        in_apply += Duration::from_micros(timed.apply_micros.load(Ordering::Relaxed));
    }
    assert_eq!(d.cancelled().await, n as i64);
    let spread: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(applied_by, '?'), count(*) FROM job_run_chunks WHERE chunk_index >= 0 GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&d.pool)
    .await
    .expect("spread");
    (elapsed, spread, in_apply, transactions)
}

struct Line {
    variant: &'static str,
    instances: usize,
    orders: usize,
    batch: &'static str,
    elapsed: Duration,
    note: String,
}

impl Line {
    fn rate(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64()
    }
}

const VARIANTS: [&str; 9] = ["floor", "naive", "batch10", "batch100", "batch1000", "batch10000", "batch1000x2", "crash1", "crash100"];
/// What runs when `SJ_BENCH_VARIANTS` is not set.
const DEFAULT_VARIANTS: [&str; 5] = ["floor", "naive", "batch100", "batch1000", "batch1000x2"];

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let n = env_usize("SJ_BENCH_ORDERS", 100_000);
    let sample = env_usize("SJ_BENCH_NAIVE_ORDERS", n.min(5_000));
    let wanted = std::env::var("SJ_BENCH_VARIANTS").unwrap_or_else(|_| DEFAULT_VARIANTS.join(","));
    eprintln!("order-expiration bench: {n} orders (SJ_BENCH_ORDERS), naive sample {sample} (SJ_BENCH_NAIVE_ORDERS), variants {wanted} (SJ_BENCH_VARIANTS)");
    let mut lines = Vec::new();
    // CPU of the stack per pipeline variant, per chunk (the scale-out table's inputs).
    let mut cpu_lines = Vec::new();
    // Rounds interleave the variants (floor, batch1000, floor, batch1000, ...), so a ratio is
    // taken between runs minutes apart at most: one run's spread on this machine swamps
    // differences of 10% (docs/performance.md).
    let rounds = env_usize("SJ_BENCH_ROUNDS", 1).max(1);
    let selected: Vec<&str> = VARIANTS.into_iter().filter(|v| wanted.split(',').any(|w| w.trim() == *v)).collect();
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("round {round} of {rounds} (SJ_BENCH_ROUNDS)");
        }
        let first = lines.len();
        for variant in selected.iter().copied() {
            let line = match variant {
                "naive" => {
                    let d = seed(isolated().await, sample, 100).await;
                    let t = naive(&d).await;
                    assert_eq!(d.cancelled().await, sample as i64);
                    d.drop().await;
                    let extrapolated = t.as_secs_f64() * n as f64 / sample as f64;
                    let note = format!("sample of {sample}, extrapolated linearly: {n} orders ≈ {extrapolated:.1} s");
                    Line { variant: "naive, order by order", instances: 1, orders: sample, batch: "100", elapsed: t, note }
                }
                "floor" => {
                    let d = seed(isolated().await, n, 100).await;
                    let before = cpu::Cpu::now();
                    let (t, acked) = floor(&d, n).await;
                    let used = cpu::Cpu::now().since(before);
                    cpu_lines.push(format!(
                        "floor: {}; PostgreSQL and the rest (machine minus those) {:.1} core-s",
                        used.describe(),
                        used.machine - used.bench - used.redis - used.kafka
                    ));
                    assert_eq!(d.cancelled().await, n as i64);
                    d.drop().await;
                    let note = format!(
                        "no transactions, no Redis; every event read back (read_committed), as the pipeline's time is; acknowledged after {:.3} s ({:.0} orders/s)",
                        acked.as_secs_f64(),
                        n as f64 / acked.as_secs_f64()
                    );
                    Line { variant: "floor: 1 UPDATE + produce", instances: 1, orders: n, batch: "all", elapsed: t, note }
                }
                "crash1" | "crash100" => {
                    // Throughput against what one crash costs, at batch 100: one record per
                    // transaction and no effects ahead (a crash redoes at most one chunk), or the
                    // defaults (records prepared during a commit share the next transaction, two
                    // chunks' effects ahead).
                    let (rpt, ahead) = if variant == "crash1" { (1, 0) } else { (100, 2) };
                    let env = vec![
                        ("SJ_PROCESSOR__RECORDS_PER_TRANSACTION".to_string(), rpt.to_string()),
                        ("SJ_PROCESSOR__EFFECTS_AHEAD".to_string(), ahead.to_string()),
                    ];
                    let d = seed(isolated().await, n, 100).await;
                    let (clean, _) = crash_pipeline(&d, n, &env, false).await;
                    d.drop().await;
                    let d = seed(isolated().await, n, 100).await;
                    let (crashed, recovery) = crash_pipeline(&d, n, &env, true).await;
                    let redone = redone_chunks(&d).await;
                    d.drop().await;
                    let recovery = recovery.unwrap_or_default();
                    let note = format!(
                        "records_per_transaction {rpt}, effects_ahead {ahead}: {:.0} orders/s without a crash ({:.3} s); one SIGKILL at half costs {:.2} s (recovery: kill -> first new commit {:.2} s; chunks redone: {redone})",
                        n as f64 / clean.as_secs_f64(),
                        clean.as_secs_f64(),
                        crashed.as_secs_f64() - clean.as_secs_f64(),
                        recovery.as_secs_f64()
                    );
                    Line { variant: "binary, one crash", instances: 1, orders: n, batch: "100", elapsed: crashed, note }
                }
                _ => {
                    let (batch, instances, label) = match variant {
                        "batch10" => (10, 1, "10"),
                        "batch100" => (100, 1, "100"),
                        "batch1000" => (1_000, 1, "1000"),
                        "batch10000" => (10_000, 1, "10000"),
                        _ => (1_000, 2, "1000"),
                    };
                    let d = seed(isolated().await, n, batch).await;
                    let before = cpu::Cpu::now();
                    let (t, spread, in_apply, transactions) = pipeline(&d, n, instances).await;
                    let used = cpu::Cpu::now().since(before);
                    let chunks = n.div_ceil(batch as usize) as f64;
                    cpu_lines.push(format!(
                        "{variant}: {} for {chunks} chunks; per chunk: this process (the processor) {:.2} ms, Redis {:.2} ms, Kafka {:.2} ms, PostgreSQL and the rest (machine minus those) {:.2} ms",
                        used.describe(),
                        used.bench * 1e3 / chunks,
                        used.redis * 1e3 / chunks,
                        used.kafka * 1e3 / chunks,
                        (used.machine - used.bench - used.redis - used.kafka) * 1e3 / chunks
                    ));
                    d.drop().await;
                    let applied: Vec<String> = spread.iter().map(|(who, k)| format!("{who}: {k}")).collect();
                    let note = format!(
                        "chunks applied by {}; {transactions} Kafka transactions; apply (DB + Redis) busy {:.0}% of instance time (over 100%: chunks overlap)",
                        applied.join(", "),
                        100.0 * in_apply.as_secs_f64() / t.as_secs_f64() / instances as f64
                    );
                    Line { variant: "pipeline (exactly once)", instances, orders: n, batch: label, elapsed: t, note }
                }
            };
            eprintln!("{variant}: {:.3} s", line.elapsed.as_secs_f64());
            lines.push((variant, line));
        }
        let this_round = &lines[first..];
        let time = |v: &str| this_round.iter().find(|(name, _)| *name == v).map(|(_, l)| l.elapsed.as_secs_f64());
        if let (Some(pipeline), Some(floor)) = (time("batch1000"), time("floor")) {
            eprintln!("round {round}: batch 1000 takes {:.2}x the floor's time", pipeline / floor);
            ratios.push(pipeline / floor);
        }
    }

    println!();
    println!("{:<26} {:>7} {:>6} {:>9} {:>9}  note", "variant", "orders", "batch", "seconds", "orders/s");
    for (_, l) in &lines {
        println!("{:<26} {:>7} {:>6} {:>9.3} {:>9.0}  {}", l.variant, l.orders, l.batch, l.elapsed.as_secs_f64(), l.rate(), l.note);
    }
    println!();
    for l in &cpu_lines {
        println!("CPU {l}");
    }
    if let Ok(path) = std::env::var("SJ_BENCH_CSV") {
        let mut csv = String::from("variant,instances,orders,batch,seconds,orders_per_s\n");
        for (name, l) in &lines {
            csv.push_str(&format!("{name},{},{},{},{:.3},{:.0}\n", l.instances, l.orders, l.batch, l.elapsed.as_secs_f64(), l.rate()));
        }
        std::fs::write(&path, csv).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        eprintln!("wrote {path}");
    }
    if ratios.len() > 1 {
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0;
        let within = ratios.iter().filter(|r| **r <= 1.3).count();
        println!();
        println!(
            "batch 1000 / floor, {} rounds: {}; median {median:.2}; {within} of {} at or under 1.30",
            ratios.len(),
            listed.join(", "),
            ratios.len()
        );
    }
    let rate = |v: &str| lines.iter().find(|(name, _)| *name == v).map(|(_, l)| l.rate());
    if let (Some(best), Some(naive), Some(floor)) = (rate("batch1000"), rate("naive"), rate("floor")) {
        println!();
        println!("batch 1000, 1 instance: {:.1}x the naive baseline's rate; takes {:.2}x the floor's time", best / naive, floor / best);
    }
}
