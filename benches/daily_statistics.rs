//! `daily-statistics` on one big day: SJ_BENCH_ORDERS orders (default 10,000,000, about two
//! items each) placed in one local day, generated in SQL with generate_series. Prints, from the
//! same run on the same data:
//! - the floor: the bare SQL aggregate alone — the day's totals (one FILTER statement) and
//!   the top 10 products (one join), run directly on one connection, no pipeline;
//! - the job: tick published → its `daily.statistics` event visible to a read_committed
//!   consumer, through a real processor (plan transaction, apply with the aggregate and the
//!   row write, chunk transaction);
//! - orders/s of the job, and both targets (job ≤ 1.2 × floor, ≥ 2,000,000 orders/s).
//!
//! The first job run (the processor joining its group) is a warm-up; the timed runs are
//! forced re-runs of the same date (MANUAL, `force=true`), which recompute the whole day,
//! alternating with floor runs so both see the same cache state. Medians of
//! SJ_BENCH_REPS runs (default 3). The days before the date already have rows, as in steady
//! state, so each run aggregates one date.
//!
//! Needs the local stack (`scripts/services.sh up`). Runs in its own database (dropped at the
//! end unless SJ_BENCH_KEEP_DB=1) and its own topics:
//! `SJ_BENCH_ORDERS=10000000 cargo bench --bench daily_statistics`
//! Generating 10,000,000 orders takes about 15 minutes; `SJ_BENCH_DB=<name>` reuses a database
//! kept by an earlier run (its day is read from the data, nothing is generated or dropped).

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Days, Utc};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::daily_statistics::day_bounds;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::processor::Processor;
use scheduled_jobs::wire::tick::{Tick, Trigger};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(900);
const JOB: &str = "daily-statistics";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}


/// A new database for the bench (the dev database keeps its data), migrated.
async fn bench_db(s: &mut Settings) -> anyhow::Result<(PgPool, String)> {
    let name = format!("sj_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let admin = PgPool::connect_with(scheduled_jobs::db::connect_options(&s.postgres, "postgres")).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    s.postgres.database = name.clone();
    let pool = scheduled_jobs::db::connect(&s.postgres).await?;
    scheduled_jobs::db::migrate(&pool).await?;
    Ok((pool, name))
}

/// N orders spread evenly over [start, end): 85 % paid 30 s after creation, 5 % cancelled,
/// 5 % refunded an hour after payment, 5 % left waiting; 1-3 items each over 1000 products.
async fn generate(pool: &PgPool, n: i64, start: DateTime<Utc>, end: DateTime<Utc>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO products (id, name, stock)
         SELECT 'p-' || lpad(g::text, 5, '0'), 'product ' || g, 1000000 FROM generate_series(1, 1000) g",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_amount, created_at, paid_at, cancelled_at, cancel_reason, refunded_amount, refunded_at)
         SELECT 'o-' || g, 'u-' || (g % 100000),
                CASE g % 20 WHEN 0 THEN 'ORDER_CANCELLED' WHEN 1 THEN 'REFUNDED' WHEN 2 THEN 'PAYMENT_WAIT' ELSE 'PAYMENT_COMPLETED' END,
                amount, t,
                CASE WHEN g % 20 IN (0, 2) THEN NULL ELSE t + interval '30 seconds' END,
                CASE WHEN g % 20 = 0 THEN t + interval '5 minutes' END,
                CASE WHEN g % 20 = 0 THEN 'USER_REQUESTED' END,
                CASE WHEN g % 20 = 1 THEN amount END,
                CASE WHEN g % 20 = 1 THEN t + interval '1 hour' END
         FROM (SELECT g, ((g * 7919) % 100000 + 100) / 100.0 AS amount,
                      $1 + (g - 1) * (extract(epoch FROM $2 - $1) / $3) * interval '1 second' AS t
               FROM generate_series(1, $3) g) x",
    )
    .bind(start)
    .bind(end)
    .bind(n)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT 'o-' || g, 'p-' || lpad((((g * 31 + k * 97) % 1000) + 1)::text, 5, '0'), 1 + (g + k) % 5, 10.00
         FROM generate_series(1, $1) g, generate_series(0, g % 3) k",
    )
    .bind(n)
    .execute(pool)
    .await?;
    // What autovacuum would have done by midnight: statistics and the visibility map.
    for t in ["orders", "order_items", "products"] {
        sqlx::query(&format!("VACUUM ANALYZE {t}")).execute(pool).await?;
    }
    Ok(())
}

