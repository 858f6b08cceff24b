//! The tick producer against the real broker and registry: scheduled ticks with deterministic
//! ids, catch-up learned from the tick topic after downtime, two producers side by side (E4
//! input side), daily jobs across DST in Berlin and New York, manual triggers. The producer is
//! driven step by step with explicit `now` values: nothing sleeps on a wall-clock schedule.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rdkafka::producer::{FutureProducer, FutureRecord};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{CatchUp, Settings, Topic};
use scheduled_jobs::kafka::{client_config, KafkaClientError, Role};
use scheduled_jobs::runtime::tick::{trigger, TickError, TickProducer};
use scheduled_jobs::wire::tick::{Tick, Trigger};

use crate::common::{isolated, read_all, settings, unique, with_noop};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Private topics with only `key` enabled, on `schedule` with the given catch-up policy.
async fn only(key: &str, schedule: &str, catch_up: CatchUp, max_catch_up: u32) -> Settings {
    let mut s = isolated().await;
    for job in s.jobs.values_mut() {
        job.enabled = false;
    }
    let job = s.jobs.get_mut(key).expect("configured job");
    job.enabled = true;
    job.schedule = schedule.into();
    job.catch_up = catch_up;
    job.max_catch_up = max_catch_up;
    s
}

/// Every tick on the tick topic as (partition, key, tick), in offset order per partition.
async fn ticks_on_topic(s: &Settings) -> Vec<(i32, String, Tick)> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (partition, key, payload) in read_all(s, &s.topic(Topic::Tick), "read_committed") {
        let Ok(decoded) = codec.decode(&payload.unwrap()).await else { continue };
        let key = String::from_utf8(key.unwrap()).unwrap();
        out.push((partition, key, Tick::from_avro(decoded.value).unwrap()));
    }
    out
}

fn scheduled_at(ticks: &[Tick]) -> Vec<DateTime<Utc>> {
    ticks.iter().map(|t| t.scheduled_at).collect()
}

/// Issue 16 item 5: the `noop` test job is not scheduled by a default configuration, even
/// given a schedule; enabled, it is.
#[tokio::test]
async fn the_noop_test_job_is_scheduled_only_when_enabled() {
    let mut s = isolated().await;
    s.jobs.get_mut("noop").unwrap().schedule = "* * * * * *".into();
    let jobs = TickProducer::new(&s).await.unwrap().jobs().iter().map(|j| j.to_string()).collect::<Vec<_>>();
    assert!(!jobs.contains(&"noop".to_string()) && jobs.contains(&"stock-sync".to_string()), "{jobs:?}");
    let s = with_noop(s);
    let jobs = TickProducer::new(&s).await.unwrap().jobs().iter().map(|j| j.to_string()).collect::<Vec<_>>();
    assert!(jobs.contains(&"noop".to_string()), "{jobs:?}");
}

#[tokio::test]
async fn publish_due_publishes_each_fire_time_once_with_deterministic_ids_keyed_by_job() {
    let s = only("order_expiration", "*/2 * * * * *", CatchUp::Latest, 1).await;
    let t0 = utc("2026-11-25T10:00:00Z");
    let mut p = TickProducer::new(&s).await.unwrap();
    assert_eq!(p.jobs(), vec!["order-expiration"]);
    assert!(p.publish_due(t0).await.is_err_and(|e| matches!(e, TickError::NotStarted)));
    assert!(p.start(t0).await.unwrap().is_empty(), "first ever start: no history, no catch-up");
    assert_eq!(p.next_due(), Some(utc("2026-11-25T10:00:02Z")));

    let first = p.publish_due(utc("2026-11-25T10:00:07Z")).await.unwrap();
    let expected = [utc("2026-11-25T10:00:02Z"), utc("2026-11-25T10:00:04Z"), utc("2026-11-25T10:00:06Z")];
    assert_eq!(scheduled_at(&first), expected);
    for t in &first {
        assert_eq!(t.job, "order-expiration");
        assert_eq!(t.trigger, Trigger::Scheduled);
        assert_eq!(t.tick_id, Tick::scheduled_id("order-expiration", t.scheduled_at));
        assert_eq!(t.produced_at, utc("2026-11-25T10:00:07Z"));
    }
    assert!(p.publish_due(utc("2026-11-25T10:00:07Z")).await.unwrap().is_empty(), "same now: nothing new");
    let second = p.publish_due(utc("2026-11-25T10:00:08Z")).await.unwrap();
    assert_eq!(scheduled_at(&second), [utc("2026-11-25T10:00:08Z")]);

    let on_topic = ticks_on_topic(&s).await;
    let published: Vec<Tick> = first.into_iter().chain(second).collect();
    assert_eq!(on_topic.iter().map(|(_, _, t)| t.clone()).collect::<Vec<_>>(), published);
    assert!(on_topic.iter().all(|(_, key, _)| key == "order-expiration"));
    assert!(on_topic.iter().all(|(p, _, _)| *p == on_topic[0].0), "one job's ticks stay on one partition");
}

