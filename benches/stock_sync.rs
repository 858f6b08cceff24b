//! `stock-sync` on the real stack (`cargo bench --bench stock_sync`): N products (default
//! 1,000,000; `SJ_BENCH_PRODUCTS`), 1% of them with a waiting order, 5% with paid history,
//! Redis seeded to the expected stock, then 0.1% drifted (+1) at fixed pseudo-random products.
//! Run at N/10 and at N, on a fresh database, fresh topics and per-run Redis keys, every phase
//! measured in the same run:
//!
//! - floor: a streaming `SELECT id, stock FROM products ORDER BY id` plus pipelined `MGET`s
//!   of the same keys (1000 per command, 4 in flight) and a comparison, nothing else; and the
//!   same with the expected value computed in the SELECT (the data the job really needs);
//! - naive: product by product — one SELECT of its expected value, one GET, compare — on a
//!   sample (`SJ_BENCH_NAIVE_SAMPLE`, default 5000) extrapolated linearly to N;
//! - job: the job itself in this process without Kafka — plan (ranges), apply every range
//!   (compare, confirm, classify, record, repair), finalize (build the alerts) — at the
//!   configured batch (500,000 products per range) and at `SJ_BENCH_ALT_BATCH` (default
//!   100,000; 0 = skip);
//! - processor: the real pipeline in this process — tick → plan transaction → one Kafka
//!   transaction per range → finalisation — at the same two batch sizes (`SJ_BENCH_E2E=0`
//!   skips it), with the pool `scheduled-jobs run` makes, and timed from the tick's first
//!   step after the processor has its partitions and has caught up with the run ledger (as
//!   one already running when the tick comes);
//! - every key missing: the processor again at the default batch after every `stock:` key of
//!   the bench was deleted (Redis restarted empty): time next to the drift run's, peak RSS,
//!   the largest Kafka transaction, and the mismatches left afterwards (`SJ_BENCH_WIPE=0`
//!   skips it); after it, two floors of that day, each alone: restoring every key (SELECT
//!   expected + pipelined SET) and producing one alert-sized record per product in
//!   transactions of 10,000 (issue 16's "within 3× of the drift run" measured against them),
//!   then both at once on keys wiped again (the least the day's two outputs take here however
//!   well a design overlaps them), and both once more together with a second SELECT expected +
//!   MGET of every product (the re-read a confirmation before any repair needs).
//!
//! For the drift run, the every-key-missing run and the floors of that day, the CPU time the stack
//! spent (this process, PostgreSQL, Redis, the Kafka broker) is printed too: on a machine of
//! few cores, a phase cannot take less wall time than its CPU divided by the cores.
//!
//! Peak RSS per phase is VmHWM of this process after resetting it (`/proc/self/clear_refs`),
//! so it is the peak of that phase, not of the seeding. `confirm_delay_ms` is
//! `SJ_BENCH_CONFIRM_DELAY_MS` (default: the configured default, 200 ms): a deliberate wait
//! per range with a candidate, not work, but part of what a run takes.

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/cpu.rs"]
mod cpu;

use cpu::Cpu;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::stock_sync::StockSync;
use scheduled_jobs::jobs::{Deadline, Job, JobCtx, Registry, Run};
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::processor::{Processor, Step};
use scheduled_jobs::jobs::stock::stock_key;
use scheduled_jobs::wire::internal::WorkItem;
use scheduled_jobs::wire::tick::{Tick, Trigger};
use sqlx::PgPool;

use common::{drop_db, drop_topics, fresh_db, isolated, unique, unlink_matching, unlink_tagged, WAIT};

const JOB: &str = "stock-sync";
/// One product in this many is drifted (0.1%), at pseudo-random but fixed positions, so about
/// 63% of the 1000-product ranges hold one (uniform spacing would put one in every range).
const PLANT_EVERY: u64 = 1000;
const DEFAULT_CONFIRM_DELAY_MS: u64 = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A `/proc/self/status` field in kB.
/// The phases of the every-key-missing day's two floors run at once, without and with the
/// confirmation's re-read; named once, as the summary finds them by name.
const FLOORS_AT_ONCE: &str = "floor, every key missing: both at once";
const FLOORS_AND_REREAD: &str = "floor, every key missing: both + a re-read";

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false if not permitted.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// splitmix64: a fixed, well-spread choice of the drifted products.
fn planted(i: usize) -> bool {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).is_multiple_of(PLANT_EVERY)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

