//! Fault-injection suite (issue 7): proves SPEC §3's E1–E5 with real processes on the local
//! stack, the way Apache Kafka's transaction system tests do — hard and clean bounces of
//! clients and services during the work, then the output checked against the input.
//!
//! It starts three `scheduled-jobs run` processors (static members p0–p2), two
//! `scheduled-jobs tick` producers with accelerated schedules (order-expiration every 5 s with
//! a 10 s payment timeout, stock-sync every 30 s, daily-statistics every minute) and drives
//! daily-statistics through simulated past dates with manual ticks (some requested twice);
//! a traffic simulator places orders with Redis reservations through the Order service's Lua
//! scripts, pays a quarter of them (some racing their expiry) and drifts Redis stock of
//! products kept for that. Meanwhile a fault injector, whose schedule is decided by the seed
//! alone, SIGKILLs, SIGSTOPs (past the 10 s session timeout: a zombie that must be fenced) and
//! SIGTERMs processors, restarts Kafka, Redis and PostgreSQL through `scripts/services.sh`,
//! and stops the broker for longer than a run's timeout (every job's `timeout_secs` is
//! [`procs::RUN_TIMEOUT`] here) with an order-expiration chunk held in flight across the
//! broker's shutdown ([`in_flight`]): its effects are made, its Kafka transaction fails, its
//! retry comes after the deadline, and its events must still match its effects.
//! Then it quiesces, lets the system catch up, and verifies from the outside (see verify.rs),
//! prints a summary and exits non-zero on any violation.
//!
//! `cargo test --test faults` runs the short profile (about 5–6 minutes; part of `.ci/run`);
//! `cargo test --test faults -- --profile long [--seed N]` runs 30 minutes of faults.
//! `cargo test --test faults -- --profile cluster [--duration S]` (issue 17) starts its own
//! three-broker cluster (replication 3, `min.insync.replicas=2`, no overlay; Redis, PostgreSQL
//! and the registry are the local stack's) and, for 30 minutes unless told otherwise, SIGKILLs
//! and cleanly stops one broker at a time, the active controller included, restarts all three
//! one after the other while a large order-expiration run is in flight, and bounces processors,
//! Redis and PostgreSQL; verified the same way.

#[path = "../it/common.rs"]
#[allow(dead_code)]
mod common;
mod procs;
mod schedules;
mod traffic;
mod verify;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::stock::Stock;

use procs::{Injected, Managed};
use traffic::Shop;
use verify::Report;

#[derive(Parser, Debug)]
#[command(about = "Fault-injection suite: real processes, crashes, zombies and service restarts; verifies E1–E5")]
struct Args {
    /// short: 190 s of faults (CI; every kind of fault once); long: 30 minutes; cluster: 30
    /// minutes on a three-broker cluster of its own.
    #[arg(long, default_value = "short", value_parser = ["short", "long", "cluster"])]
    profile: String,
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long, env = "SJ_FAULTS_SEED")]
    seed: Option<u64>,
    /// Seconds of traffic under faults (overrides the profile's).
    #[arg(long)]
    duration: Option<u64>,
    /// Print the fault schedule of the seed and exit.
    #[arg(long)]
    plan_only: bool,
    /// librdkafka debug contexts for the processors (e.g. `cgrp`), written to their logs at
    /// debug level: to read a group rebalance after a fault in the processors' own words.
    #[arg(long, env = "SJ_FAULTS_KAFKA_DEBUG")]
    kafka_debug: Option<String>,
    /// Test-name filters from `cargo test <filter>`: the suite runs only if one matches "faults".
    #[arg(hide = true)]
    filters: Vec<String>,
    // What `cargo test` may pass to every test binary (libtest's flags), accepted and ignored.
    #[arg(long, hide = true)]
    nocapture: bool,
    #[arg(long, short = 'q', hide = true)]
    quiet: bool,
    #[arg(long, hide = true)]
    exact: bool,
    #[arg(long, hide = true)]
    ignored: bool,
    #[arg(long, hide = true)]
    include_ignored: bool,
    #[arg(long, hide = true)]
    show_output: bool,
    #[arg(long, hide = true)]
    test_threads: Option<String>,
    #[arg(long, hide = true)]
    color: Option<String>,
    #[arg(long, hide = true)]
    format: Option<String>,
    /// libtest's --list: name the one test this binary is.
    #[arg(long, hide = true)]
    list: bool,
}

