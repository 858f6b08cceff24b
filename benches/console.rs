//! Console page loads with a large run history (SJ_BENCH_RUNS, default 10,000 runs in the last
//! six days; issue 20's target: every page under 300 ms), each page timed over
//! SJ_BENCH_LOADS sequential loads (default 50) next to the floor measured in the same run:
//! `/healthz` of the same server, which renders nothing. Also times one refresh of the
//! background history read: the incremental one the console does every 2 s (`Feed::refresh`,
//! nothing new) next to reading the whole window again (`recent_runs`, as the console did
//! before).
//!
//! Needs the local stack (`scripts/services.sh up`); run with `cargo bench --bench console`.

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use scheduled_jobs::config::Topic;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::ops::history;
use scheduled_jobs::wire::internal::{Outcome, RunResult};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(name: &str, mut v: Vec<Duration>, floor: Option<Duration>) -> Duration {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99) = (at(0.5), at(0.99));
    let vs = floor.map_or(String::new(), |f| format!("  p50 = floor + {:.1} ms", ms(p50.saturating_sub(f))));
    println!("{name:<40} n={:<4} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms{vs}", v.len(), ms(p50), ms(p99), ms(*v.last().unwrap()));
    p99
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::stack();
    let runs = env_usize("SJ_BENCH_RUNS", 10_000);
    let loads = env_usize("SJ_BENCH_LOADS", 50);
    let s = common::isolated().await;
    let (pool, _) = common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await?;

    // The history: `runs` results over the last six days, every job and outcome, each with a
    // chunk recorded in PostgreSQL.
    let jobs = ["order-expiration", "stock-sync", "daily-statistics", "stock-sync-report"];
    let outcomes = [Outcome::Succeeded, Outcome::Succeeded, Outcome::Succeeded, Outcome::Skipped, Outcome::Failed, Outcome::TimedOut];
    let now = Utc::now();
    let codec = Codec::new(&s)?;
    let topic = s.topic(Topic::RunResults);
    let producer: FutureProducer = client_config(&s, Role::Producer).set("linger.ms", "20").create()?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(runs);
    let mut sends = Vec::with_capacity(runs);
    for i in 0..runs {
        let at = now - TimeDelta::seconds((i as i64 * 6 * 86_400) / runs as i64) - TimeDelta::seconds(1);
        let run_id = format!("bench-run-{i:05}");
        let r = RunResult {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_timestamp: at,
            run_id: run_id.clone(),
            job: jobs[i % jobs.len()].into(),
            period: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            tick_id: uuid::Uuid::new_v4().to_string(),
            trigger: "SCHEDULED".into(),
            outcome: outcomes[i % outcomes.len()],
            counts: BTreeMap::from([("chunks".to_string(), 1), ("ordersCancelled".to_string(), (i % 100) as i64)]),
            started_at: at,
            finished_at: at + TimeDelta::milliseconds(1500),
            duration_ms: 1500,
            message: (outcomes[i % outcomes.len()] == Outcome::Failed).then(|| "redis: timed out".to_string()),
            time_zone: "Asia/Seoul".into(),
        };
        let bytes = codec.encode(&topic, r.to_avro()).await?;
        let key = r.job.clone();
        let p = producer.clone();
        let t = topic.clone();
        sends.push(tokio::spawn(async move { p.send(FutureRecord::to(&t).key(&key).payload(&bytes), Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e) }));
        ids.push(run_id);
    }
    for s in sends {
        s.await??;
    }
    producer.flush(Duration::from_secs(30))?;
    sqlx::query(
        "INSERT INTO job_run_chunks (run_id, chunk_index, outcome, counts, applied_at, applied_by)
         SELECT id, 0, 'APPLIED', '{\"ordersCancelled\": 1}'::jsonb, now(), 'bench-0' FROM unnest($1::text[]) AS t(id)",
    )
    .bind(&ids)
    .execute(&pool)
    .await?;
    println!("history: {runs} run results produced and their chunks stored in {:.1} s", started.elapsed().as_secs_f64());

    // The history read: all of it once, then an incremental refresh with nothing new, next to
    // reading the window again.
    let window = TimeDelta::days(7);
    let mut feed = history::Feed::new(&s, window)?;
    let t = Instant::now();
    let rows = feed.refresh().await?;
    println!("history read, first (all {} runs)         {:>8.1} ms", rows.len(), ms(t.elapsed()));
    anyhow::ensure!(rows.len() == runs, "the feed read {} runs, not {runs}", rows.len());
    let mut incremental = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        feed.refresh().await?;
        incremental.push(t.elapsed());
        let t = Instant::now();
        let again = history::recent_runs(&s, Utc::now() - window, None).await?;
        whole.push(t.elapsed());
        anyhow::ensure!(again.len() == runs);
    }
    line("history refresh: incremental (Feed)", incremental, None);
    line("history refresh: whole window again", whole, None);

    // The console, once its history holds every run.
    let listener = scheduled_jobs::ops::console::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(scheduled_jobs::ops::console::serve(listener, s.clone(), s.time_zone()?, pool.clone(), std::future::pending()));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page = http.get(format!("{base}/runs")).send().await?.text().await?;
        if page.contains(&format!("{runs} runs in 7 days")) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the console did not read the {runs} runs within 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pages = [
        ("/healthz (floor)", "/healthz".to_string()),
        ("/ (schedules)", "/".to_string()),
        ("/runs (newest 200)", "/runs".to_string()),
        ("/runs?job=stock-sync&outcome=SKIPPED", "/runs?job=stock-sync&outcome=SKIPPED".to_string()),
        ("/runs/{id} (a run's page)", format!("/runs/{}", ids[runs / 2])),
        ("/dead-letters", "/dead-letters".to_string()),
        ("/lag", "/lag".to_string()),
    ];
    println!("\npage loads, {loads} each, {runs} runs in the history (target: under 300 ms)");
    let mut floor = None;
    let mut worst = Duration::ZERO;
    for (name, path) in &pages {
        let mut v = Vec::with_capacity(loads);
        for _ in 0..loads {
            let t = Instant::now();
            let r = http.get(format!("{base}{path}")).send().await?;
            anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
            r.bytes().await?;
            v.push(t.elapsed());
        }
        let p99 = line(name, v, floor);
        if floor.is_none() {
            floor = Some(p99);
        } else {
            worst = worst.max(p99);
        }
    }
    println!("slowest page p99: {:.1} ms — {}", ms(worst), if worst < Duration::from_millis(300) { "within the 300 ms target" } else { "OVER the 300 ms target" });
    Ok(())
}