const EXPECTED_ALL: &str = "
WITH waiting AS (
    SELECT oi.product_id, sum(oi.quantity)::bigint AS reserved
    FROM orders o JOIN order_items oi ON oi.order_id = o.id
    WHERE o.status = 'PAYMENT_WAIT' GROUP BY oi.product_id)
SELECT p.id, p.stock::bigint - COALESCE(w.reserved, 0)
FROM products p LEFT JOIN waiting w ON w.product_id = p.id
WHERE p.id >= $1 AND p.id <= $2
ORDER BY p.id";

struct Bench {
    s: Settings,
    pool: PgPool,
    db_name: String,
    redis: ConnectionManager,
    tag: String,
    seeded: usize,
}

struct Row {
    size: usize,
    phase: String,
    time: Duration,
    /// VmHWM after the phase; `base_kb` is VmRSS when the phase started (after the reset), so
    /// `peak_kb - base_kb` is what the phase itself added.
    peak_kb: u64,
    base_kb: u64,
    note: String,
}

/// Resets the peak and returns the RSS the phase starts from.
fn phase_start() -> u64 {
    reset_peak();
    status_kb("VmRSS:")
}

impl Bench {
    fn id(&self, i: usize) -> String {
        format!("{}-{i:08}", self.tag)
    }

