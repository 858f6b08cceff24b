//! Consumer-lag metrics that add up: two processor instances of one group, each scraped over
//! its own `/metrics`, export the group's lag per partition so that every partition is
//! exported by exactly one instance and the sum over both equals the group's real lag
//! (computed here from the group's committed offsets and the watermarks).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::metrics::{self, Endpoint};
use scheduled_jobs::runtime::processor::Processor;
use scheduled_jobs::wire::tick::Trigger;

use crate::common::{caught_up, guarded, isolated, with_noop, WAIT};
use crate::processor::{processor_on, test_db, tick};

/// (topic, partition) -> lag.
type Lags = BTreeMap<(String, i32), i64>;

/// The `scheduled_jobs_consumer_partition_lag` samples of `group` an instance exports now.
async fn exported(endpoint: &Endpoint, group: &str) -> Lags {
    let addr = endpoint.addr.expect("metrics endpoint");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("scrape").text().await.expect("metrics text");
    let mut out = Lags::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("scheduled_jobs_consumer_partition_lag{") else { continue };
        let (labels, value) = rest.split_once("} ").expect("a sample");
        let label = |name: &str| {
            labels.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}=\""))).and_then(|v| v.strip_suffix('"')).expect("label").to_string()
        };
        if label("group") == group {
            out.insert((label("topic"), label("partition").parse().expect("partition")), value.trim().parse().expect("lag"));
        }
    }
    out
}

/// The group's real lag on every partition of `topics`, from its committed offsets and the
/// watermarks (read_committed reader: the same end the processor reads to).
fn real_lag(s: &Settings, topics: &[String]) -> Lags {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", &s.processor.group_id).set("isolation.level", "read_committed");
    let c: BaseConsumer = cfg.create().expect("consumer");
    let mut out = Lags::new();
    for topic in topics {
        let md = c.fetch_metadata(Some(topic), WAIT).expect("metadata");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition(topic, p.id());
        }
        for e in c.committed_offsets(tpl, WAIT).expect("committed offsets").elements() {
            let (low, high) = c.fetch_watermarks(topic, e.partition(), WAIT).expect("watermarks");
            let from = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => low,
            };
            out.insert((topic.clone(), e.partition()), high - from);
        }
    }
    out
}

/// What two instances export, checked: no partition exported twice, and together every
/// partition of `all`; the reason while that does not hold.
fn combined(one: &Lags, two: &Lags, all: &Lags) -> Result<Lags, String> {
    let twice: Vec<_> = one.keys().filter(|k| two.contains_key(*k)).collect();
    if !twice.is_empty() {
        return Err(format!("exported by both instances: {twice:?}"));
    }
    let both: Lags = one.iter().chain(two.iter()).map(|(k, v)| (k.clone(), *v)).collect();
    let missing: Vec<_> = all.keys().filter(|k| !both.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(format!("exported by neither: {missing:?}"));
    }
    Ok(both)
}

/// [`real_lag`] off the async workers.
async fn real_lag_now(s: &Settings, topics: &[String; 2]) -> Lags {
    let (s, topics) = (s.clone(), topics.clone());
    tokio::task::spawn_blocking(move || real_lag(&s, &topics)).await.expect("real lag")
}

/// Waits (up to 30 s: the watchers measure every second) until the two instances together
/// export exactly `real`, each partition once.
async fn exports_add_up(e1: &Endpoint, e2: &Endpoint, group: &str, all: &Lags, real: &Lags, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (one, two) = (exported(e1, group).await, exported(e2, group).await);
        let why = match combined(&one, &two, all) {
            Ok(both) if both == *real => return,
            Ok(both) => format!("exported {both:?} (one {one:?}, two {two:?})"),
            Err(why) => why,
        };
        assert!(Instant::now() < deadline, "{when}: {why}; real lag {real:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sum(lags: &Lags, topic: &str) -> i64 {
    lags.iter().filter(|((t, _), _)| t == topic).map(|(_, v)| v).sum()
}

/// Steps `processors` in turn (polling is what moves partitions between them) until `check`
/// passes; fails with its last complaint after 60 s.
async fn step_until<F, Fut>(processors: &mut [&mut Processor], mut check: F) -> Lags
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Lags, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for p in processors.iter_mut() {
            p.step(Duration::from_millis(200)).await.expect("step");
        }
        match check().await {
            Ok(lags) => return lags,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
    }
}

