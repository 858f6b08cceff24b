//! Tick-to-committed-output latency of the trivial `noop` job, p50/p99 over N ticks
//! (SJ_BENCH_TICKS, default 1000), next to the floor measured in the same run: one bare
//! consume → transactional produce → commit hop observed by a read_committed consumer.
//! A one-chunk run applied in its tick's transaction (`processor.inline_one_chunk_runs`, the
//! default) is one such hop plus PostgreSQL bookkeeping; the same run through the work-items
//! topic (the setting off, measured in the same run after it) is two or three (plan, chunk,
//! seal).
//!
//! `SJ_BENCH_CSV=path` also writes every sample (series, milliseconds) as CSV, for the CDF
//! that `scripts/plots.sh` draws.
//!
//! Needs the local stack (`scripts/services.sh up`); run with `cargo bench --bench tick_latency`.

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::processor::Processor;
use scheduled_jobs::wire::internal::RunResult;
use scheduled_jobs::wire::tick::{Tick, Trigger};

const WAIT: Duration = Duration::from_secs(30);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.50), percentile(&v, 0.99));
    println!(
        "{name:<42} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    (p50, p99)
}


fn reader(s: &Settings, topic: &str) -> anyhow::Result<StreamConsumer> {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", format!("bench-reader-{}", uuid::Uuid::new_v4())).set("fetch.wait.max.ms", "5");
    let c: StreamConsumer = cfg.create()?;
    let md = c.fetch_metadata(Some(topic), WAIT)?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        // Every topic here is fresh (private prefix): read from the start, so nothing
        // produced before the assignment settles is missed.
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// The floor: one EOS hop (consume, produce in a transaction with the offsets, commit),
/// timed from the input's produce to the output's arrival under read_committed.
async fn floor(s: &Settings, n: usize) -> anyhow::Result<Vec<Duration>> {
    // Two topics the noop pipeline never touches.
    let input = s.topic(Topic::OrderCancelled);
    let output = s.topic(Topic::OrderExpirationNotification);
    let plain: FutureProducer = client_config(s, Role::Producer).create()?;
    let mut ccfg = client_config(s, Role::Consumer);
    ccfg.set("group.id", format!("bench-floor-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5");
    let hop: StreamConsumer = ccfg.create()?;
    hop.subscribe(&[&input])?;
    let mut pcfg = client_config(s, Role::Producer);
    pcfg.set("transactional.id", format!("bench-floor-{}", uuid::Uuid::new_v4())).set("linger.ms", "0");
    let txp: FutureProducer = pcfg.create()?;
    txp.init_transactions(WAIT)?;
    let out = reader(s, &output)?;
    // Let the group settle before timing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("floor-{i}");
        let t0 = Instant::now();
        plain.send(FutureRecord::to(&input).key(&key).payload("x"), WAIT).await.map_err(|(e, _)| e)?;
        let m = hop.recv().await?;
        txp.begin_transaction()?;
        txp.send(FutureRecord::to(&output).key(&key).payload("y"), WAIT).await.map_err(|(e, _)| e)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        let meta = hop.group_metadata().ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
        txp.send_offsets_to_transaction(&tpl, &meta, WAIT)?;
        txp.commit_transaction(WAIT)?;
        loop {
            let r = out.recv().await?;
            if r.key() == Some(key.as_bytes()) {
                break;
            }
        }
        lat.push(t0.elapsed());
    }
    Ok(lat)
}

/// `n` noop runs, one at a time, their fire times `days_ago` days back (each series its own
/// periods: a period already recorded would not run again).
async fn pipeline(s: &Settings, n: usize, days_ago: i64) -> anyhow::Result<Vec<Duration>> {
    let pool = scheduled_jobs::db::connect_processor(&s.postgres).await?;
    scheduled_jobs::db::migrate(&pool).await?;
    let processor = Processor::new(s.clone(), scheduled_jobs::jobs::Registry::builtin(), pool).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(processor.run(async move {
        let _ = stopped.await;
    }));
    let codec = Codec::new(s)?;
    let out = reader(s, &s.topic(Topic::RunResults))?;
    let producer: FutureProducer = client_config(s, Role::Producer).create()?;
    let mut stream = out.stream();
    let base = Utc::now() - TimeDelta::days(days_ago);
    let mut lat = Vec::with_capacity(n);
    // Warm-up: group join, schema caches, first transactions.
    for i in 0..(n + 20) {
        let tick = Tick {
            tick_id: uuid::Uuid::new_v4().to_string(),
            job: "noop".into(),
            scheduled_at: base + TimeDelta::seconds(i as i64),
            produced_at: Utc::now(),
            trigger: Trigger::Manual,
            parameters: BTreeMap::new(),
            producer: Some("bench".into()),
            schedule_version: None,
        };
        let bytes = codec.encode(&s.topic(Topic::Tick), tick.to_avro()).await?;
        let t0 = Instant::now();
        producer.send(FutureRecord::to(&s.topic(Topic::Tick)).key("noop").payload(&bytes), WAIT).await.map_err(|(e, _)| e)?;
        loop {
            let m = tokio::time::timeout(WAIT, stream.next()).await?.ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            let d = codec.decode(m.payload().unwrap_or_default()).await?;
            if RunResult::from_avro(d.value)?.tick_id == tick.tick_id {
                break;
            }
        }
        if i >= 20 {
            lat.push(t0.elapsed());
        }
    }
    let _ = stop.send(());
    handle.await??;
    Ok(lat)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SJ_BENCH_TICKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    // noop is a test job, off unless enabled (a disabled job's ticks are only recorded SKIPPED).
    let s = common::with_noop(common::isolated().await);
    println!("tick-to-committed-output latency, {n} ticks, local stack (topics prefix {})", s.topics.prefix);
    let floor = floor(&s, n.min(300)).await?;
    let lat = pipeline(&s, n, 1).await?;
    let mut through_items = s.clone();
    through_items.processor.inline_one_chunk_runs = false;
    let items = pipeline(&through_items, n, 2).await?;
    if let Ok(path) = std::env::var("SJ_BENCH_CSV") {
        let mut csv = String::from("series,ms\n");
        for (series, v) in [("floor", &floor), ("pipeline", &lat), ("work-items", &items)] {
            for d in v {
                csv.push_str(&format!("{series},{:.3}\n", d.as_secs_f64() * 1e3));
            }
        }
        std::fs::write(&path, csv)?;
        eprintln!("wrote {path}");
    }
    let (_, floor99) = summary("floor: one EOS hop (consume->txn->visible)", floor);
    let (_, p99) = summary("noop run: tick -> run result committed", lat);
    let (_, items99) = summary("same, through work items (inline off)", items);
    println!("through work items: p99 = {:.1}x the one-hop floor's p99", items99.as_secs_f64() / floor99.as_secs_f64());
    println!("p99 target < 100 ms: {}; p99 = {:.1}x the one-hop floor's p99", if p99 < Duration::from_millis(100) { "met" } else { "NOT met" }, p99.as_secs_f64() / floor99.as_secs_f64());
    Ok(())
}