const PROCESSORS: usize = 3;
/// Orders placed at once before a rolling restart of the cluster (one order-expiration run of
/// BURST_ORDERS / 20 chunks).
const BURST_ORDERS: usize = 1500;
const PAYMENT_TIMEOUT_SECS: i64 = 10;
const EXPIRY_INTERVAL_SECS: i64 = 5;
/// Stated slack on "no waiting order older than timeout + one interval": room for a broker
/// restart and a group rebalance in progress when the traffic stops.
const SLACK_SECS: i64 = 60;

fn job_env(s: &Settings, database: &str) -> Vec<(String, String)> {
    let pause_after = schedules::PAUSE_AFTER.to_string();
    [
        ("SJ_TOPICS__PREFIX", s.topics.prefix.as_str()),
        ("SJ_PROCESSOR__GROUP_ID", s.processor.group_id.as_str()),
        ("SJ_PROCESSOR__TRANSACTIONAL_ID_PREFIX", s.processor.transactional_id_prefix.as_str()),
        ("SJ_POSTGRES__DATABASE", database),
        ("SJ_JOBS__ORDER_EXPIRATION__SCHEDULE", "*/5 * * * * *"),
        ("SJ_JOBS__ORDER_EXPIRATION__PAYMENT_TIMEOUT_SECS", "10"),
        ("SJ_JOBS__ORDER_EXPIRATION__BATCH_SIZE", "20"),
        ("SJ_JOBS__STOCK_SYNC__SCHEDULE", schedules::OLD_STOCK_SYNC),
        ("SJ_JOBS__STOCK_SYNC__BATCH_SIZE", "20"),
        ("SJ_JOBS__DAILY_STATISTICS__SCHEDULE", "0 * * * * *"),
        // A job that fails, paused by the system after its streak (issue 19).
        ("SJ_JOBS__NOOP__ENABLED", "true"),
        ("SJ_JOBS__NOOP__PAUSE_AFTER_FAILURES", pause_after.as_str()),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(["ORDER_EXPIRATION", "STOCK_SYNC", "DAILY_STATISTICS"].map(|job| {
        // Short run timeouts, so the broker outage (procs::Kind::Outage) outlasts them.
        (format!("SJ_JOBS__{job}__TIMEOUT_SECS"), procs::RUN_TIMEOUT.as_secs().to_string())
    }))
    .collect()
}

/// Committed records on the tick and work-item topics after the processors' committed
/// offsets (what they still have to handle). Counted by reading, not by watermarks: a
/// partition written transactionally ends with a commit marker that is never "consumed".
fn lag(s: &Settings) -> Option<i64> {
    let mut cfg = scheduled_jobs::kafka::client_config(s, scheduled_jobs::kafka::Role::Consumer);
    cfg.set("group.id", &s.processor.group_id);
    let group: BaseConsumer = cfg.create().ok()?;
    let mut cfg = scheduled_jobs::kafka::client_config(s, scheduled_jobs::kafka::Role::Consumer);
    cfg.set("group.id", common::unique("faults-lag"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false");
    let reader: BaseConsumer = cfg.create().ok()?;
    let mut assign = TopicPartitionList::new();
    for topic in [s.topic(Topic::Tick), s.topic(Topic::WorkItems)] {
        let md = group.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok()?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition(&topic, p.id());
        }
        for e in group.committed_offsets(tpl, Duration::from_secs(5)).ok()?.elements() {
            let at = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            assign.add_partition_offset(&topic, e.partition(), at).ok()?;
        }
    }
    let mut open = assign.count();
    reader.assign(&assign).ok()?;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while open > 0 && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => n += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            _ => {}
        }
    }
    (open == 0).then_some(n)
}

