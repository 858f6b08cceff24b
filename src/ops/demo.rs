//! `scheduled-jobs demo`: everything a newcomer needs to see the jobs work end to end on the
//! local stack — topics applied, schemas registered, database migrated, demo data loaded
//! (products, orders in every state, Redis stock with planted drift), then a tick producer and
//! a processor running in the foreground until Ctrl-C.
//!
//! Demo data is added, never reset: each start inserts a fresh batch of orders under new ids,
//! so existing runs, events and ledger entries stay valid.
//!
//! The console shows one line per ended run — job, period, outcome, duration and the run
//! result's counts — read back from the committed run results (read_committed), so it shows
//! what the runs did, not what was configured. The processor's logs are left to `-v` /
//! `RUST_LOG` (at the default verbosity only warnings and errors are logged).

use std::future::Future;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{JobSettings, Settings, Topic};
use crate::jobs::stock::{stock_key, Stock};
use crate::kafka::codec::Codec;
use crate::kafka::{self, read, KafkaClientError, Role};
use crate::ops::history::{self, HistoryError, RunRow};
use crate::wire::internal::RunResult;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("topics: {0}")]
    Topics(#[from] crate::kafka::topics::TopicsError),
    #[error("schemas: {0}")]
    Schemas(#[from] crate::kafka::schemas::SchemaError),
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Metrics(#[from] crate::runtime::metrics::MetricsError),
    #[error("tick producer: {0}")]
    Tick(#[from] crate::runtime::tick::TickError),
    #[error("processor: {0}")]
    Processor(#[from] crate::runtime::processor::ProcessorError),
    #[error("run results: {0}")]
    Results(#[from] crate::ops::history::HistoryError),
}

impl From<sqlx::Error> for DemoError {
    fn from(e: sqlx::Error) -> Self {
        DemoError::Db(crate::db::DbError::Query(e))
    }
}

/// Accelerated schedules: every job fires within a minute or two.
pub fn accelerate(settings: &mut Settings) {
    let set = |s: &mut Settings, key: &str, schedule: &str, f: &dyn Fn(&mut JobSettings)| {
        if let Some(j) = s.jobs.get_mut(key) {
            j.schedule = schedule.into();
            f(j);
        }
    };
    set(settings, "order_expiration", "*/20 * * * * *", &|j| j.set_option("payment_timeout_secs", 60));
    set(settings, "stock_sync", "5 * * * * *", &|_| {});
    set(settings, "daily_statistics", "10 */2 * * * *", &|_| {});
}

/// Applies topics, registers schemas and migrates.
pub async fn prepare(settings: &Settings) -> Result<sqlx::PgPool, DemoError> {
    let specs = crate::kafka::topics::configured_specs(settings)?;
    let report = crate::kafka::topics::apply(settings, &specs, false).await?;
    print!("{report}");
    let schemas = crate::kafka::schemas::load(&settings.schemas.dir, &specs)?;
    let registry = crate::kafka::schemas::Registry::new(settings)?;
    for o in crate::kafka::schemas::register(&registry, &schemas).await? {
        println!("{o}");
    }
    let pool = crate::db::connect(&settings.postgres).await?;
    let applied = crate::db::migrate(&pool).await?;
    println!("applied {applied} migration(s)");
    Ok(pool)
}

/// What [`seed`] planted, for the console.
#[derive(Debug, Default)]
pub struct Seeded {
    pub expired: usize,
    pub waiting: usize,
    pub yesterday: usize,
    pub drifted: usize,
}

/// Loads products (Redis stock consistent with the DB except for a few planted drifts),
/// expired and fresh unpaid orders with reservations, and yesterday's paid, cancelled and
/// refunded orders.
pub async fn seed(settings: &Settings, pool: &sqlx::PgPool, now: DateTime<Utc>) -> Result<Seeded, DemoError> {
    let stock = Stock::new(redis::aio::ConnectionManager::new(settings.redis_client()?).await?);
    let mut conn = stock.connection();
    let names = ["keyboard", "mouse", "monitor", "headset", "webcam", "dock", "cable", "stand", "lamp", "chair", "desk", "mic"];
    for (i, name) in names.iter().enumerate() {
        let id = format!("demo-p-{i:02}");
        let inserted = sqlx::query("INSERT INTO products (id, name, stock) VALUES ($1, $2, 500) ON CONFLICT (id) DO NOTHING")
            .bind(&id)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected();
        if inserted == 1 {
            redis::cmd("SET").arg(stock_key(&id)).arg(500).query_async::<()>(&mut conn).await?;
        }
    }
    let batch = now.timestamp();
    let mut seeded = Seeded::default();
    let order = |n: usize| format!("demo-o-{batch}-{n:03}");
    let price = Decimal::new(12_900, 2);
    let mut n = 0;
    // Unpaid orders: some already past the payment timeout, some fresh.
    for (age_secs, expired) in [(3600, true), (1800, true), (900, true), (30, false), (10, false)] {
        for _ in 0..4 {
            let id = order(n);
            let product = format!("demo-p-{:02}", n % names.len());
            let qty = (n % 3 + 1) as i32;
            let created = now - TimeDelta::seconds(age_secs);
            insert_order(pool, &id, "PAYMENT_WAIT", created, None, price * Decimal::from(qty), &product, qty).await?;
            stock.reserve(&id, &[(product.clone(), i64::from(qty))]).await?;
            if expired {
                seeded.expired += 1;
            } else {
                seeded.waiting += 1;
            }
            n += 1;
        }
    }
    // Yesterday (UTC calendar) for daily-statistics: paid, cancelled, refunded.
    let yesterday = now - TimeDelta::days(1);
    for k in 0..12 {
        let id = order(n);
        let product = format!("demo-p-{:02}", k % 5);
        let qty = k % 4 + 1;
        let at = yesterday - TimeDelta::minutes(40 * k as i64);
        let status = match k % 6 {
            0 => "ORDER_CANCELLED",
            1 => "REFUNDED",
            _ => "PAYMENT_COMPLETED",
        };
        insert_order(pool, &id, status, at, Some(at + TimeDelta::minutes(3)), price * Decimal::from(qty), &product, qty).await?;
        seeded.yesterday += 1;
        n += 1;
    }
    // Planted drift for stock-sync: a drifted value, a missing key, an invalid DB value.
    redis::cmd("INCRBY").arg(stock_key("demo-p-07")).arg(3).query_async::<()>(&mut conn).await?;
    redis::cmd("DEL").arg(stock_key("demo-p-08")).query_async::<()>(&mut conn).await?;
    sqlx::query("UPDATE products SET stock = -2 WHERE id = 'demo-p-09'").execute(pool).await?;
    seeded.drifted = 3;
    Ok(seeded)
}

#[allow(clippy::too_many_arguments)]
async fn insert_order(
    pool: &sqlx::PgPool,
    id: &str,
    status: &str,
    created: DateTime<Utc>,
    settled: Option<DateTime<Utc>>,
    amount: Decimal,
    product: &str,
    qty: i32,
) -> Result<(), DemoError> {
    let paid = settled.filter(|_| status != "ORDER_CANCELLED");
    let cancelled = settled.filter(|_| status == "ORDER_CANCELLED");
    let refunded = settled.filter(|_| status == "REFUNDED").map(|t| t + TimeDelta::minutes(20));
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_amount, created_at, paid_at, cancelled_at, cancel_reason,
                             refunded_amount, refunded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(format!("demo-user-{}", id.len() % 7))
    .bind(status)
    .bind(amount)
    .bind(created)
    .bind(paid)
    .bind(cancelled)
    .bind(cancelled.map(|_| "USER_REQUESTED"))
    .bind(refunded.map(|_| amount))
    .bind(refunded)
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(product)
        .bind(qty)
        .bind(Decimal::new(12_900, 2))
        .execute(pool)
        .await?;
    Ok(())
}

/// The console line of one ended run: job, period, outcome, duration, then its counts (and
/// why it did not succeed, if the result says).
pub fn summary(r: &RunResult) -> String {
    let row = RunRow::from(r);
    format!(
        "run {:<18} period {}  {:<9} {:>7}  {}",
        row.job,
        row.period,
        row.outcome,
        history::duration_text(&row),
        history::counts_text(&row)
    )
    .trim_end()
    .to_string()
}

/// A reader of the run-result topic positioned at its current end (blocking): it sees the
/// results committed from now on.
fn results_reader(settings: &Settings) -> Result<BaseConsumer, HistoryError> {
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    let topic = settings.topic(Topic::RunResults);
    let mut cfg = kafka::client_config(settings, Role::Consumer);
    cfg.set("group.id", format!("{}-demo-{}", settings.kafka.client_id, uuid::Uuid::new_v4())).set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = kafka::create(&cfg)?;
    let partitions = kafka::existing_partitions(&consumer, &topic, TIMEOUT, kafka::RUN_TOPICS_APPLY)?;
    // Explicit offsets rather than `Offset::End`, which librdkafka resolves later: a run
    // ending in between would be missed.
    let ends = read::watermarks(&consumer, &topic, partitions, TIMEOUT).map_err(|e| KafkaClientError::kafka("watermarks", e))?;
    let mut tpl = TopicPartitionList::new();
    for (p, (_, high)) in ends {
        tpl.add_partition_offset(&topic, p, Offset::Offset(high)).map_err(|e| KafkaClientError::kafka("assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| KafkaClientError::kafka("assign", e))?;
    Ok(consumer)
}

/// Prints [`summary`] of every run result `reader` reads until `stop` completes, then of
/// those committed by then (the processor has stopped: its last runs are shown too).
async fn print_results(reader: BaseConsumer, codec: Codec, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let polled = if stopping {
            crate::ops::follow::poll_one(&reader).await
        } else {
            tokio::select! {
                _ = &mut stop => {
                    stopping = true;
                    continue;
                }
                p = crate::ops::follow::poll_one(&reader) => p,
            }
        };
        let bytes = match polled {
            Ok(Some((_, _, Some(bytes)))) => bytes,
            // Caught up with what is committed after the stop.
            Ok(None) if stopping => return,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read run results; the run summaries stop here");
                return;
            }
        };
        match codec.decode(&bytes).await.map(|d| RunResult::from_avro(d.value)) {
            Ok(Ok(r)) => println!("{}", summary(&r)),
            Ok(Err(e)) => tracing::warn!(error = %e, "skipping a malformed run result"),
            Err(e) => tracing::warn!(error = %e, "skipping an undecodable run result"),
        }
    }
}

/// Prepares, seeds, then runs a tick producer and a processor until `shutdown`.
pub async fn run(mut settings: Settings, fast: bool, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    if fast {
        accelerate(&mut settings);
    }
    let pool = prepare(&settings).await?;
    let seeded = seed(&settings, &pool, Utc::now()).await?;
    println!(
        "demo data: {} expired and {} fresh unpaid orders, {} orders yesterday, {} planted stock drifts",
        seeded.expired, seeded.waiting, seeded.yesterday, seeded.drifted
    );
    println!("{}", settings.time_zone_line());
    for (key, job) in &settings.jobs {
        if job.enabled && !job.schedule.is_empty() {
            println!("schedule {:<18} {}  ({})", key, job.schedule, settings.scheduler.time_zone);
        }
    }
    println!("watch: scheduled-jobs tail order.cancelled | stock.sync.alert | daily.statistics | scheduled-jobs.run-results");
    let processor =
        crate::runtime::processor::Processor::new(settings.clone(), crate::jobs::Registry::builtin(), pool).await?;
    // The processor's metrics on metrics.listen, if set (the tick producer's are not served).
    let _endpoint = crate::runtime::metrics::start(&settings, &processor.metrics(), true).await?;
    if let Some(addr) = _endpoint.addr {
        println!("metrics: http://{addr}/metrics");
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (mut rx1, mut rx2) = (stop_tx.subscribe(), stop_tx.subscribe());
    let reader_settings = settings.clone();
    let reader = tokio::task::spawn_blocking(move || results_reader(&reader_settings))
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))??;
    let (summaries_stop, summaries_stopped) = tokio::sync::oneshot::channel::<()>();
    let summaries = tokio::spawn(print_results(reader, Codec::new(&settings).map_err(HistoryError::from)?, async move {
        let _ = summaries_stopped.await;
    }));
    println!("runs (one line per ended run; -v for the logs):");
    let producer_settings = settings.clone();
    let producer = tokio::spawn(async move {
        crate::runtime::tick::run_producer(&producer_settings, &crate::runtime::metrics::Metrics::new(), async move {
            let _ = rx1.recv().await;
        })
        .await
    });
    let proc_task = tokio::spawn(processor.run(async move {
        let _ = rx2.recv().await;
    }));
    shutdown.await;
    println!("stopping");
    let _ = stop_tx.send(());
    if let Ok(r) = producer.await {
        r?;
    }
    let processed = proc_task.await;
    // After the processor: the runs it ended while stopping are summarised too.
    let _ = summaries_stop.send(());
    let _ = summaries.await;
    if let Ok(r) = processed {
        r?;
    }
    Ok(())
}
