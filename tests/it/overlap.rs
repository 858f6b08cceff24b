//! Issue 19 item 2: what a tick does while its job's previous run is still running
//! (`jobs.<job>.overlap`), with two processors in one group sharing one database, so the run
//! may be planned on one instance and finished on the other.

use std::time::Duration;

use chrono::{DateTime, Utc};
use scheduled_jobs::config::{Overlap, Settings, Topic};
use scheduled_jobs::runtime::processor::Processor;
use rdkafka::producer::{FutureProducer, FutureRecord};
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::kafka::{client_config, Role};
use scheduled_jobs::wire::internal::{LedgerEntry, Outcome, RunResult, RunState};
use scheduled_jobs::runtime::processor::bookkeeping::{start_chunk, ChunkOutcome, Start};
use scheduled_jobs::wire::tick::{Tick, Trigger};

use crate::common::{minutes_ago, group_has_members, isolated_with, read_all, with_noop};
use crate::processor::{processor_on, publish, results, test_db, tick, wait_for_results};

/// Two processors of one group on one database, stopped when dropped.
struct Two {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    handles: Vec<tokio::task::JoinHandle<Result<(), scheduled_jobs::runtime::processor::ProcessorError>>>,
}

impl Two {
    async fn start(s: &Settings, pool: &sqlx::PgPool) -> Two {
        let mut two = Two { stops: Vec::new(), handles: Vec::new() };
        for name in ["one", "two"] {
            let mut si = s.clone();
            si.processor.instance_id = name.into();
            let p: Processor = processor_on(&si, pool.clone()).await;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            two.handles.push(tokio::spawn(p.run(async move {
                let _ = rx.await;
            })));
            two.stops.push(tx);
        }
        group_has_members(s, &s.processor.group_id, 2).await;
        two
    }

    async fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for h in self.handles {
            tokio::time::timeout(Duration::from_secs(90), h).await.expect("processor stops").unwrap().unwrap();
        }
    }
}

/// Settings with `noop` enabled under `policy`, and a database of their own.
async fn stage(policy: Overlap) -> (Settings, sqlx::PgPool) {
    let s = with_noop(isolated_with(|s| s.jobs.get_mut("noop").unwrap().overlap = policy).await);
    let pool = test_db(&s).await;
    (s, pool)
}

/// A noop tick of `chunks` chunks of `sleep_ms` each.
fn slow(at: DateTime<Utc>, chunks: &str, sleep_ms: &str) -> Tick {
    tick("noop", at, &[("chunks", chunks), ("apply_sleep_ms", sleep_ms)])
}

/// An operator's tick (`trigger noop --at`): never coalesced with the scheduled one before
/// it, so the two meet as overlapping runs.
fn manual(at: DateTime<Utc>, params: &[(&str, &str)]) -> Tick {
    let mut t = tick("noop", at, params);
    t.trigger = Trigger::Manual;
    t.tick_id = uuid::Uuid::new_v4().to_string();
    t
}

fn one<'a>(r: &'a [RunResult], t: &Tick) -> &'a RunResult {
    let found: Vec<&RunResult> = r.iter().filter(|x| x.tick_id == t.tick_id).collect();
    assert_eq!(found.len(), 1, "exactly one result for tick {}: {r:#?}", t.tick_id);
    found[0]
}