#[tokio::test]
async fn restart_after_downtime_catches_up_only_the_latest_missed_fire_time() {
    let s = only("order_expiration", "0 */10 * * * *", CatchUp::Latest, 1).await;
    let mut a = TickProducer::new(&s).await.unwrap();
    a.start(utc("2026-11-25T09:55:00Z")).await.unwrap();
    assert_eq!(scheduled_at(&a.publish_due(utc("2026-11-25T10:00:00Z")).await.unwrap()), [utc("2026-11-25T10:00:00Z")]);
    drop(a);

    // Down for five intervals (10:10 … 10:50 missed); B learns where A stopped from Kafka.
    let mut b = TickProducer::new(&s).await.unwrap();
    let now = utc("2026-11-25T10:53:00Z");
    assert_eq!(
        b.last_fire_times(now).await.unwrap(),
        BTreeMap::from([("order-expiration".to_string(), utc("2026-11-25T10:00:00Z"))])
    );
    let caught = b.start(now).await.unwrap();
    assert_eq!(caught.len(), 1, "{caught:?}");
    assert_eq!(caught[0].trigger, Trigger::CatchUp);
    assert_eq!(caught[0].scheduled_at, utc("2026-11-25T10:50:00Z"));
    assert_eq!(caught[0].tick_id, Tick::scheduled_id("order-expiration", utc("2026-11-25T10:50:00Z")));
    assert_eq!(b.next_due(), Some(utc("2026-11-25T11:00:00Z")));
    assert_eq!(scheduled_at(&b.publish_due(utc("2026-11-25T11:00:00Z")).await.unwrap()), [utc("2026-11-25T11:00:00Z")]);

    let on_topic: Vec<(DateTime<Utc>, Trigger)> =
        ticks_on_topic(&s).await.into_iter().map(|(_, _, t)| (t.scheduled_at, t.trigger)).collect();
    assert_eq!(
        on_topic,
        [
            (utc("2026-11-25T10:00:00Z"), Trigger::Scheduled),
            (utc("2026-11-25T10:50:00Z"), Trigger::CatchUp),
            (utc("2026-11-25T11:00:00Z"), Trigger::Scheduled),
        ]
    );
}

/// A daily job published up to midnight of Nov 21, then down for three midnights.
async fn daily_catch_up(max_catch_up: u32) -> Vec<Tick> {
    let mut s = only("daily_statistics", "0 0 0 * * *", CatchUp::All, max_catch_up).await;
    // Named: this test is about catch-up and writes its midnights in UTC (the default zone is
    // the seed's, Asia/Seoul).
    s.scheduler.time_zone = "UTC".into();
    let mut a = TickProducer::new(&s).await.unwrap();
    a.start(utc("2026-11-20T23:00:00Z")).await.unwrap();
    assert_eq!(a.publish_due(utc("2026-11-21T00:00:30Z")).await.unwrap().len(), 1);
    drop(a);
    let mut b = TickProducer::new(&s).await.unwrap();
    let caught = b.start(utc("2026-11-24T01:00:00Z")).await.unwrap();
    assert!(caught.iter().all(|t| t.trigger == Trigger::CatchUp && t.job == "daily-statistics"), "{caught:?}");
    let on_topic: Vec<Tick> = ticks_on_topic(&s).await.into_iter().map(|(_, _, t)| t).skip(1).collect();
    assert_eq!(on_topic, caught, "published in date order");
    caught
}

