//! The exactly-once pipeline on the real stack, with the trivial `noop` test job (enabled
//! explicitly, as a configuration must): duplicate ticks
//! (E4), replay from offset 0 (E3), dead letters (E6), timeouts, coalescing, and two
//! processors with partitions moving between them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::Registry;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::runtime::processor::{Processor, Step};
use scheduled_jobs::wire::internal::{Outcome, RunResult, WorkItem};
use scheduled_jobs::wire::tick::{Tick, Trigger};

use crate::common::{minutes_ago, caught_up, fresh_db, group_has_members, guarded, handled_and_committed, isolated, read_all, settled, with_noop, WAIT};

pub fn tick(job: &str, at: DateTime<Utc>, params: &[(&str, &str)]) -> Tick {
    let mut t = Tick::for_fire_time(job, at, Trigger::Scheduled, Some("test".into()));
    t.parameters = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    t
}

pub async fn publish_raw(s: &Settings, key: &str, bytes: &[u8]) {
    let producer: FutureProducer = client_config(s, Role::Producer).create().unwrap();
    producer.send(FutureRecord::to(&s.topic(Topic::Tick)).key(key).payload(bytes), WAIT).await.unwrap();
}

pub async fn publish(s: &Settings, ticks: &[Tick]) {
    let codec = Codec::new(s).unwrap();
    for t in ticks {
        let bytes = codec.encode(&s.topic(Topic::Tick), t.to_avro()).await.unwrap();
        publish_raw(s, &t.job, &bytes).await;
    }
}

/// A fresh, migrated database for one test.
pub async fn test_db(s: &Settings) -> sqlx::PgPool {
    let (pool, _) = fresh_db(s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    pool
}

/// A processor on `pool` with the built-in jobs.
pub async fn processor_on(s: &Settings, pool: sqlx::PgPool) -> Processor {
    Processor::new(s.clone(), Registry::builtin(), pool).await.unwrap()
}

pub async fn processor(s: &Settings) -> Processor {
    let pool = test_db(s).await;
    processor_on(s, pool).await
}

/// Steps until `idle_rounds` consecutive idle steps (after at least one handled record).
pub async fn drive(p: &mut Processor, idle_rounds: usize) -> usize {
    let mut handled = 0;
    let mut idle = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while idle < idle_rounds || handled == 0 {
        assert!(Instant::now() < deadline, "processor did not settle");
        match p.step(Duration::from_millis(300)).await.unwrap() {
            Step::Idle => idle += 1,
            Step::Handled(n) => {
                handled += n;
                idle = 0;
            }
            Step::Reset(why) => panic!("unexpected reset: {why}"),
        }
    }
    handled
}

pub async fn results(s: &Settings) -> Vec<RunResult> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, _, v) in read_all(s, &s.topic(Topic::RunResults), "read_committed") {
        let d = codec.decode(&v.unwrap()).await.unwrap();
        out.push(RunResult::from_avro(d.value).unwrap());
    }
    out
}

fn count(s: &Settings, topic: Topic) -> usize {
    read_all(s, &s.topic(topic), "read_committed").len()
}

#[tokio::test]
async fn a_tick_runs_once_end_to_end_and_duplicates_collapse() {
    let s = with_noop(isolated().await);
    let t = tick("noop", minutes_ago(3), &[("chunks", "3")]);
    // E4: the same fire time from two producers.
    let mut twin = t.clone();
    twin.producer = Some("producer-b".into());
    publish(&s, &[t.clone(), twin]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded);
    assert_eq!(r[0].tick_id, t.tick_id);
    assert_eq!(r[0].counts.get("items"), Some(&3));
    assert_eq!(r[0].counts.get("chunks"), Some(&3));
    assert_eq!(count(&s, Topic::WorkItems), 4, "three chunks and the seal");
    assert_eq!(count(&s, Topic::DeadLetters), 0);

    // A second, identical tick later on: still one run.
    publish(&s, &[t.clone()]).await;
    drive(&mut p, 2).await;
    assert_eq!(results(&s).await.len(), 1);
}

/// A run planned as one chunk is applied in its tick's transaction: its result and ledger
/// entries come with the tick's offset and no work item is written. With
/// `processor.inline_one_chunk_runs = false` the same run goes through the work-items topic
/// (its chunk and the seal).
#[tokio::test]
async fn a_one_chunk_run_is_applied_in_its_ticks_transaction_unless_turned_off() {
    for (inline, items) in [(true, 0), (false, 2)] {
        let mut s = with_noop(isolated().await);
        s.processor.inline_one_chunk_runs = inline;
        let t = tick("noop", minutes_ago(2), &[("chunks", "1")]);
        publish(&s, &[t.clone()]).await;
        let pool = test_db(&s).await;
        let mut p = processor_on(&s, pool.clone()).await;
        drive(&mut p, 3).await;
        let r = results(&s).await;
        assert_eq!(r.len(), 1, "inline {inline}: {r:#?}");
        assert_eq!((r[0].outcome, r[0].counts.get("chunks")), (Outcome::Succeeded, Some(&1)), "inline {inline}: {r:#?}");
        assert_eq!(count(&s, Topic::WorkItems), items, "inline {inline}");
        let recorded: Option<bool> = sqlx::query_scalar("SELECT inline_item IS NOT NULL FROM job_runs WHERE run_id = $1")
            .bind(&r[0].run_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        assert_eq!(recorded, Some(inline), "the run's chunk is kept in job_runs only when applied inline");
        // A duplicate of the tick changes nothing either way.
        publish(&s, &[t]).await;
        drive(&mut p, 1).await;
        assert_eq!(results(&s).await.len(), 1, "inline {inline}");
    }
}

/// Resets `group` to offset 0 on every partition of `topic` (no member may be active).
pub fn reset_group(s: &Settings, group: &str, topic: &str) {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", group);
    let c: BaseConsumer = cfg.create().unwrap();
    let md = c.fetch_metadata(Some(topic), WAIT).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(0)).unwrap();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reset not yet possible: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("reset {group}: {e}"),
        }
    }
}