/// Waits until the processors have committed everything (lag 0 twice in a row).
async fn drained(s: &Settings, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut zeros = 0;
    while Instant::now() < deadline {
        let s2 = s.clone();
        let l = tokio::task::spawn_blocking(move || lag(&s2)).await.ok().flatten();
        zeros = if l == Some(0) { zeros + 1 } else { 0 };
        if zeros >= 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    false
}

pub(crate) async fn trigger(s: &Settings, job: &str, params: &[(&str, &str)]) -> Option<String> {
    let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for _ in 0..60 {
        match scheduled_jobs::runtime::tick::trigger(s, job, None, params.clone()).await {
            Ok(t) => return Some(t.tick_id),
            Err(e) => {
                eprintln!("[faults] trigger {job}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    None
}

/// Puts an order-expiration chunk in flight across a broker outage (blocking; on the
/// injector's thread): holds row locks on waiting orders about to expire, so the next run's
/// chunk blocks on them, and waits until one does. The returned step, called once the broker
/// has stopped, lets it go: the chunk cancels its orders and releases their stock, then its
/// Kafka transaction fails, and its retry comes after the run's deadline — its events must
/// still match its effects. If no chunk blocks within 20 s, the outage goes on without one.
fn in_flight(rt: &tokio::runtime::Handle, db: &sqlx::PgPool) -> Box<dyn FnOnce()> {
    let held = rt.block_on(async {
        let mut tx = db.begin().await.ok()?;
        let n = sqlx::query(
            "SELECT id FROM orders WHERE status = 'PAYMENT_WAIT' AND created_at < now() - interval '5 seconds' FOR UPDATE SKIP LOCKED",
        )
        .execute(&mut *tx)
        .await
        .ok()?
        .rows_affected();
        (n > 0).then_some(tx)
    });
    let Some(tx) = held else {
        eprintln!("[faults] no waiting order to hold: the outage starts with no chunk held in flight");
        return Box::new(|| {});
    };
    let blocked = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%UPDATE orders SET status = ''ORDER_CANCELLED''%'",
            )
            .fetch_one(db)
            .await
            .unwrap_or(0);
            if n > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    eprintln!("[faults] {} while the broker stops", if blocked { "an order-expiration chunk is held in flight" } else { "no chunk blocked on the held orders" });
    let rt = rt.clone();
    Box::new(move || {
        if let Err(e) = rt.block_on(tx.rollback()) {
            eprintln!("[faults] releasing the held orders: {e}");
        }
    })
}

fn supervise_all(ps: &Mutex<Vec<Managed>>) {
    for p in ps.lock().expect("processes").iter_mut() {
        p.supervise();
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.list {
        println!("faults: test");
        return;
    }
    if !args.filters.is_empty() && !args.filters.iter().any(|f| "faults".contains(f.as_str())) {
        return;
    }
    let seed = args.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 % 1_000_000);
    let on_cluster = args.profile == "cluster";
    let span = Duration::from_secs(args.duration.unwrap_or(if args.profile == "short" { 190 } else { 1800 }));
    let gap = if args.profile == "short" { (5, 12) } else { (15, 45) };
    let kinds: &[procs::Kind] = if on_cluster { &procs::Kind::CLUSTER } else { &procs::Kind::ALL };
    let plan = procs::schedule(seed, span, PROCESSORS, gap, kinds);
    eprintln!("[faults] profile {} seed {seed}: {} faults over {} s", args.profile, plan.len(), span.as_secs());
    for f in &plan {
        eprintln!("[faults]   t+{:>4}s {:<36} p{} hold {:.1}s", f.at.as_secs(), f.kind.name(), f.target, f.hold.as_secs_f64());
    }
    if args.plan_only {
        return;
    }
    let started = Instant::now();

    // The cluster profile's brokers, and what points every client at them.
    let cluster = on_cluster.then(|| {
        let c = common::Cluster::start();
        eprintln!("[faults] three-broker cluster in {} (ports from {})", c.dir.display(), c.base_port);
        c
    });
    let cluster_env: Vec<(String, String)> = cluster
        .as_ref()
        .map(|c| c.env().into_iter().filter(|(k, _)| k == "SJ_KAFKA__BOOTSTRAP_SERVERS" || k == "SJ_TOPICS__OVERRIDES").collect())
        .unwrap_or_default();
    // Healthy nodes may not all have registered yet: wait until the cluster lists three brokers.
    if let Some((_, bootstrap)) = cluster_env.iter().find(|(k, _)| k == "SJ_KAFKA__BOOTSTRAP_SERVERS") {
        let registered = |bootstrap: &str| -> usize {
            let consumer: Option<BaseConsumer> = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().ok();
            consumer.and_then(|c| c.fetch_metadata(None, Duration::from_secs(5)).ok()).map_or(0, |md| md.brokers().len())
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while registered(bootstrap) < 3 {
            assert!(Instant::now() < deadline, "the cluster did not list three brokers within 120 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // A private environment: topics, group, transactional ids, database, product ids.
    let s = common::isolated_with(|s| {
        // The failing job's ticks are triggered from here (schedules::Failing).
        if let Some(noop) = s.jobs.get_mut("noop") {
            noop.enabled = true;
        }
        for (k, v) in &cluster_env {
            match k.as_str() {
                "SJ_KAFKA__BOOTSTRAP_SERVERS" => s.kafka.bootstrap_servers = v.clone(),
                _ => s.topics.overrides = None,
            }
        }
    })
    .await;
    let (db, database) = common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&db).await.expect("migrate");
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let stock = Stock::connect(&url).await.expect("redis");
    let tag = common::unique("f");
    let shop = Arc::new(Shop::new(db.clone(), stock, &tag, 30, 10).await);
    let logs = common::repo_root().join(".local/faults").join(format!("{}-seed{seed}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&logs).expect("log folder");
    eprintln!("[faults] process logs in {}", logs.display());

    let mut env = job_env(&s, &database);
    env.extend(cluster_env.iter().cloned());
    if let Some(contexts) = &args.kafka_debug {
        env.retain(|(k, _)| k != "RUST_LOG");
        env.push(("RUST_LOG".into(), "info,librdkafka=debug".into()));
        env.push(("SJ_KAFKA_PROP_DEBUG".into(), contexts.clone()));
    }
    let processors: Arc<Mutex<Vec<Managed>>> = Arc::new(Mutex::new(
        (0..PROCESSORS)
            .map(|i| {
                let mut e = env.clone();
                e.push(("SJ_PROCESSOR__INSTANCE_ID".into(), format!("p{i}")));
                Managed::new(&format!("p{i}"), &["run"], e, &logs)
            })
            .collect(),
    ));
    let mut tickers: Vec<Managed> = (0..2)
        .map(|i| {
            let mut e = env.clone();
            e.push(("SJ_SCHEDULER__PRODUCER_ID".into(), format!("t{i}")));
            Managed::new(&format!("t{i}"), &["tick"], e, &logs)
        })
        .collect();
    processors.lock().expect("processes").iter_mut().for_each(Managed::start);
    tickers.iter_mut().for_each(Managed::start);

    // Traffic, with its drift stopping early enough for the scheduled syncs to repair it.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_drift = Arc::new(AtomicBool::new(false));
    let burst = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (shop, stop, stop_drift, burst) = (shop.clone(), stop.clone(), stop_drift.clone(), burst.clone());
        tokio::spawn(async move {
            shop.run(seed, 20.0, Duration::from_secs(14), Duration::from_secs(3), stop, stop_drift, burst).await
        })
    };
    let cluster = Arc::new(cluster);

    // Faults, one at a time, on a blocking thread (signals and waits block).
    let injector = {
        let processors = processors.clone();
        let (rt, db) = (tokio::runtime::Handle::current(), db.clone());
        let (cluster, burst) = (cluster.clone(), burst.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let mut injected = Injected::default();
            let mut outage = || in_flight(&rt, &db);
            for f in &plan {
                while t0.elapsed() < f.at {
                    std::thread::sleep(Duration::from_millis(200));
                    supervise_all(&processors);
                }
                // A large order-expiration run: orders that all expire together.
                let place = || burst.store(BURST_ORDERS, Ordering::SeqCst);
                procs::inject(f, &mut processors.lock().expect("processes"), &mut injected, &mut outage, cluster.as_ref().as_ref(), &place);
            }
            while t0.elapsed() < span {
                std::thread::sleep(Duration::from_millis(200));
                supervise_all(&processors);
            }
            injected
        })
    };

    // Simulated dates for daily-statistics, one every 20 s, every third one requested twice.
    let mut daily_ticks = Vec::new();
    let mut daily_repeats = 0;
    let base = chrono::NaiveDate::from_ymd_opt(2025, 6, 1).expect("date");
    let mut k = 0;
    let t0 = Instant::now();
    let mut failing = schedules::Failing::default();
    while t0.elapsed() + Duration::from_secs(35) < span {
        tokio::time::sleep(Duration::from_secs(20)).await;
        failing.step(&s, &db).await;
        if k == 1 {
            // A rolling deploy that changes stock-sync's schedule: a producer with the new one
            // starts while the old ones go on.
            let mut e = env.clone();
            e.push(("SJ_SCHEDULER__PRODUCER_ID".into(), "t2".into()));
            e.push(("SJ_JOBS__STOCK_SYNC__SCHEDULE".into(), schedules::NEW_STOCK_SYNC.into()));
            let mut t2 = Managed::new("t2", &["tick"], e, &logs);
            t2.start();
            tickers.push(t2);
            eprintln!("[faults] t+{} s: tick producer t2 started with stock-sync at `{}`", started.elapsed().as_secs(), schedules::NEW_STOCK_SYNC);
        }
        let date = (base + chrono::TimeDelta::days(k)).to_string();
        if let Some(id) = trigger(&s, "daily-statistics", &[("date", &date)]).await {
            daily_ticks.push(id);
        }
        // The same date again: a duplicate request, recorded as such and never emitted twice.
        if k % 3 == 0 && trigger(&s, "daily-statistics", &[("date", &date)]).await.is_some() {
            daily_repeats += 1;
        }
        // Twice per round, so the failing job's whole story (streak, pause, resume) fits the
        // short profile.
        failing.step(&s, &db).await;
        k += 1;
        for t in tickers.iter_mut() {
            t.supervise();
        }
    }
    stop_drift.store(true, Ordering::SeqCst);
    let injected = injector.await.expect("injector");
    stop.store(true, Ordering::SeqCst);
    let done = traffic.await.expect("traffic");
    eprintln!("[faults] faults over at t+{} s; quiescing", started.elapsed().as_secs());

    // Quiesce: every process up, tick producers still firing until no order is left waiting.
    supervise_all(&processors);
    for t in tickers.iter_mut() {
        t.supervise();
    }
    let mut report = Report::default();
    let limit = PAYMENT_TIMEOUT_SECS + EXPIRY_INTERVAL_SECS + SLACK_SECS;
    let deadline = Instant::now() + Duration::from_secs(limit as u64);
    while verify::overdue(&shop, 0).await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        supervise_all(&processors);
    }
    // The failing job's story ends too: it is resumed only now that the faults are over.
    failing.faults_over = true;
    let story = Instant::now() + Duration::from_secs(120);
    while !failing.done() && Instant::now() < story {
        failing.step(&s, &db).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        supervise_all(&processors);
    }
    let overdue = verify::overdue(&shop, limit).await;
    let still_waiting = verify::overdue(&shop, 0).await;
    for t in tickers.iter_mut() {
        t.stop(Duration::from_secs(20));
    }
    if !drained(&s, Duration::from_secs(180)).await {
        report.violation("the processors did not drain their input within 180 s");
    }
    // The order path alone: before any final repair, Redis must already match.
    verify::reservations(&shop, &mut report).await;
    let stalled = verify::stalled_placements(&s, &done).await;
    verify::stock_matches(&shop, &shop.order_products, "ordered products", &stalled, &mut report).await;
    // A last stock-sync repairs the drift; then every product must match.
    let final_sync = trigger(&s, "stock-sync", &[]).await;
    if final_sync.is_none() || !drained(&s, Duration::from_secs(120)).await {
        report.violation("the final stock-sync run did not complete");
    }
    let all: Vec<String> = shop.order_products.iter().chain(&shop.drift_products).cloned().collect();
    verify::stock_matches(&shop, &all, "all products after the last sync", &BTreeMap::new(), &mut report).await;
    let mut stopped_cleanly = 0;
    for p in processors.lock().expect("processes").iter_mut() {
        stopped_cleanly += usize::from(p.stop(Duration::from_secs(30)));
    }

    // Verify from the outside.
    if overdue != 0 {
        report.violation(format!("{overdue} orders still PAYMENT_WAIT more than {limit} s after creation"));
    }
    verify::order_events(&s, &shop, &mut report).await;
    verify::alerts(&s, &shop, &mut report).await;
    verify::daily(&s, &shop, &mut report).await;
    let results = verify::runs(&s, &mut report).await;
    let answered = daily_ticks.iter().filter(|t| results.iter().any(|r| &r.tick_id == *t)).count();
    if answered != daily_ticks.len() {
        report.violation(format!("{} of {} daily-statistics requests got no run result", daily_ticks.len() - answered, daily_ticks.len()));
    }
    // Runs that ended past their deadline: cut by it, or completed by a retry after it (a
    // broker outage longer than the timeout). Their events are checked with all the others.
    let late = results.iter().filter(|r| r.duration_ms > procs::RUN_TIMEOUT.as_millis() as i64).count();
    report.row("runs that ended past their run timeout", late);
    verify::recovery(&results, &injected.log, &mut report);
    failing.verify(&results, &mut report);
    schedules::verify_schedule_change(&results, &mut report);
        if final_sync.as_ref().is_some_and(|t| !results.iter().any(|r| &r.tick_id == t)) {
        report.violation("the final stock-sync request got no run result");
    }

    // Summary.
    let ps = processors.lock().expect("processes");
    println!("\n## Fault-injection summary — profile {}, seed {seed}, {} s\n", args.profile, started.elapsed().as_secs());
    println!("| what | value |\n|---|---|");
    for (kind, n) in &injected.by_kind {
        println!("| fault: {kind} | {n} |");
    }
    println!("| processor starts / unexpected exits | {} / {} |", ps.iter().map(|p| p.starts).sum::<usize>(), ps.iter().map(|p| p.unexpected_exits).sum::<usize>());
    println!("| processors stopped cleanly at the end | {stopped_cleanly} of {PROCESSORS} |");
    println!("| clean stops past their grace / failed service restarts | {} / {} |", injected.slow_clean_stops, injected.failed_restarts);
    println!("| orders placed / paid / payments that lost the race to expiry | {} / {} / {} |", done.placed, done.paid, done.payments_lost_to_expiry);
    println!("| Redis drifts injected | {} |", done.drifts);
    println!("| traffic operations retried (service down) | {} |", done.retries);
    println!("| orders still waiting after the catch-up ({limit} s allowed) | {still_waiting} |");
    println!("| daily-statistics requests: simulated dates / repeated requests | {} / {daily_repeats} |", daily_ticks.len());
    for (name, value) in &report.rows {
        println!("| {name} | {value} |");
    }
    println!("| **violations** | **{}** |", report.violations.len());
    for v in &report.violations {
        println!("- {v}");
    }
    println!("\nreplay this fault schedule: cargo test --test faults -- --profile {} --seed {seed}", args.profile);
    drop(ps);
    // The cluster profile's brokers stop here (the exit below would skip their drop).
    drop(cluster);
    if report.violations.is_empty() {
        common::drop_db(&s, db, &database).await;
    } else {
        eprintln!("[faults] database {database} and logs in {} kept for inspection", logs.display());
        std::process::exit(1);
    }
}