/// The floor: the same figures by plain SQL, written here independently of the job.
async fn bare_sql(pool: &PgPool, start: DateTime<Utc>, end: DateTime<Utc>) -> anyhow::Result<(i64, Decimal, usize)> {
    let (orders, _paid, sales, _cancelled, _refunds): (i64, i64, Decimal, i64, Decimal) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE created_at >= $1 AND created_at < $2),
                count(*) FILTER (WHERE paid_at >= $1 AND paid_at < $2),
                coalesce(sum(total_amount) FILTER (WHERE paid_at >= $1 AND paid_at < $2), 0),
                count(*) FILTER (WHERE cancelled_at >= $1 AND cancelled_at < $2),
                coalesce(sum(refunded_amount) FILTER (WHERE refunded_at >= $1 AND refunded_at < $2), 0)
         FROM orders
         WHERE (created_at >= $1 AND created_at < $2) OR (paid_at >= $1 AND paid_at < $2)
            OR (cancelled_at >= $1 AND cancelled_at < $2) OR (refunded_at >= $1 AND refunded_at < $2)",
    )
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await?;
    let top: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.product_id, sum(i.quantity)::bigint AS sold
         FROM order_items i JOIN orders o ON o.id = i.order_id
         WHERE o.paid_at >= $1 AND o.paid_at < $2
         GROUP BY i.product_id ORDER BY sold DESC, i.product_id COLLATE \"C\" LIMIT 10",
    )
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    Ok((orders, sales, top.len()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: i64 = env_or("SJ_BENCH_ORDERS", 10_000_000);
    let reps: usize = env_or("SJ_BENCH_REPS", 3).max(1);
    let reuse = std::env::var("SJ_BENCH_DB").ok().filter(|v| !v.is_empty());
    let reused = reuse.is_some();
    let keep = reused || std::env::var("SJ_BENCH_KEEP_DB").is_ok_and(|v| v == "1");
    let mut s = common::isolated().await;
    let tz = s.time_zone()?;
    let (pool, db_name, n, date) = match reuse {
        Some(name) => {
            s.postgres.database = name.clone();
            let pool = scheduled_jobs::db::connect(&s.postgres).await?;
            scheduled_jobs::db::migrate(&pool).await?;
            let first: DateTime<Utc> = sqlx::query_scalar("SELECT min(created_at) FROM orders").fetch_one(&pool).await?;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await?;
            // The earlier run emitted the date; this one's warm-up must aggregate it again.
            sqlx::query("DELETE FROM daily_statistics WHERE run_id <> 'bench-history'").execute(&pool).await?;
            (pool, name, n, first.with_timezone(&tz).date_naive())
        }
        None => {
            let (pool, name) = bench_db(&mut s).await?;
            (pool, name, n, Utc::now().with_timezone(&tz).date_naive() - Days::new(2))
        }
    };
    let (start, end) = day_bounds(date, tz).ok_or_else(|| anyhow::anyhow!("no bounds for {date}"))?;
    println!("daily-statistics, {n} orders on {date} ({tz}), database {db_name}, topics prefix {}", s.topics.prefix);

    if !reused {
        let t = Instant::now();
        generate(&pool, n, start, end).await?;
        let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items").fetch_one(&pool).await?;
        println!("generated {n} orders and {items} items in {}", secs(t.elapsed()));
        // Steady state: the days before already aggregated, so a run covers one date.
        sqlx::query(
            "INSERT INTO daily_statistics (date, run_id, event_id, total_orders, total_sales, avg_order_amount, cancelled_orders,
                                           refund_amount, top_products, generated_at)
             SELECT d::date, 'bench-history', gen_random_uuid(), 0, 0, 0, 0, 0, '[]', now()
             FROM generate_series($1::date - 6, $1::date - 1, interval '1 day') d",
        )
        .bind(date)
        .execute(&pool)
        .await?;
    }

    let processor = Processor::new(s.clone(), scheduled_jobs::jobs::Registry::builtin(), pool.clone()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(processor.run(async move {
        let _ = stopped.await;
    }));
    let codec = Codec::new(&s)?;
    let producer: FutureProducer = client_config(&s, Role::Producer).create()?;
    let out: StreamConsumer = {
        let mut cfg = client_config(&s, Role::Consumer);
        cfg.set("group.id", format!("bench-reader-{}", uuid::Uuid::new_v4())).set("fetch.wait.max.ms", "5");
        let c: StreamConsumer = cfg.create()?;
        let topic = s.topic(Topic::DailyStatistics);
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(30))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), Offset::End)?;
        }
        c.assign(&tpl)?;
        c
    };
    let mut events = out.stream();
    let tick_topic = s.topic(Topic::Tick);
    let date_s = date.to_string();

    // One job run: tick published -> its event visible under read_committed.
    let mut job_run = async |tick: Tick| -> anyhow::Result<Duration> {
        let bytes = codec.encode(&tick_topic, tick.to_avro()).await?;
        let t0 = Instant::now();
        producer.send(FutureRecord::to(&tick_topic).key(JOB).payload(&bytes), WAIT).await.map_err(|(e, _)| e)?;
        loop {
            let m = tokio::time::timeout(WAIT, events.next()).await?.ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            if m.key() == Some(date_s.as_bytes()) {
                return Ok(t0.elapsed());
            }
        }
    };
    let scheduled = Tick {
        tick_id: Tick::scheduled_id(JOB, end),
        job: JOB.into(),
        scheduled_at: end,
        produced_at: Utc::now(),
        trigger: Trigger::Scheduled,
        parameters: Default::default(),
        producer: Some("bench".into()),
        schedule_version: None,
    };
    let warm = job_run(scheduled).await?;
    println!("job, first run (warm-up: group join, cold caches): {}", secs(warm));
    let (orders, sales, top) = bare_sql(&pool, start, end).await?;
    println!("floor check: {orders} orders created, total sales {sales}, top list of {top}");

    let (mut floors, mut jobs) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let t = Instant::now();
        bare_sql(&pool, start, end).await?;
        floors.push(t.elapsed());
        let forced = Tick {
            tick_id: uuid::Uuid::new_v4().to_string(),
            job: JOB.into(),
            scheduled_at: Utc::now() - chrono::TimeDelta::seconds(1),
            produced_at: Utc::now(),
            trigger: Trigger::Manual,
            parameters: [("date".to_string(), date_s.clone()), ("force".to_string(), "true".to_string())].into(),
            producer: Some("bench".into()),
            schedule_version: None,
        };
        jobs.push(job_run(forced).await?);
        println!("run {}: floor {}  job {}", i + 1, secs(floors[i]), secs(jobs[i]));
    }
    let _ = stop.send(());
    handle.await??;

    let (floor, job) = (median(floors), median(jobs));
    let ratio = job.as_secs_f64() / floor.as_secs_f64();
    let rate = n as f64 / job.as_secs_f64();
    println!("floor: bare SQL aggregate (totals + top 10), median of {reps}: {}", secs(floor));
    println!("job:   tick -> daily.statistics event committed, median of {reps}: {}", secs(job));
    println!("job / floor = {ratio:.2} (target <= 1.20: {})", if ratio <= 1.2 { "met" } else { "NOT met" });
    println!("job throughput = {rate:.0} orders/s (target >= 2000000: {})", if rate >= 2_000_000.0 { "met" } else { "NOT met" });

    pool.close().await;
    if !keep {
        let admin = PgPool::connect_with(scheduled_jobs::db::connect_options(&s.postgres, "postgres")).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&admin).await?;
    }
    Ok(())
}