// Multi-threaded like the real binary: the lag watchers' blocking look-ups run beside the polls.
#[test]
fn lag_exported_by_two_instances_adds_up_to_the_group_lag() {
    guarded("lag_exported_by_two_instances_adds_up_to_the_group_lag", Duration::from_secs(300), 4, two_instances());
}

async fn two_instances() {
    let s = with_noop(isolated().await);
    let group = s.processor.group_id.clone();
    let inputs = [s.topic(Topic::Tick), s.topic(Topic::WorkItems)];
    let member = |id: &str| {
        let mut m = s.clone();
        m.processor.instance_id = id.into();
        m.metrics.listen = "127.0.0.1:0".into();
        m.metrics.lag_interval_secs = 1;
        m
    };
    let (s1, s2) = (member("one"), member("two"));
    let pool = test_db(&s).await;
    let all = real_lag_now(&s, &inputs).await;

    // Alone, the first instance holds (and exports) every partition of both inputs.
    let mut p1 = processor_on(&s1, pool.clone()).await;
    let e1 = metrics::start(&s1, &p1.metrics(), true).await.expect("endpoint one");
    step_until(&mut [&mut p1], || async {
        let one = exported(&e1, &group).await;
        combined(&one, &Lags::new(), &all)
    })
    .await;

    // The second joins: the first must stop exporting what it lost.
    let mut p2 = processor_on(&s2, pool.clone()).await;
    let e2 = metrics::start(&s2, &p2.metrics(), true).await.expect("endpoint two");
    step_until(&mut [&mut p1, &mut p2], || async {
        let (one, two) = (exported(&e1, &group).await, exported(&e2, &group).await);
        if one.is_empty() || two.is_empty() {
            return Err(format!("not shared yet: one {one:?}, two {two:?}"));
        }
        combined(&one, &two, &all)
    })
    .await;

    // Processing paused (nobody steps; the members stay in the group): ticks wait unread,
    // each on its own key so they spread over the partitions.
    const N: i64 = 9;
    let codec = Codec::new(&s).expect("codec");
    let producer: FutureProducer = client_config(&s, Role::Producer).create().expect("producer");
    for i in 0..N {
        let mut t = tick("noop", Utc::now() - TimeDelta::minutes(i + 1), &[("chunks", "2")]);
        t.trigger = Trigger::Manual;
        t.tick_id = uuid::Uuid::new_v4().to_string();
        let bytes = codec.encode(&inputs[0], t.to_avro()).await.expect("encode");
        producer.send(FutureRecord::to(&inputs[0]).key(&format!("noop-{i}")).payload(&bytes), WAIT).await.expect("publish");
    }
    let real = real_lag_now(&s, &inputs).await;
    assert_eq!(sum(&real, &inputs[0]), N, "the group's real lag: {real:?}");
    assert!(real.iter().filter(|(_, v)| **v > 0).count() > 1, "ticks on several partitions: {real:?}");
    exports_add_up(&e1, &e2, &group, &all, &real, "processing paused").await;

    // Processing resumes until the group has consumed everything (work items and their
    // commit markers included): the sum still equals the real lag, per partition.
    let run = |p: Processor| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, tokio::spawn(p.run(async move {
            let _ = rx.await;
        })))
    };
    let ((stop1, h1), (stop2, h2)) = (run(p1), run(p2));
    caught_up(&s, &group, &[Topic::Tick, Topic::WorkItems]).await;
    let real = real_lag_now(&s, &inputs).await;
    exports_add_up(&e1, &e2, &group, &all, &real, "after processing").await;
    for (stop, h) in [(stop1, h1), (stop2, h2)] {
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(90), h).await.expect("processor stops").expect("join").expect("processor");
    }
}