// The tests run two processors on their own runtime: four worker threads, so a test's own
// waits are not starved by the processors' blocking Kafka calls on a loaded machine (the
// paused-meanwhile test once paused 16 s late, after the run it meant to overlap had ended).
//
// Each test publishes its overlapping ticks before the processors start, so the instance that
// gets the tick partition decides them in one batch: the second while the first's run is
// planned and none of its chunks applied yet — an overlap by construction, not by timing.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skip_records_a_tick_that_comes_while_its_job_runs_as_skipped() {
    let (s, pool) = stage(Overlap::Skip).await;
    let a = slow(minutes_ago(30), "4", "500");
    let b = manual(minutes_ago(20), &[]);
    publish(&s, &[a.clone(), b.clone()]).await;
    let two = Two::start(&s, &pool).await;
    let r = wait_for_results(&s, 2, Duration::from_secs(90)).await;
    let (ra, rb) = (one(&r, &a), one(&r, &b));
    assert_eq!((ra.outcome, rb.outcome), (Outcome::Succeeded, Outcome::Skipped), "{r:#?}");
    let why = rb.message.as_deref().unwrap();
    assert!(why.contains(&ra.run_id) && why.contains("still running (jobs.noop.overlap = skip)"), "{why}");

    // Once A is over, the next tick runs.
    let c = manual(minutes_ago(10), &[]);
    publish(&s, std::slice::from_ref(&c)).await;
    let r = wait_for_results(&s, 3, Duration::from_secs(90)).await;
    assert_eq!(one(&r, &c).outcome, Outcome::Succeeded, "{r:#?}");
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffer_all_runs_every_waiting_tick_after_the_running_one_in_order() {
    let (s, pool) = stage(Overlap::BufferAll).await;
    let a = slow(minutes_ago(30), "4", "500");
    let b = manual(minutes_ago(20), &[("chunks", "2"), ("apply_sleep_ms", "300")]);
    let c = manual(minutes_ago(10), &[("chunks", "2"), ("apply_sleep_ms", "300")]);
    // B requested again while it waits: a duplicate, B keeps its place.
    let again = manual(b.scheduled_at, &[]);
    publish(&s, &[a.clone(), b.clone(), again.clone(), c.clone()]).await;
    let two = Two::start(&s, &pool).await;
    let r = wait_for_results(&s, 3, Duration::from_secs(120)).await;
    let (ra, rb, rc) = (one(&r, &a), one(&r, &b), one(&r, &c));
    assert!([ra, rb, rc].iter().all(|x| x.outcome == Outcome::Succeeded), "{r:#?}");
    assert!(rb.started_at >= ra.finished_at, "B ran after A: {r:#?}");
    assert!(rc.started_at >= rb.finished_at, "C ran after B, in the order they came: {r:#?}");
    two.stop().await;
    let r = results(&s).await;
    assert_eq!(r.len(), 3, "no run twice: {r:#?}");
    assert!(r.iter().all(|x| x.tick_id != again.tick_id), "the repeated request is a duplicate: {r:#?}");
    // Both waited in the ledger, were released and left the queue.
    let codec = Codec::new(&s).unwrap();
    let ledger = read_all(&s, &s.topic(Topic::RunLedger), "read_committed");
    for t in [&b, &c] {
        let key = format!("buffered/noop/{}", t.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let mut states = Vec::new();
        for (_, _, v) in ledger.iter().filter(|(_, k, _)| k.as_deref() == Some(key.as_bytes())) {
            states.push(LedgerEntry::from_avro(codec.decode(v.as_deref().unwrap()).await.unwrap().value).unwrap().state);
        }
        assert_eq!(states.first(), Some(&RunState::Buffered), "{key}: {states:?}");
        assert!(states.contains(&RunState::Released), "{key}: {states:?}");
        assert_eq!(states.last(), Some(&RunState::Planned), "{key} left the queue when it ran: {states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffer_one_keeps_only_the_newest_waiting_tick_and_coalesces_the_older() {
    let (s, pool) = stage(Overlap::BufferOne).await;
    let a = slow(minutes_ago(30), "4", "500");
    let b = manual(minutes_ago(20), &[]);
    let c = manual(minutes_ago(10), &[]);
    publish(&s, &[a.clone(), b.clone(), c.clone()]).await;
    let two = Two::start(&s, &pool).await;
    let r = wait_for_results(&s, 3, Duration::from_secs(120)).await;
    let (ra, rb, rc) = (one(&r, &a), one(&r, &b), one(&r, &c));
    assert_eq!((ra.outcome, rb.outcome, rc.outcome), (Outcome::Succeeded, Outcome::Coalesced, Outcome::Succeeded), "{r:#?}");
    assert!(rb.message.as_deref().unwrap().contains("overlap = buffer_one"), "{rb:?}");
    assert!(rc.started_at >= ra.finished_at, "C ran after A: {r:#?}");
    two.stop().await;
    assert_eq!(results(&s).await.len(), 3, "no run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_other_stops_the_running_run_at_a_chunk_boundary() {
    let (s, pool) = stage(Overlap::CancelOther).await;
    let a = slow(minutes_ago(30), "4", "500");
    let b = manual(minutes_ago(20), &[]);
    publish(&s, &[a.clone(), b.clone()]).await;
    let two = Two::start(&s, &pool).await;
    let r = wait_for_results(&s, 2, Duration::from_secs(120)).await;
    let (ra, rb) = (one(&r, &a), one(&r, &b));
    assert_eq!((ra.outcome, rb.outcome), (Outcome::Cancelled, Outcome::Succeeded), "{r:#?}");
    assert_eq!(ra.counts.get("chunksCancelled"), Some(&4), "none of A's chunks had started: {ra:?}");
    assert!(ra.message.as_deref().unwrap().contains(&b.tick_id), "{ra:?}");
    two.stop().await;
    assert_eq!(results(&s).await.len(), 2);
}

/// The chunk boundary: once a run is cancelled, a chunk that had started (its effects may have
/// begun) still completes; one that had not is not started.
#[tokio::test]
async fn a_cancelled_run_completes_its_started_chunks_and_starts_no_other() {
    let s = isolated_with(|_| {}).await;
    let pool = test_db(&s).await;
    assert_eq!(start_chunk(&pool, "run-x", 0, "one", false).await.unwrap(), Start::Fresh);
    sqlx::query("INSERT INTO job_run_cancels (run_id, job, requested_by, reason) VALUES ('run-x', 'noop', 'tick-y', 'cancelled by tick-y')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(start_chunk(&pool, "run-x", 0, "one", false).await.unwrap(), Start::Again(ChunkOutcome::Started), "a retry of a started chunk completes it");
    assert_eq!(start_chunk(&pool, "run-x", 1, "one", false).await.unwrap(), Start::Cancelled { reason: "cancelled by tick-y".into() });
    assert_eq!(start_chunk(&pool, "run-z", 0, "one", false).await.unwrap(), Start::Fresh, "other runs go on");
}

/// Publishes `ticks` in one produce request (one producer, sent before any is awaited), so
/// the processor that holds the tick partition reads them in one batch.
async fn publish_together(s: &Settings, ticks: &[Tick]) {
    let codec = Codec::new(s).unwrap();
    let producer: FutureProducer = client_config(s, Role::Producer).create().unwrap();
    let topic = s.topic(Topic::Tick);
    let mut sent = Vec::new();
    for t in ticks {
        let bytes = codec.encode(&topic, t.to_avro()).await.unwrap();
        sent.push(producer.send_result(FutureRecord::to(&topic).key(&t.job).payload(&bytes)).map_err(|(e, _)| e).unwrap());
    }
    for d in sent {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Waits until the ledger's latest entry for `t`'s waiting key has `state`.
async fn waiting_state(s: &Settings, t: &Tick, state: RunState) {
    let codec = Codec::new(s).unwrap();
    let key = format!("buffered/noop/{}", t.scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut last = None;
        for (_, k, v) in read_all(s, &s.topic(Topic::RunLedger), "read_committed") {
            if k.as_deref() == Some(key.as_bytes()) {
                last = Some(LedgerEntry::from_avro(codec.decode(v.as_deref().unwrap()).await.unwrap().value).unwrap().state);
            }
        }
        if last == Some(state) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{key} not {state:?} within 60 s (last {last:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_ticks_of_a_job_paused_meanwhile_are_skipped_and_hold_nothing_back() {
    let (s, pool) = stage(Overlap::BufferAll).await;
    let a = slow(minutes_ago(30), "8", "3000");
    let b = manual(minutes_ago(20), &[]);
    let c = manual(minutes_ago(10), &[]);
    // Both members first: a processor alone in the group can apply all of A before the other
    // joins (the group rebalances between its batches), and A would end before the pause.
    let two = Two::start(&s, &pool).await;
    publish_together(&s, &[a.clone(), b.clone(), c.clone()]).await;
    // Paused once B and C wait (C is the batch's last tick) while A runs. Not on A's first
    // chunk: the other instance may start it while this batch is still being handled (a
    // catch-up of the ledger commits A's plan first), and C would meet the pause on arrival.
    waiting_state(&s, &c, RunState::Buffered).await;
    scheduled_jobs::runtime::control::pause(&pool, "noop", "operator", Some("maintenance")).await.unwrap();
    let r = wait_for_results(&s, 3, Duration::from_secs(120)).await;
    let (ra, rb, rc) = (one(&r, &a), one(&r, &b), one(&r, &c));
    assert_eq!((ra.outcome, rb.outcome, rc.outcome), (Outcome::Succeeded, Outcome::Skipped, Outcome::Skipped), "{r:#?}");
    assert!(rb.message.as_deref().unwrap().contains("maintenance"), "{rb:?}");
    waiting_state(&s, &c, RunState::Skipped).await;
    // Resumed: the next tick runs at once, held back by no waiting entry.
    scheduled_jobs::runtime::control::resume(&pool, "noop").await.unwrap();
    let d = manual(minutes_ago(5), &[]);
    publish(&s, std::slice::from_ref(&d)).await;
    let r = wait_for_results(&s, 4, Duration::from_secs(60)).await;
    assert_eq!(one(&r, &d).outcome, Outcome::Succeeded, "{r:#?}");
    two.stop().await;
}