#[tokio::test]
async fn daily_job_with_all_policy_catches_up_every_missed_midnight_in_date_order() {
    let caught = daily_catch_up(7).await;
    assert_eq!(
        scheduled_at(&caught),
        [utc("2026-11-22T00:00:00Z"), utc("2026-11-23T00:00:00Z"), utc("2026-11-24T00:00:00Z")]
    );
}

#[tokio::test]
async fn daily_catch_up_is_bounded_by_max_catch_up_keeping_the_most_recent() {
    let caught = daily_catch_up(2).await;
    assert_eq!(scheduled_at(&caught), [utc("2026-11-23T00:00:00Z"), utc("2026-11-24T00:00:00Z")]);
}

#[tokio::test]
async fn history_scan_crosses_windows_skipping_garbage_and_manual_ticks() {
    let s = only("order_expiration", "0 */10 * * * *", CatchUp::Latest, 1).await;
    let mut a = TickProducer::new(&s).await.unwrap();
    a.start(utc("2026-11-25T09:55:00Z")).await.unwrap();
    a.publish_due(utc("2026-11-25T10:00:00Z")).await.unwrap();
    drop(a);
    // 450 undecodable records on the job's partition (same key) bury its last tick more than
    // two history windows deep, and a manual tick on top is not schedule history.
    let topic = s.topic(Topic::Tick);
    let raw: FutureProducer = client_config(&s, Role::Producer).set("partitioner", "murmur2_random").create().unwrap();
    let sends = (0..450).map(|i| {
        let payload = format!("garbage {i}");
        let raw = &raw;
        let topic = &topic;
        async move {
            raw.send(FutureRecord::to(topic).key("order-expiration").payload(&payload), None)
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    trigger(&s, "order-expiration", Some(utc("2026-11-25T12:00:00Z")), BTreeMap::new()).await.unwrap();
    let records = read_all(&s, &topic, "read_committed");
    assert_eq!(records.len(), 452);
    assert!(records.iter().all(|(p, _, _)| *p == records[0].0), "one partition, so the scan must cross windows");

    let mut b = TickProducer::new(&s).await.unwrap();
    let caught = b.start(utc("2026-11-25T10:33:00Z")).await.unwrap();
    assert_eq!(scheduled_at(&caught), [utc("2026-11-25T10:30:00Z")]);
}

#[tokio::test]
async fn two_producers_side_by_side_publish_identical_tick_ids() {
    let s = only("order_expiration", "*/2 * * * * *", CatchUp::Latest, 1).await;
    let t0 = utc("2026-11-25T10:00:00Z");
    let (mut a, mut b) = (TickProducer::new(&s).await.unwrap(), TickProducer::new(&s).await.unwrap());
    a.start(t0).await.unwrap();
    b.start(t0).await.unwrap();
    let now = utc("2026-11-25T10:00:10Z");
    let ids = |ticks: Vec<Tick>| ticks.into_iter().map(|t| t.tick_id).collect::<Vec<_>>();
    let from_a = ids(a.publish_due(now).await.unwrap());
    let from_b = ids(b.publish_due(now).await.unwrap());
    assert_eq!(from_a.len(), 5);
    assert_eq!(from_a, from_b);
    let mut on_topic: Vec<String> = ticks_on_topic(&s).await.into_iter().map(|(_, _, t)| t.tick_id).collect();
    assert_eq!(on_topic.len(), 10, "both producers published");
    on_topic.sort();
    on_topic.dedup();
    assert_eq!(on_topic.len(), 5, "but only five distinct ids: the processor runs each once");
}

/// A daily `0 30 2 * * *` job driven hour by hour from three days before to three days after
/// a DST transition publishes exactly one tick per local day.
async fn one_tick_per_local_day(zone: &str, transition: (i32, u32, u32)) {
    let mut s = only("stock_sync", "0 30 2 * * *", CatchUp::Latest, 1).await;
    s.scheduler.time_zone = zone.into();
    let tz: Tz = zone.parse().unwrap();
    let day = NaiveDate::from_ymd_opt(transition.0, transition.1, transition.2).unwrap();
    let noon = |d: NaiveDate| tz.from_local_datetime(&d.and_hms_opt(12, 0, 0).unwrap()).unwrap().with_timezone(&Utc);
    let (from, until) = (noon(day - chrono::Days::new(3)), noon(day + chrono::Days::new(3)));
    let mut p = TickProducer::new(&s).await.unwrap();
    p.start(from).await.unwrap();
    let mut ticks = Vec::new();
    let mut now = from;
    while now < until {
        now += chrono::TimeDelta::hours(1);
        ticks.extend(p.publish_due(now).await.unwrap());
    }
    let local: Vec<_> = ticks.iter().map(|t| t.scheduled_at.with_timezone(&tz)).collect();
    let dates: Vec<NaiveDate> = local.iter().map(|t| t.date_naive()).collect();
    let expected: Vec<NaiveDate> = (0..6).map(|i| day - chrono::Days::new(2) + chrono::Days::new(i)).collect();
    assert_eq!(dates, expected, "{zone}: one tick per local day: {local:?}");
    for t in &local {
        let hm = t.format("%H:%M").to_string();
        // 02:30 does not exist on the spring-forward day: it runs at the first instant after the gap.
        assert!(hm == "02:30" || (t.date_naive() == day && hm == "03:00"), "{zone}: {t}");
    }
    let on_topic = ticks_on_topic(&s).await;
    assert_eq!(on_topic.len(), 6, "{zone}");
}

#[tokio::test]
async fn daily_job_fires_once_per_local_day_across_spring_forward_in_berlin() {
    one_tick_per_local_day("Europe/Berlin", (2026, 3, 29)).await;
}

#[tokio::test]
async fn daily_job_fires_once_per_local_day_across_fall_back_in_berlin() {
    one_tick_per_local_day("Europe/Berlin", (2026, 10, 25)).await;
}

#[tokio::test]
async fn daily_job_fires_once_per_local_day_across_spring_forward_in_new_york() {
    one_tick_per_local_day("America/New_York", (2026, 3, 8)).await;
}

#[tokio::test]
async fn daily_job_fires_once_per_local_day_across_fall_back_in_new_york() {
    one_tick_per_local_day("America/New_York", (2026, 11, 1)).await;
}

#[tokio::test]
async fn trigger_publishes_a_manual_tick_with_its_parameters() {
    let s = isolated().await;
    let at = utc("2026-11-24T00:00:00Z");
    let params = BTreeMap::from([("date".to_string(), "2026-11-23".to_string())]);
    let tick = trigger(&s, "daily-statistics", Some(at), params.clone()).await.unwrap();
    assert_eq!((tick.job.as_str(), tick.trigger, tick.scheduled_at), ("daily-statistics", Trigger::Manual, at));
    assert_eq!(tick.parameters, params);
    assert_eq!(
        uuid::Uuid::parse_str(&tick.tick_id).unwrap().get_version_num(),
        4,
        "a manual trigger is a distinct request"
    );
    let again = trigger(&s, "daily_statistics", Some(at), BTreeMap::new()).await.unwrap();
    assert_eq!(again.job, "daily-statistics", "config keys are accepted, the wire name has dashes");
    assert_ne!(again.tick_id, tick.tick_id);

    let on_topic = ticks_on_topic(&s).await;
    assert_eq!(on_topic.len(), 2);
    assert_eq!(on_topic[0].1, "daily-statistics");
    assert_eq!(on_topic[0].2, tick, "the returned tick is what was published");
}

#[tokio::test]
async fn trigger_refuses_an_unknown_job_naming_it_and_the_known_ones() {
    let s = settings();
    let err = trigger(&s, "order-expirations", None, BTreeMap::new()).await.unwrap_err();
    assert!(matches!(err, TickError::UnknownJob { .. }), "{err:?}");
    let msg = err.to_string();
    for name in ["`order-expirations`", "order-expiration,", "stock-sync", "daily-statistics"] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(!msg.contains("noop"), "the noop test job is not listed while it is off: {msg}");
}

#[tokio::test]
async fn run_producer_publishes_on_the_wall_clock_and_stops_on_shutdown() {
    // The one test on the real clock: loose bounds, it checks the loop, not the schedule.
    let mut s = only("noop", "* * * * * *", CatchUp::Latest, 1).await;
    s.scheduler.producer_id = "tick-loop-test".into();
    let started = Utc::now();
    // The sleep is the shutdown signal: the span of wall clock under test, not a wait.
    scheduled_jobs::runtime::tick::run_producer(&s, &scheduled_jobs::runtime::metrics::Metrics::new(), tokio::time::sleep(std::time::Duration::from_millis(3500))).await.unwrap();
    let ticks: Vec<Tick> = ticks_on_topic(&s).await.into_iter().map(|(_, _, t)| t).collect();
    assert!(!ticks.is_empty() && ticks.len() <= 4, "{ticks:?}");
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(
            (t.job.as_str(), t.trigger, t.producer.as_deref()),
            ("noop", Trigger::Scheduled, Some("tick-loop-test"))
        );
        assert!(t.scheduled_at > started && t.produced_at >= t.scheduled_at, "{t:?}");
        if i > 0 {
            assert_eq!(
                t.scheduled_at - ticks[i - 1].scheduled_at,
                chrono::TimeDelta::seconds(1),
                "no fire time skipped or doubled"
            );
        }
    }
}

#[tokio::test]
async fn run_producer_ends_with_an_error_when_the_tick_topic_is_missing() {
    let mut s = settings();
    s.topics.prefix = format!("{}.", unique("missing"));
    // Retried for the start-up grace (a restarting broker reports existing topics unknown),
    // then the error that names the fix.
    s.kafka.missing_topic_grace_secs = 2;
    let started = std::time::Instant::now();
    let metrics = scheduled_jobs::runtime::metrics::Metrics::new();
    let err = scheduled_jobs::runtime::tick::run_producer(&s, &metrics, std::future::pending()).await.unwrap_err();
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "gave up after {:?}", started.elapsed());
    assert!(matches!(err, TickError::Kafka(KafkaClientError::NoSuchTopic { .. })), "{err:?}");
    assert!(metrics.readiness().is_err(), "a producer that never started is not ready");
    assert!(err.to_string().contains("topics apply"), "{err}");
}

/// Issue 19 item 6: with `jitter_secs`, each fire time's tick is published its own
/// deterministic delay after the fire time (the same for two producers side by side), and the
/// tick keeps its fire time, hence its id and period.
#[tokio::test]
async fn a_jittered_fire_time_is_published_late_by_the_same_delay_on_every_producer() {
    let mut s = only("order_expiration", "0 */10 * * * *", CatchUp::Latest, 1).await;
    s.jobs.get_mut("order_expiration").unwrap().jitter_secs = 120;
    let t0 = utc("2026-11-30T10:01:00Z");
    let fire = utc("2026-11-30T10:10:00Z");
    let delay = scheduled_jobs::runtime::tick::jitter("order-expiration", fire, chrono::TimeDelta::seconds(120));
    let (mut a, mut b) = (TickProducer::new(&s).await.unwrap(), TickProducer::new(&s).await.unwrap());
    a.start(t0).await.unwrap();
    b.start(t0).await.unwrap();
    assert_eq!(a.next_due(), Some(fire + delay));
    assert_eq!(b.next_due(), a.next_due(), "redundant producers agree");
    if delay > chrono::TimeDelta::zero() {
        assert!(a.publish_due(fire).await.unwrap().is_empty(), "not before its delay");
        assert!(a.publish_due(fire + delay - chrono::TimeDelta::milliseconds(1)).await.unwrap().is_empty());
    }
    let ta = a.publish_due(fire + delay).await.unwrap();
    let tb = b.publish_due(fire + delay).await.unwrap();
    assert_eq!(scheduled_at(&ta), vec![fire], "the tick keeps its fire time");
    assert_eq!(ta[0].tick_id, tb[0].tick_id, "the same tick id from both: one run");
    // Set below missed_after_secs, or the configuration is refused.
    s.jobs.get_mut("order_expiration").unwrap().jitter_secs = 300;
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("jobs.order_expiration.jitter_secs") && e.contains("missed_after_secs"), "{e}");
}
