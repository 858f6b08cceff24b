//! Issue 19 item 1: every fire time of a schedule ends in a recorded state. The processor
//! finds the fire times no tick came for (MISSED), tells a paused job's (SKIPPED), and a late
//! catch-up still runs a missed period. Real time, a 2-second schedule and a 1-second grace
//! period; every wait is for a condition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use scheduled_jobs::config::{CatchUp, Settings, Topic};
use scheduled_jobs::runtime::processor::{Processor, Step};
use scheduled_jobs::runtime::tick::TickProducer;
use scheduled_jobs::schedule::Schedule;
use scheduled_jobs::wire::internal::{Outcome, RunResult};
use scheduled_jobs::wire::tick::Trigger;

use crate::common::{isolated_with, read_all};
use crate::processor::{past, processor_on, publish, results, test_db, tick};

const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";

/// Only `noop`, every two seconds, MISSED one second after a fire time without a tick.
async fn settings() -> Settings {
    isolated_with(|s| {
        for job in s.jobs.values_mut() {
            job.enabled = false;
        }
        let noop = s.jobs.get_mut("noop").expect("noop");
        noop.enabled = true;
        noop.schedule = EVERY_TWO_SECONDS.into();
        noop.missed_after_secs = 1;
        noop.catch_up = CatchUp::Latest;
        s.processor.accounting_interval_ms = 200;
    })
    .await
}

/// Steps `p` until `done` holds for the committed results (at most `within`).
async fn step_until(p: &mut Processor, s: &Settings, within: Duration, done: impl Fn(&[RunResult]) -> bool) -> Vec<RunResult> {
    let deadline = Instant::now() + within;
    let mut checked = Instant::now();
    loop {
        if let Step::Reset(why) = p.step(Duration::from_millis(100)).await.unwrap() {
            panic!("unexpected reset: {why}");
        }
        if checked.elapsed() > Duration::from_millis(500) {
            checked = Instant::now();
            let r = results(s).await;
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "not reached within {within:?}: {r:#?}");
        }
    }
}

/// Steps `p` until its first accounting pass recorded where noop's fire times start
/// (`accounted/noop` in the run ledger): fire times after this are the test's.
async fn accounting_started(p: &mut Processor, s: &Settings) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_all(s, &s.topic(Topic::RunLedger), "read_committed").iter().any(|(_, k, _)| k.as_deref() == Some(b"accounted/noop".as_slice())) {
        assert!(Instant::now() < deadline, "no accounting pass within 60 s");
        p.step(Duration::from_millis(100)).await.unwrap();
    }
}

fn scheduled(r: &RunResult) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&r.period).unwrap().with_timezone(&Utc)
}