#[tokio::test]
async fn replaying_the_tick_topic_from_offset_zero_changes_nothing() {
    let s = with_noop(isolated().await);
    publish(&s, &[tick("noop", minutes_ago(30), &[("chunks", "2")]), tick("noop", minutes_ago(20), &[]), tick("noop", minutes_ago(10), &[("chunks", "0")])]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    drop(p);
    let before = (results(&s).await.len(), count(&s, Topic::WorkItems), count(&s, Topic::RunLedger), count(&s, Topic::DeadLetters));
    assert!(before.0 >= 1, "{before:?}");

    reset_group(&s, &s.processor.group_id, &s.topic(Topic::Tick));
    let mut p = processor(&s).await;
    let handled = drive(&mut p, 3).await;
    assert!(handled >= 3, "the ticks were consumed again ({handled})");
    let after = (results(&s).await.len(), count(&s, Topic::WorkItems), count(&s, Topic::RunLedger), count(&s, Topic::DeadLetters));
    assert_eq!(before, after, "(results, work items, ledger, dead letters) before vs after replay");
}

#[tokio::test]
async fn bad_ticks_go_to_dead_letters_and_processing_continues() {
    let s = with_noop(isolated().await);
    let codec = Codec::new(&s).unwrap();
    let garbage = b"\x00\x00\x00garbage that is not avro".to_vec();
    publish_raw(&s, "garbage", &garbage).await;
    publish(&s, &[tick("no-such-job", minutes_ago(1), &[])]).await;
    // A record of another schema (a run result) on the tick topic.
    let other = RunResult {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_timestamp: Utc::now(),
        run_id: "r".into(),
        job: "noop".into(),
        period: "p".into(),
        tick_id: "t".into(),
        trigger: "SCHEDULED".into(),
        outcome: Outcome::Succeeded,
        counts: BTreeMap::new(),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        duration_ms: 0,
        message: None,
        time_zone: "UTC".into(),
    };
    let wrong = codec.encode(&s.topic(Topic::RunResults), other.to_avro()).await.unwrap();
    publish_raw(&s, "noop", &wrong).await;
    publish(&s, &[tick("noop", Utc::now() + TimeDelta::days(400), &[])]).await;
    publish(&s, &[tick("noop", minutes_ago(2), &[("chunks", "not-a-number")])]).await;
    publish(&s, &[tick("noop", minutes_ago(1), &[])]).await;

    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let letters = read_all(&s, &s.topic(Topic::DeadLetters), "read_committed");
    let mut reasons = Vec::new();
    for (_, _, v) in &letters {
        let d = codec.decode(v.as_deref().unwrap()).await.unwrap();
        let json = scheduled_jobs::wire::avro::to_json(&d.value, &d.schema);
        reasons.push((json["reasonCode"].as_str().unwrap().to_string(), json["reason"].as_str().unwrap().to_string(), json["originalValue"].clone()));
    }
    // Bad ticks sit on different partitions (different keys), so compare without order.
    let mut codes: Vec<&str> = reasons.iter().map(|r| r.0.as_str()).collect();
    codes.sort();
    assert_eq!(codes, vec!["IMPOSSIBLE_VALUE", "IMPOSSIBLE_VALUE", "UNDECODABLE", "UNKNOWN_JOB", "WRONG_SCHEMA"], "{reasons:#?}");
    let reason = |code: &str, needle: &str| {
        assert!(reasons.iter().any(|r| r.0 == code && r.1.contains(needle)), "no {code} mentioning `{needle}`: {reasons:#?}")
    };
    reason("UNKNOWN_JOB", "no-such-job");
    reason("IMPOSSIBLE_VALUE", "future");
    reason("IMPOSSIBLE_VALUE", "chunks");
    reason("WRONG_SCHEMA", "RunResult");
    let hex: String = garbage.iter().map(|b| format!("{b:02x}")).collect();
    let undecodable = reasons.iter().find(|r| r.0 == "UNDECODABLE").unwrap();
    assert_eq!(undecodable.2, serde_json::json!(hex), "original bytes kept");
    // The line kept moving: the valid tick after the bad ones ran.
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded);
}

/// Issue 16 item 5: a noop tick reaching a processor whose configuration leaves the test job
/// off runs nothing: it is recorded SKIPPED, naming the setting that would enable it.
#[tokio::test]
async fn a_noop_tick_is_skipped_while_the_test_job_is_off() {
    let s = isolated().await;
    publish(&s, &[tick("noop", minutes_ago(2), &[("chunks", "2")])]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome, Outcome::Skipped);
    assert!(r[0].message.as_deref().unwrap_or_default().contains("`jobs.noop.enabled` is false"), "{r:?}");
    assert_eq!(count(&s, Topic::WorkItems), 0, "nothing planned");
}