    /// Adds products [seeded, to) with their orders and Redis counters (0.1% drifted).
    async fn grow(&mut self, to: usize) {
        let (from, tag) = (self.seeded as i64, self.tag.clone());
        let last = to as i64 - 1;
        let q = |sql: &'static str| sqlx::query(sql).bind(tag.clone()).bind(from).bind(last);
        q("INSERT INTO products (id, name, stock)
           SELECT $1 || '-' || lpad(i::text, 8, '0'), 'bench product', 500 + i % 500 FROM generate_series($2, $3) i")
        .execute(&self.pool)
        .await
        .expect("products");
        // 1% waiting orders, 5% paid history (the expected value's join must skip those).
        q("INSERT INTO orders (id, user_id, status, total_amount, created_at)
           SELECT $1 || '-o' || i, 'u', CASE WHEN i % 100 = 7 THEN 'PAYMENT_WAIT' ELSE 'PAYMENT_COMPLETED' END, 10, now()
           FROM generate_series($2, $3) i WHERE i % 100 = 7 OR i % 20 = 3")
        .execute(&self.pool)
        .await
        .expect("orders");
        q("INSERT INTO order_items (order_id, product_id, quantity, unit_price)
           SELECT $1 || '-o' || i, $1 || '-' || lpad(i::text, 8, '0'), 1 + i % 3, 5
           FROM generate_series($2, $3) i WHERE i % 100 = 7 OR i % 20 = 3")
        .execute(&self.pool)
        .await
        .expect("items");
        // A long-lived table is vacuumed (autovacuum): index-only scans without heap visits.
        sqlx::query("VACUUM (ANALYZE)").execute(&self.pool).await.expect("vacuum");
        // Redis = expected, streamed, except the planted drift.
        let rows = sqlx::query_as::<_, (String, i64)>(EXPECTED_ALL).bind(self.id(self.seeded)).bind(self.id(to - 1)).fetch(&self.pool);
        let redis = self.redis.clone();
        let base = self.seeded;
        rows.chunks(1000)
            .enumerate()
            .map(|(k, chunk)| {
                let mut conn = redis.clone();
                async move {
                    let mut pipe = redis::pipe();
                    for (j, row) in chunk.into_iter().enumerate() {
                        let (id, expected) = row.expect("expected row");
                        let i = base + k * 1000 + j;
                        let v = if planted(i) { expected + 1 } else { expected };
                        pipe.set(stock_key(&id), v).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await.expect("seed redis");
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<()>>()
            .await;
        self.seeded = to;
    }

    /// Drifts the planted products again (a job run repaired them).
    async fn replant(&self) {
        let ids: Vec<String> = (0..self.seeded).filter(|i| planted(*i)).map(|i| self.id(i)).collect();
        for slice in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for id in slice {
                pipe.incr(stock_key(id), 1).ignore();
            }
            pipe.query_async::<()>(&mut self.redis.clone()).await.expect("replant");
        }
    }

    /// Streaming SELECT (+ expected, if `with_expected`) and pipelined MGET; returns mismatches.
    async fn floor(&self, with_expected: bool) -> (Duration, usize) {
        let t0 = Instant::now();
        let rows = if with_expected {
            sqlx::query_as::<_, (String, i64)>(EXPECTED_ALL).bind(self.id(0)).bind(self.id(self.seeded - 1)).fetch(&self.pool)
        } else {
            sqlx::query_as::<_, (String, i64)>("SELECT id, stock::bigint FROM products ORDER BY id").fetch(&self.pool)
        };
        let redis = self.redis.clone();
        let mismatches: usize = rows
            .chunks(1000)
            .map(|chunk| {
                let mut conn = redis.clone();
                async move {
                    let rows: Vec<(String, i64)> = chunk.into_iter().map(|r| r.expect("row")).collect();
                    let keys: Vec<String> = rows.iter().map(|(id, _)| stock_key(id)).collect();
                    let values: Vec<Option<i64>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.expect("mget");
                    rows.iter().zip(values).filter(|((_, e), v)| *v != Some(*e)).count()
                }
            })
            .buffered(4)
            .fold(0, |acc, n| async move { acc + n })
            .await;
        (t0.elapsed(), mismatches)
    }

    /// Product by product, on the first `sample` products.
    async fn naive(&self, sample: usize) -> (Duration, usize) {
        let mut conn = self.redis.clone();
        let t0 = Instant::now();
        let mut mismatches = 0;
        for i in 0..sample.min(self.seeded) {
            let id = self.id(i);
            let expected: i64 = sqlx::query_scalar(
                "SELECT p.stock::bigint - COALESCE((SELECT sum(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id
                                                    WHERE oi.product_id = p.id AND o.status = 'PAYMENT_WAIT'), 0)::bigint
                 FROM products p WHERE p.id = $1",
            )
            .bind(&id)
            .fetch_one(&self.pool)
            .await
            .expect("naive select");
            let v: Option<i64> = redis::cmd("GET").arg(stock_key(&id)).query_async(&mut conn).await.expect("get");
            if v != Some(expected) {
                mismatches += 1;
            }
        }
        (t0.elapsed(), mismatches)
    }

    fn tick(&self, at: DateTime<Utc>) -> Tick {
        Tick::for_fire_time(JOB, at, Trigger::Scheduled, Some("bench".into()))
    }

    /// The job's own work without Kafka: (plan time, total time, counts, ranges with a candidate).
    async fn job(&self, batch: u32, delay_ms: u64) -> (Duration, Duration, BTreeMap<String, i64>, usize) {
        let mut settings = self.s.job(JOB).cloned().expect("stock_sync settings");
        settings.set_option("confirm_delay_ms", delay_ms as i64);
        settings.batch_size = batch;
        let ctx = JobCtx { db: self.pool.clone(), redis: Some(self.redis.clone()), tz: chrono_tz::UTC, settings, deadline: Deadline::none(), effects_done: false };
        let at = Utc::now();
        let run =
            Run { run_id: unique("bench-run"), job: JOB.into(), period: at.to_rfc3339(), attempt: 1, tick: self.tick(at), planned_at: at };
        let t0 = Instant::now();
        // Like the processor: the plan is complete (written as work items) before any apply.
        let ranges: Vec<Vec<String>> = StockSync.plan(&ctx, &run).map(|r| r.expect("plan")).collect().await;
        let plan = t0.elapsed();
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        let mut with_candidates = 0;
        let mut alerts = 0;
        for (index, ids) in ranges.into_iter().enumerate() {
            let item = WorkItem {
                period: run.period.clone(),
                tick_id: run.tick.tick_id.clone(),
                ..common::work_item(JOB, &run.run_id, index as i32, ids, at)
            };
            let mut out = StockSync.apply(&ctx, &item).await.expect("apply");
            alerts += out.records.len() as i64;
            while let Some(after) = out.more.take() {
                let next = WorkItem { resume_after: Some(after), ..item.clone() };
                let part = StockSync.apply(&ctx, &next).await.expect("apply a continuation");
                alerts += part.records.len() as i64;
                out.more = part.more;
            }
            if out.counts.get("candidates").copied().unwrap_or(0) > 0 {
                with_candidates += 1;
            }
            for (k, v) in out.counts {
                *counts.entry(k).or_default() += v;
            }
        }
        let fin = StockSync.finalize(&ctx, &run).await.expect("finalize");
        counts.extend(fin.counts);
        counts.insert("alerts".into(), alerts);
        (plan, t0.elapsed(), counts, with_candidates)
    }

    /// The processor in this process, from the tick's first step to the run's finalisation.
    async fn processor(&self, p: &mut Processor, at: DateTime<Utc>) -> (Duration, usize) {
        // Warm first, as a processor already running when the tick comes: its partitions
        // assigned and the run ledger caught up (an idle step with an assignment), which a
        // fresh processor otherwise does inside the measured time (0.2-0.9 s here).
        let limit = Instant::now() + Duration::from_secs(120);
        loop {
            let assigned = p.metrics().assignment().map_or(0, |a| a.partitions.len());
            if matches!(p.step(Duration::from_millis(100)).await.expect("warm-up step"), Step::Idle) && assigned > 0 {
                break;
            }
            assert!(Instant::now() < limit, "the processor got no partitions within 120 s");
        }
        let codec = Codec::new(&self.s).expect("codec");
        let bytes = codec.encode(&self.s.topic(Topic::Tick), self.tick(at).to_avro()).await.expect("encode tick");
        let producer: FutureProducer = client_config(&self.s, Role::Producer).create().expect("producer");
        producer
            .send(FutureRecord::to(&self.s.topic(Topic::Tick)).key(JOB).payload(&bytes), WAIT)
            .await
            .map_err(|(e, _)| e)
            .expect("publish tick");
        let done_before: i64 = self.finalized().await;
        let mut t0 = None;
        let mut resets = 0;
        let limit = Instant::now() + Duration::from_secs(3600);
        loop {
            assert!(Instant::now() < limit, "processor did not finish the run");
            let started = Instant::now();
            match p.step(Duration::from_millis(200)).await.expect("step") {
                Step::Handled(_) => {
                    t0.get_or_insert(started);
                }
                Step::Reset(why) => {
                    resets += 1;
                    eprintln!("processor reset: {why}");
                }
                Step::Idle => {}
            }
            if t0.is_some() && self.finalized().await > done_before {
                return (t0.map(|t| t.elapsed()).unwrap_or_default(), resets);
            }
        }
    }

    /// The least Redis work of a run after every key went: stream the expected values (as the
    /// floor above) and `SET` every product's key, pipelined like the seeding. Returns the keys
    /// written. (Restores Redis: wipe again before the job's own run.)
    async fn restore_floor(&self) -> (Duration, usize) {
        let t0 = Instant::now();
        let rows = sqlx::query_as::<_, (String, i64)>(EXPECTED_ALL).bind(self.id(0)).bind(self.id(self.seeded - 1)).fetch(&self.pool);
        let redis = self.redis.clone();
        let written: usize = rows
            .chunks(1000)
            .map(|chunk| {
                let mut conn = redis.clone();
                async move {
                    let mut pipe = redis::pipe();
                    let n = chunk.len();
                    for row in chunk {
                        let (id, expected) = row.expect("expected row");
                        pipe.set(stock_key(&id), expected).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await.expect("restore");
                    n
                }
            })
            .buffer_unordered(4)
            .fold(0, |acc, n| async move { acc + n })
            .await;
        (t0.elapsed(), written)
    }

    /// The least Kafka work of a run after every key went: one alert-sized record per product
    /// (the bytes of one real encoded alert, so no encoding per record) to the bench's alert
    /// topic, in transactions of `per_txn`, each committed before the next begins. Returns the
    /// bytes per record.
    async fn alerts_floor(&self, per_txn: usize) -> (Duration, usize) {
        use rdkafka::producer::Producer;
        use scheduled_jobs::wire::events::{value_of, Severity, StockSyncAlert, SyncAction};
        let topic = format!("{}{}", self.s.topics.prefix, scheduled_jobs::wire::topic::Topic::StockSyncAlert.base_name());
        let now = Utc::now();
        let alert = StockSyncAlert {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_timestamp: now,
            product_id: self.id(0),
            db_stock: 512,
            redis_stock: None,
            discrepancy: 512,
            action: SyncAction::RedisRestored,
            severity: Severity::Medium,
            detected_at: now,
            cause: "REDIS_KEY_MISSING".into(),
            run_id: uuid::Uuid::new_v4().to_string(),
            mismatches_in_run: 0,
        };
        let codec = Codec::new(&self.s).expect("codec");
        let bytes = codec.encode(&topic, value_of(&alert).expect("alert value")).await.expect("encode alert");
        let mut cfg = client_config(&self.s, Role::Producer);
        cfg.set("transactional.id", unique("bench-alerts-floor"));
        let producer: FutureProducer = cfg.create().expect("producer");
        let t0 = Instant::now();
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.init_transactions(WAIT).expect("init")).await.expect("init task");
        let ids: Vec<String> = (0..self.seeded).map(|i| self.id(i)).collect();
        for part in ids.chunks(per_txn.max(1)) {
            producer.begin_transaction().expect("begin");
            let mut pending = Vec::with_capacity(part.len());
            for id in part {
                let mut record = FutureRecord::to(&topic).key(id.as_str()).payload(&bytes);
                loop {
                    match producer.send_result(record) {
                        Ok(f) => break pending.push(f),
                        Err((_, r)) => {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }
            for f in pending {
                f.await.expect("delivery").map_err(|(e, _)| e).expect("delivered");
            }
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.commit_transaction(WAIT).expect("commit")).await.expect("commit task");
        }
        (t0.elapsed(), bytes.len())
    }

    /// Redis lost every stock counter of the bench (a restart without persistence, or
    /// FLUSHALL): returns how many keys went.
    async fn wipe(&self) -> usize {
        unlink_matching(&self.s, &format!("stock:{}-*", self.tag)).await
    }

    /// A processor with `settings` runs the tick of `at` to the end: (time, peak RSS kB, base
    /// kB, largest transaction, resets, CPU of the stack while it ran). The processor is dropped (it leaves the group).
    async fn processor_phase(&self, settings: Settings, at: DateTime<Utc>) -> (Duration, u64, u64, usize, usize, Cpu) {
        // The pool `scheduled-jobs run` makes (every connection kept open).
        let mut pg = settings.postgres.clone();
        pg.database = self.db_name.clone();
        let pool = scheduled_jobs::db::connect_processor(&pg).await.expect("processor pool");
        let mut p = Processor::new(settings, Registry::builtin(), pool.clone()).await.expect("processor");
        let base_kb = phase_start();
        let cpu = Cpu::now();
        let (time, resets) = self.processor(&mut p, at).await;
        let cpu = Cpu::now().since(cpu);
        let peak_kb = status_kb("VmHWM:");
        let largest = p.largest_transaction();
        drop(p);
        pool.close().await;
        (time, peak_kb, base_kb, largest, resets, cpu)
    }

    async fn finalized(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE job = $1 AND finalized_by IS NOT NULL")
            .bind(JOB)
            .fetch_one(&self.pool)
            .await
            .expect("finalized runs")
    }

    async fn cleanup(self) {
        // Every key of the bench carries its tag (product ids are `<tag>-<n>`).
        unlink_tagged(&self.s, &self.tag).await;
        drop_db(&self.s, self.pool, &self.db_name).await;
        drop_topics(&self.s).await;
    }
}

fn settings_with(s: &Settings, batch: u32, delay_ms: u64) -> Settings {
    let mut s = s.clone();
    let job = s.jobs.get_mut("stock_sync").expect("stock_sync settings");
    job.batch_size = batch;
    job.set_option("confirm_delay_ms", delay_ms as i64);
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let n = env_usize("SJ_BENCH_PRODUCTS", 1_000_000).max(PLANT_EVERY as usize);
    let sample = env_usize("SJ_BENCH_NAIVE_SAMPLE", 5000);
    let delay = env_usize("SJ_BENCH_CONFIRM_DELAY_MS", DEFAULT_CONFIRM_DELAY_MS as usize) as u64;
    let e2e = env_usize("SJ_BENCH_E2E", 1) == 1;
    let alt_batch = env_usize("SJ_BENCH_ALT_BATCH", 100_000) as u32;
    let wipe = e2e && env_usize("SJ_BENCH_WIPE", 1) == 1;
    let sizes = [n / 10, n];

    let s = isolated().await;
    let batch = s.job(JOB).map(|j| j.batch_size).expect("stock_sync settings");
    let mut batches = vec![batch];
    if alt_batch > 0 && alt_batch != batch {
        batches.push(alt_batch);
    }
    let (pool, db_name) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.expect("migrate");
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    // No response timeout: with the stack busy, a pipeline of 1,000 SETs was answered after
    // the client's default 500 ms and the bench died ("restore: timed out", session 27).
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let redis = ConnectionManager::new_with_config(redis::Client::open(url).expect("redis url"), config).await.expect("redis");
    let mut b = Bench { s: s.clone(), pool: pool.clone(), db_name, redis, tag: unique("ssb"), seeded: 0 };
    let can_reset = reset_peak();

    println!(
        "stock-sync benchmark: sizes {sizes:?}, 0.1% drifted, batch {batch} (and {alt_batch}), confirm delay {delay} ms, naive sample {sample}{}",
        if can_reset { "" } else { " (VmHWM cannot be reset here: peaks are cumulative)" }
    );
    let mut rows: Vec<Row> = Vec::new();
    // CPU of the stack in the phases the every-key-missing target compares: (size, phase, cpu).
    let mut cpus: Vec<(usize, String, Cpu)> = Vec::new();
    let mut at = {
        let t = Utc::now() - TimeDelta::minutes(60);
        DateTime::from_timestamp(t.timestamp() - t.timestamp() % 60, 0).expect("time")
    };
    for &size in &sizes {
        let previous = b.seeded;
        let t = Instant::now();
        b.grow(size).await;
        if previous > 0 {
            b.replant().await;
        }
        let planted = (0..size).filter(|i| planted(*i)).count();
        eprintln!("seeded {size} products ({planted} drifted) in {:.1} s", t.elapsed().as_secs_f64());

        let base_kb = phase_start();
        let (time, found) = b.floor(false).await;
        rows.push(Row {
            size,
            phase: "floor: SELECT id, stock + MGET".into(),
            time,
            peak_kb: status_kb("VmHWM:"),
            base_kb,
            note: format!("{found} differ (stock, not expected)"),
        });
        let base_kb = phase_start();
        let (time, found) = b.floor(true).await;
        rows.push(Row {
            size,
            phase: "floor: SELECT expected + MGET".into(),
            time,
            peak_kb: status_kb("VmHWM:"),
            base_kb,
            note: format!("{found} mismatches ({planted} planted)"),
        });

        let base_kb = phase_start();
        let (time, found) = b.naive(sample).await;
        let measured = sample.min(size);
        rows.push(Row {
            size,
            phase: "naive: per product SELECT + GET".into(),
            time: time.mul_f64(size as f64 / measured as f64),
            peak_kb: status_kb("VmHWM:"),
            base_kb,
            note: format!(
                "{measured} sampled in {:.2} s, ×{:.0} extrapolated; {found} in sample",
                time.as_secs_f64(),
                size as f64 / measured as f64
            ),
        });

        for &batch in &batches {
            let base_kb = phase_start();
            let (plan, time, counts, with_candidates) = b.job(batch, delay).await;
            let c = |k: &str| counts.get(k).copied().unwrap_or(0);
            rows.push(Row {
                size,
                phase: format!("job, batch {batch}: plan+apply+finalize"),
                time,
                peak_kb: status_kb("VmHWM:"),
                base_kb,
                note: format!(
                    "plan {:.3} s; {} compared, {} mismatches, {} repaired, {} alerts; {with_candidates} ranges confirmed ({delay} ms wait each; +{:.1} s more at the default {DEFAULT_CONFIRM_DELAY_MS} ms)",
                    plan.as_secs_f64(),
                    c("products"),
                    c("mismatches"),
                    c("repaired"),
                    c("alerts"),
                    (with_candidates as u64 * DEFAULT_CONFIRM_DELAY_MS.saturating_sub(delay)) as f64 / 1000.0
                ),
            });
            b.replant().await;
        }

        if e2e {
            for &batch in &batches {
                // A processor per batch size (its settings are fixed at start); the previous
                // one has left the group. Timing starts at the step that takes the tick.
                at += TimeDelta::minutes(1);
                let (time, peak_kb, base_kb, largest, resets, cpu) = b.processor_phase(settings_with(&s, batch, delay), at).await;
                cpus.push((size, format!("processor, batch {batch}:"), cpu));
                let chunks = size.div_ceil(batch.max(1) as usize);
                rows.push(Row {
                    size,
                    phase: format!("processor, batch {batch}: tick → done"),
                    time,
                    peak_kb,
                    base_kb,
                    note: format!(
                        "{chunks} chunk transactions ({:.1} ms each); largest transaction {largest} records; {resets} resets",
                        time.as_secs_f64() * 1000.0 / chunks as f64
                    ),
                });
                b.replant().await;
            }
            if wipe {
                // The day Redis comes back empty: every product is a mismatch, at the default
                // batch, in the same run as the 0.1% drift above.
                let gone = b.wipe().await;
                at += TimeDelta::minutes(1);
                let (time, peak_kb, base_kb, largest, resets, cpu) = b.processor_phase(settings_with(&s, batch, delay), at).await;
                cpus.push((size, format!("processor, batch {batch}, every key missing"), cpu));
                let (_, left) = b.floor(true).await;
                rows.push(Row {
                    size,
                    phase: format!("processor, batch {batch}, every key missing"),
                    time,
                    peak_kb,
                    base_kb,
                    note: format!("{gone} keys deleted; {left} mismatches left after the run; largest transaction {largest} records; {resets} resets"),
                });
                // Floors of what that day must do at least, each alone: restore every key, and
                // produce one alert per product in transactions of 10,000. After the run, so
                // their buffers (kept by the allocator) do not inflate its peak RSS.
                let base_kb = phase_start();
                let cpu = Cpu::now();
                let (time, written) = b.restore_floor().await;
                cpus.push((size, "floor, every key missing: SET".into(), Cpu::now().since(cpu)));
                rows.push(Row {
                    size,
                    phase: "floor, every key missing: SET all".into(),
                    time,
                    peak_kb: status_kb("VmHWM:"),
                    base_kb,
                    note: format!("SELECT expected + pipelined SET of {written} keys (1,000 per pipeline, 4 in flight)"),
                });
                let base_kb = phase_start();
                let cpu = Cpu::now();
                let (time, record_bytes) = b.alerts_floor(10_000).await;
                cpus.push((size, "floor, every key missing: alerts".into(), Cpu::now().since(cpu)));
                rows.push(Row {
                    size,
                    phase: "floor, every key missing: alerts".into(),
                    time,
                    peak_kb: status_kb("VmHWM:"),
                    base_kb,
                    note: format!("{size} records of {record_bytes} bytes (one real alert's encoding), 10,000 per transaction"),
                });
                // The same two floors at once, on keys gone again: the least that day's two
                // outputs take on this machine however well a design overlaps them (both share
                // the cores with PostgreSQL, Redis and the broker). Then once more with a
                // second read of both sides at the same time, as the confirmation before any
                // repair needs: still no durable record, no encoding per alert.
                for reread in [false, true] {
                    b.wipe().await;
                    let base_kb = phase_start();
                    let cpu = Cpu::now();
                    let t0 = Instant::now();
                    let confirmation = async {
                        if reread {
                            b.floor(true).await;
                        }
                    };
                    let ((_, written), _, ()) = tokio::join!(b.restore_floor(), b.alerts_floor(10_000), confirmation);
                    let time = t0.elapsed();
                    let phase = if reread { FLOORS_AND_REREAD } else { FLOORS_AT_ONCE };
                    cpus.push((size, phase.into(), Cpu::now().since(cpu)));
                    let reads = if reread { ", and SELECT expected + MGET of every product" } else { "" };
                    rows.push(Row {
                        size,
                        phase: phase.into(),
                        time,
                        peak_kb: status_kb("VmHWM:"),
                        base_kb,
                        note: format!("concurrently: {written} keys SET, {size} alert-sized records{reads}"),
                    });
                }
                b.replant().await;
            }
        }
    }

    println!("{:>9}  {:<40} {:>8} {:>11} {:>8} {:>7}  note", "products", "phase", "time s", "products/s", "peak MB", "+MB");
    for r in &rows {
        println!(
            "{:>9}  {:<40} {:>8.3} {:>11.0} {:>8.1} {:>7.1}  {}",
            r.size,
            r.phase,
            r.time.as_secs_f64(),
            r.size as f64 / r.time.as_secs_f64().max(1e-9),
            mb(r.peak_kb),
            mb(r.peak_kb.saturating_sub(r.base_kb)),
            r.note
        );
    }
    let find = |prefix: &str, size: usize| rows.iter().find(|r| r.size == size && r.phase.starts_with(prefix));
    let job_default = format!("job, batch {batch}:");
    if let (Some(job), Some(floor), Some(floor_e)) = (find(&job_default, n), find("floor: SELECT id", n), find("floor: SELECT expected", n))
    {
        let budget = 4.0 * n as f64 / 1e6;
        println!(
            "targets at {n} products, batch {batch}: job {:.2} s (≤ {budget:.2} s, i.e. 4 s per 1,000,000: {}); job / floor {:.2}× (≤ 2×: {}); job / floor with expected {:.2}×",
            job.time.as_secs_f64(),
            if job.time.as_secs_f64() <= budget { "yes" } else { "NO" },
            job.time.as_secs_f64() / floor.time.as_secs_f64(),
            if job.time.as_secs_f64() <= 2.0 * floor.time.as_secs_f64() { "yes" } else { "NO" },
            job.time.as_secs_f64() / floor_e.time.as_secs_f64(),
        );
    }
    if let (Some(p), Some(floor_e)) = (find(&format!("processor, batch {batch}:"), n), find("floor: SELECT expected", n)) {
        let budget = 4.0 * n as f64 / 1e6;
        println!(
            "end to end at {n} products, batch {batch}: processor {:.2} s (≤ {budget:.2} s: {}); processor / floor with expected {:.2}× (issue 21: ≤ 1.5×: {})",
            p.time.as_secs_f64(),
            if p.time.as_secs_f64() <= budget { "yes" } else { "NO" },
            p.time.as_secs_f64() / floor_e.time.as_secs_f64(),
            if p.time.as_secs_f64() <= 1.5 * floor_e.time.as_secs_f64() { "yes" } else { "NO" },
        );
    }
    if let (Some(drift), Some(wiped)) = (find(&format!("processor, batch {batch}:"), n), find(&format!("processor, batch {batch}, every key missing"), n)) {
        let ratio = wiped.time.as_secs_f64() / drift.time.as_secs_f64();
        println!(
            "every key missing at {n} products: {:.2} s = {ratio:.2}× the 0.1% drift run (≤ 3×: {}); peak RSS {:.1} MB (≤ 150 MB: {})",
            wiped.time.as_secs_f64(),
            if ratio <= 3.0 { "yes" } else { "NO" },
            mb(wiped.peak_kb),
            if mb(wiped.peak_kb) <= 150.0 { "yes" } else { "NO" },
        );
    }
    if let (Some(drift), Some(set), Some(alerts), Some(wiped)) = (
        find(&format!("processor, batch {batch}:"), n),
        find("floor, every key missing: SET", n),
        find("floor, every key missing: alerts", n),
        find(&format!("processor, batch {batch}, every key missing"), n),
    ) {
        let floors = set.time.as_secs_f64() + alerts.time.as_secs_f64();
        println!(
            "every key missing at {n} products: restore floor {:.2} s + alerts floor {:.2} s = {floors:.2} s = {:.2}× the drift run ({:.2} s; target 3× = {:.2} s); the run itself {:.2}× those floors",
            set.time.as_secs_f64(),
            alerts.time.as_secs_f64(),
            floors / drift.time.as_secs_f64(),
            drift.time.as_secs_f64(),
            3.0 * drift.time.as_secs_f64(),
            wiped.time.as_secs_f64() / floors,
        );
        if let Some(both) = find(FLOORS_AT_ONCE, n) {
            println!(
                "every key missing at {n} products: the two floors at once {:.2} s = {:.2}× the drift run (target ≤ 3×); the run itself {:.2}× that",
                both.time.as_secs_f64(),
                both.time.as_secs_f64() / drift.time.as_secs_f64(),
                wiped.time.as_secs_f64() / both.time.as_secs_f64(),
            );
        }
        if let Some(reread) = find(FLOORS_AND_REREAD, n) {
            println!(
                "every key missing at {n} products: the two floors and a re-read at once {:.2} s = {:.2}× the drift run (target ≤ 3×)",
                reread.time.as_secs_f64(),
                reread.time.as_secs_f64() / drift.time.as_secs_f64(),
            );
        }
    }
    // Where the time goes: on a machine of few cores, a phase cannot take less wall time than
    // its CPU divided by the cores, whatever overlaps.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for (size, phase, cpu) in cpus.iter().filter(|(size, ..)| *size == n) {
        println!("CPU at {size} products, {}: {} = {:.2} s of this machine's {cores} cores", phase.trim_end_matches(':'), cpu.describe(), cpu.total() / cores as f64);
    }
    for prefix in [format!("processor, batch {batch}:"), job_default] {
        if let (Some(small), Some(big)) = (find(&prefix, sizes[0]), find(&prefix, n)) {
            println!(
                "peak RSS, {}: {:.1} MB (+{:.1}) at {} products, {:.1} MB (+{:.1}) at {n} products{}",
                prefix.trim_end_matches(':'),
                mb(small.peak_kb),
                mb(small.peak_kb.saturating_sub(small.base_kb)),
                sizes[0],
                mb(big.peak_kb),
                mb(big.peak_kb.saturating_sub(big.base_kb)),
                if prefix.starts_with("processor") {
                    format!(" (≤ 150 MB: {})", if mb(big.peak_kb) <= 150.0 { "yes" } else { "NO" })
                } else {
                    String::new()
                }
            );
        }
    }
    b.cleanup().await;
}