fn of(r: &[RunResult], outcome: Outcome) -> Vec<DateTime<Utc>> {
    let mut v: Vec<_> = r.iter().filter(|x| x.outcome == outcome).map(scheduled).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_times_without_a_tick_are_recorded_missed_and_a_catch_up_still_runs_them() {
    let s = settings().await;
    let mut p = processor_on(&s, test_db(&s).await).await;
    accounting_started(&mut p, &s).await;
    // A tick producer publishes one fire time, then stops.
    let mut producer = TickProducer::new(&s).await.unwrap();
    producer.start(Utc::now()).await.unwrap();
    let first = producer.next_due().unwrap();
    past(first).await;
    // Its clock at the fire time: exactly that fire time, however slow this machine is.
    let published = producer.publish_due(first).await.unwrap();
    assert_eq!(published.iter().map(|t| t.scheduled_at).collect::<Vec<_>>(), vec![first]);
    drop(producer);

    // Nothing comes for the next fire times: each is recorded MISSED once its grace is over.
    // (A fire time may have passed between the processor's first pass and the producer's
    // start: MISSED too, and not what this test looks at.)
    let after_first = |r: &[RunResult]| of(r, Outcome::Missed).into_iter().filter(|f| *f > first).collect::<Vec<_>>();
    let r = step_until(&mut p, &s, Duration::from_secs(60), |r| after_first(r).len() >= 2).await;
    assert_eq!(of(&r, Outcome::Succeeded), vec![first], "{r:#?}");
    let missed = after_first(&r);
    let schedule = Schedule::parse(EVERY_TWO_SECONDS, chrono_tz::Tz::UTC).unwrap();
    let expected: Vec<_> = schedule.fire_times(first, *missed.last().unwrap()).collect();
    assert_eq!(missed, expected, "every fire time after the run, each once, none skipped: {r:#?}");
    let m = r.iter().find(|x| x.outcome == Outcome::Missed).unwrap();
    assert!(m.message.as_deref().unwrap().contains("jobs.noop.missed_after_secs"), "{m:?}");
    assert_eq!(m.trigger, "SCHEDULED");

    // The producer comes back (its clock just after the last missed fire time): its catch-up
    // (latest) publishes that fire time, already recorded MISSED; it runs, late.
    let last_missed = *missed.last().unwrap();
    let mut producer = TickProducer::new(&s).await.unwrap();
    let caught_up = producer.start(last_missed + chrono::TimeDelta::milliseconds(1)).await.unwrap();
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    assert_eq!((caught_up[0].trigger, caught_up[0].scheduled_at), (Trigger::CatchUp, last_missed));
    let late = last_missed;
    let r = step_until(&mut p, &s, Duration::from_secs(60), |r| r.iter().any(|x| x.outcome == Outcome::Succeeded && scheduled(x) == late)).await;
    let ran: Vec<_> = r.iter().filter(|x| x.outcome == Outcome::Succeeded).map(|x| (scheduled(x), x.trigger.clone())).collect();
    assert_eq!(ran, vec![(first, "SCHEDULED".to_string()), (late, "CATCH_UP".to_string())], "{r:#?}");
    // Each fire time up to the late one has exactly one MISSED result or a run, never both,
    // except the late one (MISSED, then run).
    let mut per_fire: BTreeMap<DateTime<Utc>, Vec<Outcome>> = BTreeMap::new();
    for x in &r {
        per_fire.entry(scheduled(x)).or_default().push(x.outcome);
    }
    for f in schedule.fire_times(first - chrono::TimeDelta::milliseconds(1), late) {
        let got = per_fire.get(&f).cloned().unwrap_or_default();
        let want = if f == first {
            vec![Outcome::Succeeded]
        } else if f == late {
            vec![Outcome::Missed, Outcome::Succeeded]
        } else {
            vec![Outcome::Missed]
        };
        assert_eq!(got, want, "fire time {f}: {r:#?}");
    }
    // `runs list` shows them.
    let listed = scheduled_jobs::ops::history::recent_runs(&s, first - chrono::TimeDelta::minutes(1), Some("noop")).await.unwrap();
    let listed_missed = listed.iter().filter(|row| row.outcome == "MISSED").count();
    assert!(listed_missed >= missed.len(), "{listed_missed} MISSED rows listed: {listed:#?}");
    let metrics = p.metrics().encode();
    let missed_total = of(&r, Outcome::Missed).len();
    assert!(
        metrics.contains(&format!("scheduled_jobs_missed_fire_times_total{{job=\"noop\"}} {missed_total}")),
        "{missed_total} MISSED: {metrics}"
    );
    assert!(metrics.contains("scheduled_jobs_last_success_timestamp_seconds{job=\"noop\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_jobs_fire_times_are_skipped_not_missed_whether_or_not_a_tick_came() {
    let s = settings().await;
    let db = test_db(&s).await;
    scheduled_jobs::runtime::control::pause(&db, "noop", "tester", Some("maintenance window")).await.unwrap();
    let mut p = processor_on(&s, db).await;
    accounting_started(&mut p, &s).await;
    let schedule = Schedule::parse(EVERY_TWO_SECONDS, chrono_tz::Tz::UTC).unwrap();
    let fires: Vec<_> = schedule.fire_times(Utc::now(), Utc::now() + chrono::TimeDelta::seconds(9)).take(4).collect();
    // Ticks come for the first and third fire times only.
    for f in [fires[0], fires[2]] {
        past(f).await;
        publish(&s, &[tick("noop", f, &[])]).await;
        p.step(Duration::from_millis(100)).await.unwrap();
    }
    let r = step_until(&mut p, &s, Duration::from_secs(60), |r| fires.iter().all(|f| r.iter().any(|x| scheduled(x) == *f))).await;
    for f in &fires {
        let mine: Vec<_> = r.iter().filter(|x| scheduled(x) == *f).collect();
        assert_eq!(mine.len(), 1, "one result for {f}: {r:#?}");
        assert_eq!(mine[0].outcome, Outcome::Skipped, "{f}: {r:#?}");
        assert!(mine[0].message.as_deref().unwrap().contains("maintenance window"), "{:?}", mine[0]);
    }
    assert!(of(&r, Outcome::Missed).is_empty(), "{r:#?}");
}

/// Issue 19 item 5: two tick producers with different crons side by side (a rolling deploy).
/// The first tick of the new schedule's version makes it current; the old producer's ticks
/// after that are SKIPPED naming both versions, a duplicate of a period already run is
/// ignored, and no fire time of the new schedule is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_of_a_superseded_schedule_are_skipped_while_old_and_new_producers_run() {
    let old = settings().await;
    let mut new = old.clone();
    // Fire times are not what this test accounts: a 10-minute boundary passing during it must
    // not add a MISSED result.
    let set = |s: &mut Settings, cron: &str| {
        let noop = s.jobs.get_mut("noop").unwrap();
        noop.schedule = cron.into();
        noop.missed_after_secs = 3600;
    };
    let mut old = old;
    set(&mut old, "0 */10 * * * *");
    set(&mut new, "0 */15 * * * *");
    let mut p = processor_on(&old, test_db(&old).await).await;
    let now = Utc::now();
    let t0 = DateTime::from_timestamp(now.timestamp() - now.timestamp() % 3600, 0).unwrap() - chrono::TimeDelta::hours(2);
    let m = |minutes: i64| t0 + chrono::TimeDelta::minutes(minutes);
    let mut a = TickProducer::new(&old).await.unwrap();
    let mut b = TickProducer::new(&new).await.unwrap();
    a.start(m(1)).await.unwrap();
    let mut step = async |published: Vec<scheduled_jobs::wire::tick::Tick>| {
        assert!(!published.is_empty());
        crate::processor::drive(&mut p, 2).await;
        published
    };
    let a1 = step(a.publish_due(m(10)).await.unwrap()).await;
    b.start(m(12)).await.unwrap();
    let b1 = step(b.publish_due(m(15)).await.unwrap()).await;
    let a2 = step(a.publish_due(m(20)).await.unwrap()).await;
    let b2 = step(b.publish_due(m(30)).await.unwrap()).await;
    let a3 = a.publish_due(m(30)).await.unwrap();
    assert_eq!(a3[0].tick_id, b2[0].tick_id, "10:30 is a fire time of both: the same tick id");
    crate::processor::drive(&mut p, 2).await;
    let (va, vb) = (a1[0].schedule_version.clone().unwrap(), b1[0].schedule_version.clone().unwrap());
    assert_ne!(va, vb);

    let r = results(&old).await;
    let got: Vec<(DateTime<Utc>, Outcome)> = r.iter().map(|x| (scheduled(x), x.outcome)).collect();
    assert_eq!(
        got,
        vec![(m(10), Outcome::Succeeded), (m(15), Outcome::Succeeded), (m(20), Outcome::Skipped), (m(30), Outcome::Succeeded)],
        "{r:#?}"
    );
    let skipped = r.iter().find(|x| x.outcome == Outcome::Skipped).unwrap();
    assert_eq!(skipped.tick_id, a2[0].tick_id);
    let why = skipped.message.as_deref().unwrap();
    assert!(why.contains(&format!("schedule version {va}, superseded by version {vb}")), "{why}");
}