/// Issue 16 item 5: a dead letter keeps the original record's headers — text as it is, and
/// a value that is not UTF-8 in base64, so no header is lost — and its key.
#[tokio::test]
async fn a_malformed_tick_keeps_its_headers_in_dead_letters() {
    use rdkafka::message::{Header, OwnedHeaders};
    let s = isolated().await;
    let binary: &[u8] = &[0xff, 0xfe, 0x00, 0x80];
    let headers = OwnedHeaders::new()
        .insert(Header { key: "traceparent", value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") })
        .insert(Header { key: "source", value: Some("order-service") })
        .insert(Header { key: "binary", value: Some(binary) })
        .insert(Header { key: "source", value: Some("retry-relay") });
    let producer: FutureProducer = client_config(&s, Role::Producer).create().unwrap();
    let topic = s.topic(Topic::Tick);
    let record = FutureRecord::to(&topic).key("stock-sync").payload(b"\x00not avro at all").headers(headers);
    producer.send(record, WAIT).await.unwrap();

    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let letters = read_all(&s, &s.topic(Topic::DeadLetters), "read_committed");
    assert_eq!(letters.len(), 1);
    let codec = Codec::new(&s).unwrap();
    let (_, key, value) = &letters[0];
    assert_eq!(key.as_deref(), Some(&b"stock-sync"[..]));
    let d = codec.decode(value.as_deref().unwrap()).await.unwrap();
    let json = scheduled_jobs::wire::avro::to_json(&d.value, &d.schema);
    assert_eq!(json["reasonCode"], "UNDECODABLE");
    let kept: BTreeMap<String, String> = serde_json::from_value(json["headers"].clone()).unwrap();
    assert_eq!(
        kept,
        BTreeMap::from([
            ("traceparent".to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()),
            ("source".to_string(), "order-service".to_string()),
            ("source#2".to_string(), "retry-relay".to_string()),
            ("binary".to_string(), "base64://4AgA==".to_string()),
        ])
    );
    assert_eq!(scheduled_jobs::wire::internal::header_value(&kept["binary"]).as_deref(), Some(binary), "the bytes come back");
}

#[tokio::test]
async fn a_run_past_its_timeout_is_recorded_timed_out_and_the_next_tick_proceeds() {
    let mut s = with_noop(isolated().await);
    s.jobs.get_mut("noop").unwrap().timeout_secs = 2;
    // Chunks of 0.9 s against a 2 s timeout: whether they run one at a time or two at once
    // (the next chunk's effects start ahead), the last ones are cut or start past the deadline.
    let slow = tick("noop", minutes_ago(20), &[("chunks", "8"), ("apply_sleep_ms", "900")]);
    let slow_plan = tick("noop", minutes_ago(10), &[("plan_sleep_ms", "4000")]);
    let next = tick("noop", minutes_ago(1), &[("chunks", "2")]);
    publish(&s, &[slow.clone()]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 2).await;
    publish(&s, &[slow_plan.clone()]).await;
    drive(&mut p, 2).await;
    publish(&s, &[next.clone()]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let by_tick: BTreeMap<&str, &RunResult> = r.iter().map(|x| (x.tick_id.as_str(), x)).collect();
    assert_eq!(r.len(), 3, "{r:#?}");
    let slow_r = by_tick[slow.tick_id.as_str()];
    assert_eq!(slow_r.outcome, Outcome::TimedOut, "{slow_r:?}");
    assert!(slow_r.counts.get("chunksTimedOut").copied().unwrap_or(0) >= 1, "{slow_r:?}");
    // Chunks are cut at the deadline, not only skipped after it: not all 8 ran.
    assert!(slow_r.counts.get("items").copied().unwrap_or(0) < 8, "{slow_r:?}");
    assert_eq!(by_tick[slow_plan.tick_id.as_str()].outcome, Outcome::TimedOut);
    assert_eq!(by_tick[next.tick_id.as_str()].outcome, Outcome::Succeeded);
}

/// The deadline holds inside a running chunk: a chunk of 120 s of work against a 2 s timeout
/// stops at the deadline, is recorded TIMED_OUT (with nothing to emit: noop has no effects),
/// and the next tick runs normally.
#[tokio::test]
async fn a_chunk_longer_than_the_timeout_stops_at_the_run_deadline() {
    let mut s = crate::common::with_noop(isolated().await);
    s.jobs.get_mut("noop").unwrap().timeout_secs = 2;
    let long = tick("noop", minutes_ago(10), &[("apply_sleep_ms", "120000")]);
    publish(&s, &[long.clone()]).await;
    let pool = test_db(&s).await;
    let mut p = processor_on(&s, pool.clone()).await;
    let started = Instant::now();
    // Without the deadline inside the chunk, the step would sleep its 120 s.
    tokio::time::timeout(Duration::from_secs(60), drive(&mut p, 2)).await.expect("the chunk stopped at its deadline");
    assert!(started.elapsed() < Duration::from_secs(60));
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::TimedOut, "{r:#?}");
    assert_eq!(r[0].counts.get("chunksTimedOut"), Some(&1), "{r:#?}");
    assert!(r[0].message.as_deref().unwrap_or("").contains("inside this chunk"), "{r:#?}");
    // Stopped at the deadline (planned + 2 s), not when its work would have ended.
    let (planned, applied): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT r.planned_at, c.applied_at FROM job_runs r JOIN job_run_chunks c USING (run_id) WHERE c.chunk_index = 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(applied < planned + TimeDelta::seconds(2), "started before the deadline: {planned} {applied}");
    let next = tick("noop", minutes_ago(1), &[("chunks", "2")]);
    publish(&s, &[next.clone()]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let next_r = r.iter().find(|x| x.tick_id == next.tick_id).expect("the next tick ran");
    assert_eq!(next_r.outcome, Outcome::Succeeded, "{next_r:?}");
}

/// A job whose whole-run step fails for good fails its run, recorded FAILED with the reason;
/// the processor goes on with the next tick instead of stopping.
#[tokio::test]
async fn a_run_whose_finalisation_fails_is_recorded_failed_and_processing_goes_on() {
    let s = with_noop(isolated().await);
    let bad = tick("noop", minutes_ago(20), &[("chunks", "2"), ("fail_finalize", "true")]);
    let next = tick("noop", minutes_ago(10), &[("chunks", "1")]);
    publish(&s, &[bad.clone()]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 2).await;
    publish(&s, &[next.clone()]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let by_tick: BTreeMap<&str, &RunResult> = r.iter().map(|x| (x.tick_id.as_str(), x)).collect();
    assert_eq!(r.len(), 2, "{r:#?}");
    let failed = by_tick[bad.tick_id.as_str()];
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    assert!(failed.message.as_deref().is_some_and(|m| m.contains("fail_finalize")), "{failed:?}");
    assert_eq!(failed.counts["items"], 2, "the chunks' work is kept: {failed:?}");
    assert_eq!(by_tick[next.tick_id.as_str()].outcome, Outcome::Succeeded);
}

/// Six noop chunks whose effects take 1 s each, applied by one processor with
/// `processor.effects_ahead` = `ahead`: when each chunk was recorded, in order.
async fn six_slow_chunks(ahead: u32) -> Vec<f64> {
    let (_, pool) = one_noop_run(|s| s.processor.effects_ahead = ahead, &[("chunks", "6"), ("apply_sleep_ms", "1000")], 6).await;
    let ends: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM applied_at)::float8 FROM job_run_chunks WHERE chunk_index >= 0 ORDER BY applied_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ends.len(), 6);
    ends
}

/// One noop run with `params`, applied by one processor on settings changed by `tune`: it
/// succeeds with every one of its `chunks` applied once. The processor and its database.
async fn one_noop_run(tune: impl FnOnce(&mut Settings), params: &[(&str, &str)], chunks: i64) -> (Processor, sqlx::PgPool) {
    let mut s = with_noop(isolated().await);
    tune(&mut s);
    publish(&s, &[tick("noop", minutes_ago(2), params)]).await;
    let pool = test_db(&s).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!((r[0].outcome, r[0].counts["items"]), (Outcome::Succeeded, chunks), "every chunk applied once: {r:#?}");
    (p, pool)
}

#[tokio::test]
async fn the_next_chunks_effects_start_while_the_current_chunk_is_applied() {
    // One at a time, a chunk is recorded at least 1 s after the one before it; started ahead,
    // the next one runs while the current one is being applied.
    let ends = six_slow_chunks(1).await;
    let overlapped = ends.windows(2).filter(|w| w[1] - w[0] < 0.9).count();
    assert!(overlapped >= 1, "no chunk started while another was applied: recorded at {ends:?}");
}

/// `processor.effects_ahead` = 3: while a chunk is applied, the next three have their effects
/// running too. One ahead at a time records the six chunks in pairs a second apart; three
/// ahead record at least three of them within half a second of each other.
#[tokio::test]
async fn several_chunks_effects_run_at_once_with_effects_ahead() {
    let ends = six_slow_chunks(3).await;
    assert!(ends.windows(3).any(|w| w[2] - w[0] < 0.5), "no three chunks' effects ran at once: recorded at {ends:?}");
}

/// A 40-chunk noop run applied by one processor with `processor.records_per_transaction` =
/// `per`: the run's result, every chunk recorded once, and (records handled, transactions
/// committed) from the processor's metrics.
async fn forty_chunks(per: u32) -> (usize, usize) {
    let (p, pool) = one_noop_run(|s| s.processor.records_per_transaction = per, &[("chunks", "40")], 40).await;
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM job_run_chunks WHERE chunk_index >= 0").fetch_one(&pool).await.unwrap();
    assert_eq!(chunks, 40);
    handled_and_committed(&p.metrics().encode())
}

/// Records that come faster than a commit share one Kafka transaction (each with its own
/// offset), at most `processor.records_per_transaction` of them; with 1, each has its own.
#[tokio::test]
async fn records_prepared_while_a_commit_is_in_flight_share_the_next_transaction() {
    let (handled, transactions) = forty_chunks(1).await;
    assert!(handled >= 42, "the tick, 40 chunks and the seal: {handled}");
    assert!(transactions >= handled, "{handled} records in {transactions} transactions: one per record (and the accounting's)");
    let (handled, transactions) = forty_chunks(8).await;
    assert!(handled >= 42, "{handled}");
    assert!(transactions < handled / 2, "{handled} records in {transactions} transactions: not grouped");
    assert!(transactions * 8 >= handled, "{handled} records in {transactions} transactions: more than 8 in one");
}

/// Ten noop chunks whose effects take 80 ms each, one at a time, so each comes well after the
/// previous commit: with `processor.transaction_linger_ms` = `linger`, (records handled,
/// transactions committed, how long the step of a lone tick took afterwards).
async fn ten_spaced_chunks(linger: u64) -> (usize, usize, Duration) {
    let tune = |s: &mut Settings| {
        s.processor.transaction_linger_ms = linger;
        s.processor.effects_ahead = 0;
    };
    let (mut p, _pool) = one_noop_run(tune, &[("chunks", "10"), ("apply_sleep_ms", "80")], 10).await;
    let counted = handled_and_committed(&p.metrics().encode());
    // A record with nothing behind it in its batch never waits for the linger.
    publish(p.settings(), &[tick("noop", minutes_ago(1), &[])]).await;
    let started = Instant::now();
    let mut handled = 0;
    while handled == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the lone tick was not handled");
        if let Step::Handled(n) = p.step(Duration::from_millis(300)).await.unwrap() {
            handled = n;
        }
    }
    (counted.0, counted.1, started.elapsed())
}

/// Chunks of one batch that each take longer than a commit would get a transaction each;
/// with a linger the first waits for the ones being prepared behind it and they share one.
/// The last record of a batch, and a lone one, never wait.
#[tokio::test]
async fn records_still_being_prepared_are_waited_for_and_share_a_transaction() {
    let (handled, transactions, _) = ten_spaced_chunks(0).await;
    assert!(handled >= 11, "the tick and 10 chunks: {handled}");
    assert!(transactions + 2 >= handled, "{handled} records in {transactions} transactions: without a linger, chunks 80 ms apart each take one");
    let (handled, transactions, lone) = ten_spaced_chunks(5_000).await;
    assert!(handled >= 11, "{handled}");
    assert!(transactions * 2 < handled, "{handled} records in {transactions} transactions: not grouped by the linger");
    assert!(lone < Duration::from_millis(2_500), "a lone tick waited {lone:?}, as if for the 5 s linger");
}

#[tokio::test]
async fn a_stale_tick_is_coalesced_when_a_newer_one_is_queued() {
    let s = with_noop(isolated().await);
    let (t1, t2, t3) = (tick("noop", minutes_ago(30), &[]), tick("noop", minutes_ago(20), &[]), tick("noop", minutes_ago(10), &[]));
    publish(&s, &[t1.clone(), t2.clone(), t3.clone()]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    let outcome = |t: &Tick| r.iter().find(|x| x.tick_id == t.tick_id).map(|x| x.outcome);
    assert_eq!(outcome(&t1), Some(Outcome::Coalesced), "{r:#?}");
    assert_eq!(outcome(&t2), Some(Outcome::Coalesced));
    assert_eq!(outcome(&t3), Some(Outcome::Succeeded));
    assert!(r.iter().find(|x| x.tick_id == t1.tick_id).unwrap().message.as_deref().unwrap().contains(&t3.tick_id));
}

// Multi-threaded like the real binary: each processor makes blocking librdkafka calls
// (transaction commit, offsets) that must not starve the other member's polls.
#[test]
fn two_processors_with_partitions_moving_lose_and_double_nothing() {
    guarded("two_processors_with_partitions_moving_lose_and_double_nothing", Duration::from_secs(420), 4, two_processors());
}

async fn two_processors() {
    let s = with_noop(isolated().await);
    // Manual ticks (never coalesced), each on its own key so they spread over partitions.
    let ticks: Vec<Tick> = (0..8)
        .map(|i| {
            let mut t = tick("noop", minutes_ago(100 - i * 10), &[("chunks", "5"), ("apply_sleep_ms", "150")]);
            t.trigger = Trigger::Manual;
            t.tick_id = uuid::Uuid::new_v4().to_string();
            t
        })
        .collect();
    let codec = Codec::new(&s).unwrap();
    let producer: FutureProducer = client_config(&s, Role::Producer).create().unwrap();
    let publish_ticks = |range: std::ops::Range<usize>| {
        let (s, codec, ticks, producer) = (&s, &codec, &ticks, &producer);
        async move {
            for i in range {
                let bytes = codec.encode(&s.topic(Topic::Tick), ticks[i].to_avro()).await.unwrap();
                let key = format!("noop-{i}");
                producer.send(FutureRecord::to(&s.topic(Topic::Tick)).key(&key).payload(&bytes), WAIT).await.unwrap();
            }
        }
    };
    // Half the work up front; the other half once both instances are members, so there is
    // work left to share and to move however fast the first one is.
    publish_ticks(0..4).await;
    let spawn = |p: Processor| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(p.run(async move {
            let _ = rx.await;
        }));
        (tx, handle)
    };
    let mut s1 = s.clone();
    s1.processor.instance_id = "one".into();
    let mut s2 = s.clone();
    s2.processor.instance_id = "two".into();
    // One database, as in production: run bookkeeping is shared by all instances.
    let pool = test_db(&s).await;
    let (stop1, h1) = spawn(processor_on(&s1, pool.clone()).await);
    // The second joins once the first is at work: the rebalance moves partitions to it.
    chunk_applied_by(&pool, "one").await;
    let (stop2, h2) = spawn(processor_on(&s2, pool.clone()).await);
    group_has_members(&s, &s.processor.group_id, 2).await;
    publish_ticks(4..ticks.len()).await;
    // The first leaves mid-way, once the second is at work too: its partitions move to the
    // second.
    chunk_applied_by(&pool, "two").await;
    stop1.send(()).unwrap();
    eprintln!("the first left with {} of {} runs finished", results(&s).await.len(), ticks.len());
    tokio::time::timeout(Duration::from_secs(90), h1).await.expect("first processor stops").unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = results(&s).await;
        if r.len() >= ticks.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing left that could add a result: the group has consumed every tick and work item;
    // and once the second has stopped, no transaction is open on the results.
    caught_up(&s, &s.processor.group_id, &[Topic::Tick, Topic::WorkItems]).await;
    stop2.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(90), h2).await.expect("second processor stops").unwrap().unwrap();
    settled(&s, &[Topic::RunResults]).await;
    let r = results(&s).await;
    let mut ids: Vec<&str> = r.iter().map(|x| x.tick_id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = ticks.iter().map(|t| t.tick_id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want, "each run exactly once");
    assert!(r.iter().all(|x| x.outcome == Outcome::Succeeded && x.counts["items"] == 5), "{r:#?}");
    // The work really was shared: both instances applied chunks.
    let per_instance: Vec<(String, i64)> =
        sqlx::query_as("SELECT applied_by, count(*) FROM job_run_chunks GROUP BY applied_by ORDER BY applied_by")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_instance.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(), vec!["one", "two"], "{per_instance:?}");
}

#[tokio::test]
async fn a_forced_manual_rerun_is_explicit_and_recorded_as_a_new_attempt() {
    let s = with_noop(isolated().await);
    let t = tick("noop", minutes_ago(5), &[]);
    publish(&s, &[t.clone()]).await;
    let mut p = processor(&s).await;
    drive(&mut p, 2).await;
    // A manual tick for the same period without `force` is a duplicate...
    let mut again = t.clone();
    again.trigger = Trigger::Manual;
    again.tick_id = uuid::Uuid::new_v4().to_string();
    publish(&s, &[again.clone()]).await;
    drive(&mut p, 2).await;
    assert_eq!(results(&s).await.len(), 1);
    // ...with `force=true` it is a new attempt, with its own run id.
    again.tick_id = uuid::Uuid::new_v4().to_string();
    again.parameters.insert("force".into(), "true".into());
    publish(&s, &[again.clone()]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    assert_eq!(r.len(), 2, "{r:#?}");
    assert_ne!(r[0].run_id, r[1].run_id);
    assert_eq!(r[1].trigger, "MANUAL");
    assert_eq!(r[1].tick_id, again.tick_id);
}

/// Starts the real binary as a processor for `s`'s private topics and `database`.
pub fn spawn_processor(s: &Settings, database: &str, env: &[(&str, &str)]) -> std::process::Child {
    processor_command(s, database, env).spawn().expect("spawn scheduled-jobs run")
}

/// `scheduled-jobs run` for this test's topics, group and database, with `env` on top.
pub fn processor_command(s: &Settings, database: &str, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::common::binary());
    cmd.current_dir(crate::common::repo_root())
        .arg("run")
        .env("SJ_TOPICS__PREFIX", &s.topics.prefix)
        .env("SJ_PROCESSOR__GROUP_ID", &s.processor.group_id)
        .env("SJ_PROCESSOR__TRANSACTIONAL_ID_PREFIX", &s.processor.transactional_id_prefix)
        .env("SJ_PROCESSOR__INSTANCE_ID", "crash-test")
        .env("SJ_POSTGRES__DATABASE", database)
        .envs(crate::common::noop_env(s))
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// When the (only) run in `pool` was planned: from its committed work items, or from its row
/// in `job_runs` when it was applied in its tick's transaction (one chunk: no work item).
pub async fn planned_at(s: &Settings, pool: &sqlx::PgPool) -> DateTime<Utc> {
    if let Some(item) = work_items(s).await.first() {
        return item.planned_at;
    }
    sqlx::query_scalar("SELECT planned_at FROM job_runs WHERE inline_item IS NOT NULL").fetch_one(pool).await.expect("an inline run's row")
}

/// Every committed work item (chunks and seals).
pub async fn work_items(s: &Settings) -> Vec<WorkItem> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, _, v) in read_all(s, &s.topic(Topic::WorkItems), "read_committed") {
        out.push(WorkItem::from_avro(codec.decode(&v.unwrap()).await.unwrap().value).unwrap());
    }
    out
}

/// Returns once the wall clock is past `instant` (the sleep is bounded by the very moment
/// waited for, not a guess at how long something takes).
pub async fn past(instant: DateTime<Utc>) {
    while Utc::now() <= instant {
        tokio::time::sleep((instant - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1)).await;
    }
}

/// Waits until instance `instance` has applied (or started) a chunk.
async fn chunk_applied_by(pool: &sqlx::PgPool, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_run_chunks WHERE applied_by = $1").bind(instance).fetch_one(pool).await.unwrap();
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "instance {instance} applied no chunk within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` run results are committed.
pub async fn wait_for_results(s: &Settings, n: usize, within: Duration) -> Vec<RunResult> {
    let deadline = Instant::now() + within;
    loop {
        let r = results(s).await;
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Isolated settings with the noop job, a migrated database of their own, and, if `chunks`
/// is set, a noop tick of that many chunks published: what the crash tests start from.
async fn noop_stage(chunks: Option<&str>) -> (Settings, sqlx::PgPool, String) {
    let s = with_noop(isolated().await);
    let (pool, database) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    if let Some(n) = chunks {
        publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", n)])]).await;
    }
    (s, pool, database)
}

#[tokio::test]
async fn a_chunk_killed_before_its_commit_is_completed_even_after_the_deadline() {
    let (s, pool, database) = noop_stage(Some("3")).await;
    // The first chunk's effects are done, then the process dies before its commit. One chunk's
    // effects ahead at most (`processor.effects_ahead` = 1), so at least one chunk has not
    // started when it dies.
    let mut first = spawn_processor(
        &s,
        &database,
        &[
            ("SJ_JOBS__NOOP__TIMEOUT_SECS", "3"),
            ("SJ_FAULT_POINT", "before-apply-commit"),
            ("SJ_FAULT_JOB", "noop"),
            ("SJ_PROCESSOR__EFFECTS_AHEAD", "1"),
        ],
    );
    let status = tokio::task::spawn_blocking(move || first.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "the fault point killed it");
    // The first chunk's effects are done, its Kafka commit never happened; the second chunk's
    // may have started ahead of their turn (effects run before their commit, idempotently).
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM job_run_chunks").fetch_one(&pool).await.unwrap();
    assert!((1..=2).contains(&started), "{started} chunks started");
    assert!(results(&s).await.is_empty());
    // Restart past the run's deadline (planned + the 3 s timeout, on this machine's clock as
    // the processor's): the started chunks complete, the others time out.
    let planned = planned_at(&s, &pool).await;
    past(planned + TimeDelta::seconds(3)).await;
    let mut second = spawn_processor(&s, &database, &[("SJ_JOBS__NOOP__TIMEOUT_SECS", "3"), ("SJ_PROCESSOR__EFFECTS_AHEAD", "1")]);
    let r = wait_for_results(&s, 1, Duration::from_secs(60)).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::TimedOut, "{r:#?}");
    assert_eq!(r[0].counts.get("items"), Some(&started), "the started chunks completed: {r:#?}");
    assert_eq!(r[0].counts.get("chunksTimedOut"), Some(&(3 - started)), "{r:#?}");
}

/// Issue 17: a processor killed with its transaction open and restarted on the same host with
/// no instance id configured takes its predecessor's slot, so its transactional id — the one
/// thing that lets its start fence that transaction at once (with the process id, as before,
/// every restart had a new transactional id) — and completes the run.
#[tokio::test]
async fn a_restarted_processor_without_an_instance_id_takes_its_predecessors_transactional_id() {
    let (s, _pool, database) = noop_stage(Some("1")).await;
    let logs: Vec<PathBuf> = (0..2).map(|i| std::env::temp_dir().join(format!("{}-{i}.log", crate::common::unique("derived-id")))).collect();
    let spawn = |log: &PathBuf, env: &[(&str, &str)]| {
        let mut cmd = processor_command(&s, &database, env);
        cmd.env("SJ_PROCESSOR__INSTANCE_ID", "").env("RUST_LOG", "info").stderr(std::fs::File::create(log).unwrap());
        cmd.spawn().unwrap()
    };
    let mut first = spawn(&logs[0], &[("SJ_FAULT_POINT", "before-apply-commit"), ("SJ_FAULT_JOB", "noop")]);
    let status = tokio::task::spawn_blocking(move || first.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "the fault point killed it with its transaction open");
    assert!(results(&s).await.is_empty());
    let mut second = spawn(&logs[1], &[]);
    let r = wait_for_results(&s, 1, Duration::from_secs(90)).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
    let instance = |log: &PathBuf| {
        let text = std::fs::read_to_string(log).unwrap();
        let at = text.find("processor started instance=").unwrap_or_else(|| panic!("no start line in {}: {text}", log.display()));
        text[at..].split_whitespace().nth(2).unwrap().trim_start_matches("instance=").to_string()
    };
    let (a, b) = (instance(&logs[0]), instance(&logs[1]));
    assert_eq!(a, b, "the restart took its predecessor's instance id");
    assert!(a.ends_with("-0") && !a.contains("pid"), "a derived slot id: {a}");
}

/// A processor whose log (at `info`) goes to a fresh file named after `name`.
fn spawn_logged(s: &Settings, database: &str, name: &str, env: &[(&str, &str)]) -> (std::process::Child, PathBuf) {
    let log = std::env::temp_dir().join(format!("{}.log", crate::common::unique(name)));
    let mut cmd = processor_command(s, database, env);
    cmd.env("RUST_LOG", "info").stderr(std::fs::File::create(&log).unwrap());
    (cmd.spawn().unwrap(), log)
}

/// Issue 17: librdkafka's `send_offsets_to_transaction` can wait for good (the group
/// coordinator died mid-call: confluentinc/librdkafka#5456, #5511; seen in the cluster fault
/// profile). Here the first commit's thread blocks before that call, as it would inside it. The
/// committer gives the producer up once librdkafka's timeout plus a grace period has passed; a
/// new producer takes the transactional id (fencing the old one, aborting its transaction) and
/// the record is redone, so the run completes, once, in the same process. Without the watch
/// the processor waits for good and no run result comes.
#[tokio::test]
async fn a_commit_stuck_in_librdkafka_is_given_up_and_redone_with_a_new_producer() {
    let (s, _pool, database) = noop_stage(Some("2")).await;
    let text = recovered_with_a_new_producer(&s, &database, "stuck-commit", &[("SJ_FAULT_HANG", "before-apply-commit/send-offsets"), ("SJ_FAULT_JOB", "noop")]).await;
    assert!(text.contains("hang point reached"), "the fault point was reached: {text}");
}

/// The log of a logged processor run with `env` on a noop stage of two chunks, once it has
/// completed the run in the same process after giving a stuck producer up.
async fn recovered_with_a_new_producer(s: &Settings, database: &str, name: &str, env: &[(&str, &str)]) -> String {
    let (mut processor, log) = spawn_logged(s, database, name, env);
    let r = wait_for_results(s, 1, Duration::from_secs(90)).await;
    let alive = processor.try_wait().unwrap().is_none();
    processor.kill().ok();
    processor.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(alive, "the same process recovered: {text}");
    assert_eq!(r.len(), 1, "{r:#?}\n{text}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r[0].counts.get("items"), Some(&2), "{r:#?}");
    assert!(text.contains("replacing the transactional producer reason=\"stuck\""), "{text}");
    text
}

/// An abort that never returns (as `send_offsets_to_transaction` can when the coordinator is
/// lost: confluentinc/librdkafka#5456) must not hold the processor. Here the first chunk's
/// offsets fail once, as a broker away would make them, and the abort that follows blocks for
/// good. The abort runs on the producer's thread, watched: once
/// librdkafka's timeout plus a grace period has passed, the producer is given up and a new one
/// takes the transactional id (aborting the transaction broker-side), and the chunk is redone in
/// the same process. Before, the abort blocked the processor's task and no run result came.
#[tokio::test]
async fn an_abort_stuck_in_librdkafka_is_given_up_and_the_records_redone_with_a_new_producer() {
    let (s, _pool, database) = noop_stage(Some("2")).await;
    let env = [("SJ_FAULT_FAIL", "before-apply-commit/send-offsets"), ("SJ_FAULT_HANG", "transaction/abort")];
    let text = recovered_with_a_new_producer(&s, &database, "stuck-abort", &env).await;
    assert!(text.contains("failure point reached") && text.contains("hang point reached"), "both fault points were reached: {text}");
    assert!(text.contains("no answer to the abort"), "{text}");
}

/// Issue 17: a commit that gets no answer may have committed, so it is not redone in place: the
/// process stops, saying why, and the next process (same instance id) fences the old producer and
/// resumes from the committed offsets; the run completes once.
#[tokio::test]
async fn a_commit_with_no_answer_stops_the_process_and_its_successor_completes_the_run() {
    let (s, _pool, database) = noop_stage(Some("2")).await;
    // The commit's watch (65 s) plus the restart outlast the test job's default run timeout.
    let timeout = ("SJ_JOBS__NOOP__TIMEOUT_SECS", "600");
    let (mut first, log) =
        spawn_logged(&s, &database, "commit-unknown", &[("SJ_FAULT_HANG", "before-apply-commit/commit"), ("SJ_FAULT_JOB", "noop"), timeout]);
    let status = tokio::time::timeout(Duration::from_secs(150), tokio::task::spawn_blocking(move || first.wait())).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|_| panic!("the process should stop on a commit with no answer: {text}")).unwrap().unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("hang point reached"), "{text}");
    assert!(text.contains("whether it committed is unknown"), "the error says why: {text}");
    // The step waited past a minute for the commit: the stall watch said what it was doing.
    let stall = text.lines().find(|l| l.contains("a processor step is still running")).unwrap_or_else(|| panic!("the stall watch spoke: {text}"));
    assert!(stall.contains("doing=\"handling a batch\""), "{stall}");
    assert!(results(&s).await.is_empty());
    let mut second = spawn_processor(&s, &database, &[timeout]);
    let r = wait_for_results(&s, 1, Duration::from_secs(90)).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r[0].counts.get("items"), Some(&2), "{r:#?}");
}

/// Takes processor `instance`'s transactional id with a producer of the test's own, bumping
/// its epoch (what the coordinator also does to a transaction it timed out), then lets it go.
async fn fence(s: &Settings, instance: &str) {
    let mut cfg = client_config(s, Role::Producer);
    cfg.set("transactional.id", format!("{}-{instance}", s.processor.transactional_id_prefix));
    let producer: FutureProducer = cfg.create().unwrap();
    tokio::task::spawn_blocking(move || rdkafka::producer::Producer::init_transactions(&producer, Duration::from_secs(30)).unwrap()).await.unwrap();
}

/// A logged processor (instance `crash-test`) on a fresh noop stage, once its first run has
/// completed.
async fn after_one_run(name: &str) -> (Settings, std::process::Child, PathBuf) {
    let (s, _pool, database) = noop_stage(None).await;
    let (processor, log) = spawn_logged(&s, &database, name, &[]);
    publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", "1")])]).await;
    assert_eq!(wait_for_results(&s, 1, Duration::from_secs(90)).await.len(), 1);
    (s, processor, log)
}

/// A second noop run, completed by the same `processor` (after a fence); its log.
async fn second_run(s: &Settings, processor: &mut std::process::Child, log: &std::path::Path) -> String {
    publish(s, &[tick("noop", minutes_ago(2), &[("chunks", "1")])]).await;
    let r = wait_for_results(s, 2, Duration::from_secs(90)).await;
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(r.len(), 2, "the run after the fence completed: {r:#?}\n{text}");
    assert!(r.iter().all(|r| r.outcome == Outcome::Succeeded), "{r:#?}");
    assert!(processor.try_wait().unwrap().is_none(), "the same process went on: {text}");
    text
}

/// The log of `processor`, once it stopped with a failure after a second fence (90 s at most).
async fn stopped(mut processor: std::process::Child, log: &std::path::Path) -> String {
    let status = tokio::time::timeout(Duration::from_secs(90), tokio::task::spawn_blocking(move || processor.wait())).await;
    let text = std::fs::read_to_string(log).unwrap();
    let status = status.unwrap_or_else(|_| panic!("fenced twice within a minute, the process should stop: {text}")).unwrap().unwrap();
    assert!(!status.success(), "{text}");
    text
}

/// Joins the processor group with static instance id `instance`, as the processor's own
/// lost join does after a broker outage longer than the session timeout: the member already
/// holding that id is fenced at its next heartbeat. Returns once this member got an
/// assignment, leaving without a LeaveGroup (a static member does not send one).
async fn intrude(s: &Settings, instance: &str) {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", &s.processor.group_id).set("group.instance.id", instance).set("session.timeout.ms", "10000");
    close_member(join_group(cfg, &s.topic(Topic::Tick), "the intruder").await, "the intruder").await;
}

/// Closes a group member of the test's own, polling it, for 60 s at most. rust-rdkafka's drop
/// polls until librdkafka says the consumer closed, with no limit: CI of 2026-12-01 hung for an
/// hour in `a_group_member_left_without_partitions_joins_again_with_a_new_consumer`, whose
/// only unbounded step was dropping a member that had stopped polling. A member that does not
/// close in time is leaked with a warning: it is the test's tool, not what the test examines.
async fn close_member(consumer: BaseConsumer, who: &'static str) {
    tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(60);
        if let Err(e) = consumer.close_queue() {
            eprintln!("{who}: closing failed ({e}); dropping it");
            return;
        }
        while !consumer.closed() {
            if Instant::now() > until {
                eprintln!("{who} did not close within 60 s; leaving it behind");
                std::mem::forget(consumer);
                return;
            }
            let _ = consumer.poll(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// A consumer of `cfg` subscribed to `topic`, once it holds partitions.
async fn join_group(cfg: rdkafka::ClientConfig, topic: &str, who: &'static str) -> BaseConsumer {
    let consumer: BaseConsumer = cfg.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    tokio::task::spawn_blocking(move || {
        let until = Instant::now() + WAIT;
        while consumer.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < until, "{who} got no assignment within {WAIT:?}");
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                panic!("{who} failed: {e}");
            }
        }
        consumer
    })
    .await
    .unwrap()
}

/// A member of the processor group that takes its partitions and then stops polling: a
/// rebalance waits for it until librdkafka gives up on it (`max.poll.interval.ms`, 15 s),
/// so every other member holds no partitions meanwhile. Close it with [`close_member`].
async fn stall_group(s: &Settings) -> BaseConsumer {
    let mut cfg = client_config(s, Role::Consumer);
    cfg.set("group.id", &s.processor.group_id).set("session.timeout.ms", "10000").set("max.poll.interval.ms", "15000");
    join_group(cfg, &s.topic(Topic::Tick), "the stalling member").await
}

/// After a session timeout with static membership, librdkafka's consumer can stay out of the
/// group for good (confluentinc/librdkafka#3437): a processor of the long fault profile logged
/// "partitions revoked" and then nothing for 16 minutes while the others did its work. A
/// member that holds no partitions for `processor.assignment_wait_ms` joins again with a new
/// consumer. librdkafka's hang cannot be caused at will; here the processor is kept without
/// partitions by a member that stopped polling (the group's rebalance waits for it), with
/// the wait at 3 s: the processor says so and joins again; the stalling member then leaves and
/// the processor completes a run. Without the wait, nothing is said and nothing is replaced.
#[tokio::test]
async fn a_group_member_left_without_partitions_joins_again_with_a_new_consumer() {
    let (s, _pool, database) = noop_stage(None).await;
    let stalled = stall_group(&s).await;
    let (mut processor, log) = spawn_logged(&s, &database, "unassigned", &[("SJ_PROCESSOR__ASSIGNMENT_WAIT_MS", "3000")]);
    publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", "1")])]).await;
    // The stalling member leaves once the processor has replaced its consumer, before the
    // group gives up on it (15 s): a member closed after that is the likeliest cause of the
    // CI hang described at `close_member`.
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap().contains("replacing the group consumer") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    close_member(stalled, "the stalling member").await;
    let r = wait_for_results(&s, 1, Duration::from_secs(90)).await;
    let alive = processor.try_wait().unwrap().is_none();
    processor.kill().ok();
    processor.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no partitions assigned for longer than processor.assignment_wait_ms"), "{text}");
    assert!(text.contains("reason=\"unassigned\""), "{text}");
    assert!(alive, "the same process went on: {text}");
    assert_eq!(r.len(), 1, "{r:#?}\n{text}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
}

/// A group consumer fenced by its own static instance id — librdkafka joined again after a
/// long broker outage and lost the answer, so the broker gave the id a new member id (8 of
/// the long fault profile's processor exits, 2026-12-01) — joins again with a new consumer in
/// the same process and goes on; fenced again within a minute, the process stops: another
/// live process uses its `processor.instance_id`.
#[tokio::test]
async fn a_group_member_fenced_by_its_instance_id_joins_again_once_and_a_second_fence_stops_the_process() {
    let (s, mut processor, log) = after_one_run("consumer-fenced").await;

    intrude(&s, "crash-test").await;
    let replaced = "replacing the group consumer";
    let until = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap().contains(replaced) {
        assert!(processor.try_wait().unwrap().is_none(), "the processor stopped: {}", std::fs::read_to_string(&log).unwrap());
        assert!(Instant::now() < until, "no replacement: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second_run(&s, &mut processor, &log).await;

    intrude(&s, "crash-test").await;
    let text = stopped(processor, &log).await;
    assert!(text.contains("another live process uses this processor.instance_id"), "the error says why: {text}");
    assert_eq!(text.matches(replaced).count(), 1, "{text}");
}

/// Issue 17: a producer fenced while no other process uses its transactional id — the
/// coordinator bumps the epoch of a transaction it timed out, as after a controller failover —
/// is replaced in the same process and the record redone; fenced again within the window, the
/// process stops (another live process must be using the id) and says why.
#[tokio::test]
async fn a_fenced_producer_is_replaced_once_and_a_second_fence_stops_the_process() {
    let (s, mut processor, log) = after_one_run("fenced").await;

    fence(&s, "crash-test").await;
    let text = second_run(&s, &mut processor, &log).await;
    assert!(text.contains("replacing the transactional producer reason=\"fenced\""), "{text}");

    fence(&s, "crash-test").await;
    publish(&s, &[tick("noop", minutes_ago(3), &[("chunks", "1")])]).await;
    let text = stopped(processor, &log).await;
    assert!(text.to_lowercase().contains("fenced"), "the error says why: {text}");
    assert_eq!(results(&s).await.len(), 2, "the third run waits for a process that owns the id");
}

/// A rebalance waits for every member to poll (the eager protocol revokes in the poll). A
/// processor handling a long batch — 60 chunks of 300 ms, 18 s — polls again once
/// `processor.batch_budget_ms` (1 s here) is spent: a member joining meanwhile holds partitions
/// within seconds, not after the whole batch. What was handled is committed, the rest is
/// consumed again, and the run completes with every chunk applied once. With the budget at 0
/// the joining member waited for the rest of the batch: 18.7 s when this was checked
/// (2026-12-02), and the test failed.
#[tokio::test]
async fn a_member_joining_during_a_long_batch_gets_partitions_once_the_batch_budget_is_spent() {
    let (s, pool, database) = noop_stage(None).await;
    let (mut processor, log) = spawn_logged(
        &s,
        &database,
        "batch-budget",
        &[("SJ_PROCESSOR__EFFECTS_AHEAD", "0"), ("SJ_PROCESSOR__BATCH_BUDGET_MS", "1000"), ("SJ_JOBS__NOOP__TIMEOUT_SECS", "300")],
    );
    publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", "60"), ("apply_sleep_ms", "300")])]).await;
    let until = Instant::now() + Duration::from_secs(90);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_run_chunks").fetch_one(&pool).await.unwrap() == 0 {
        assert!(Instant::now() < until, "no chunk applied within 90 s: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cfg = client_config(&s, Role::Consumer);
    cfg.set("group.id", &s.processor.group_id).set("session.timeout.ms", "10000");
    let joined = Instant::now();
    let member = join_group(cfg, &s.topic(Topic::Tick), "the joining member").await;
    let took = joined.elapsed();
    close_member(member, "the joining member").await;
    let r = wait_for_results(&s, 1, Duration::from_secs(120)).await;
    processor.kill().ok();
    processor.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(took < Duration::from_secs(8), "the joining member waited {took:?} for its partitions:\n{text}");
    assert_eq!(r.len(), 1, "{r:#?}\n{text}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r[0].counts.get("items"), Some(&60), "every chunk applied once: {r:#?}");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM job_run_chunks").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, 60);
}

/// Records whose effects already run ahead are handled, not stopped, when the batch budget
/// is spent. Stopping them threw their work away and did it again: in the stock-sync bench a
/// range of 500,000 products was compared and repaired twice (docs/performance.md, session
/// 27). Here 12 chunks of 600 ms, two ahead, a budget of 200 ms: every batch is spent after
/// its first record. Before the fix the first batch stopped the chunk running ahead.
#[tokio::test]
async fn effects_started_ahead_are_finished_not_thrown_away_when_the_batch_budget_is_spent() {
    let (s, pool, database) = noop_stage(None).await;
    let log = std::env::temp_dir().join(format!("{}.log", crate::common::unique("budget-ahead")));
    let env = [("SJ_PROCESSOR__EFFECTS_AHEAD", "2"), ("SJ_PROCESSOR__BATCH_BUDGET_MS", "200"), ("SJ_JOBS__NOOP__TIMEOUT_SECS", "300")];
    let mut processor = processor_command(&s, &database, &env)
        .env("RUST_LOG", "info,scheduled_jobs::runtime::processor=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", "12"), ("apply_sleep_ms", "600")])]).await;
    let r = wait_for_results(&s, 1, Duration::from_secs(120)).await;
    processor.kill().ok();
    processor.wait().ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(r.len(), 1, "{r:#?}\n{text}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(r[0].counts.get("items"), Some(&12), "every chunk applied once: {r:#?}");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM job_run_chunks WHERE outcome = 'APPLIED'").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, 12);
    assert!(text.contains("batch budget spent"), "the budget cut no batch, so this proves nothing:\n{text}");
    let stopped = text.matches("effects started ahead stopped before their record was handled").count();
    assert_eq!(stopped, 0, "effects running ahead were thrown away at the end of a batch:\n{text}");
}
