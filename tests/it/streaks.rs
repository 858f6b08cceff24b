//! Issue 19 item 4: a job whose runs keep failing is paused after
//! `jobs.<job>.pause_after_failures` of them in a row (an operator pause made by the system,
//! with the last error), and the first run after the recovery says how many failed before it.


use chrono::{DateTime, TimeDelta, Utc};
use scheduled_jobs::runtime::control;
use scheduled_jobs::runtime::streak::PAUSED_BY;
use scheduled_jobs::wire::internal::Outcome;

use crate::common::{isolated_with, with_noop};
use crate::processor::{drive, processor_on, publish, results, test_db, tick};

fn minutes_ago(m: i64) -> DateTime<Utc> {
    let t = Utc::now() - TimeDelta::minutes(m);
    DateTime::from_timestamp(t.timestamp() - t.timestamp() % 60, 0).unwrap()
}

fn streak_metric(text: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with("scheduled_jobs_failure_streak{job=\"noop\"}")).map(|l| l.rsplit(' ').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_twice_in_a_row_is_paused_and_the_run_after_recovery_says_how_many_failed() {
    let s = with_noop(isolated_with(|s| s.jobs.get_mut("noop").unwrap().pause_after_failures = 2).await);
    let db = test_db(&s).await;
    let mut p = processor_on(&s, db.clone()).await;
    // Three runs that fail (chunk 0 fails on request), one tick at a time.
    for m in [30, 20, 10] {
        publish(&s, &[tick("noop", minutes_ago(m), &[("fail", "0")])]).await;
        drive(&mut p, 2).await;
    }
    let r = results(&s).await;
    let outcomes: Vec<Outcome> = r.iter().map(|x| x.outcome).collect();
    assert_eq!(outcomes, [Outcome::Failed, Outcome::Failed, Outcome::Skipped], "{r:#?}");
    assert!(!r[0].message.as_deref().unwrap().contains("job paused"), "{:?}", r[0]);
    let second = r[1].message.as_deref().unwrap();
    assert!(second.contains("chunk 0 failed on request") && second.contains("2 runs in a row failed: job paused (jobs.noop.pause_after_failures = 2)"), "{second}");
    let third = r[2].message.as_deref().unwrap();
    assert!(third.contains(PAUSED_BY) && third.contains("2 consecutive runs failed; the last: "), "the third tick finds the job paused: {third}");
    let pause = control::paused(&db, "noop").await.unwrap().expect("paused by the system");
    assert_eq!(pause.paused_by, PAUSED_BY);
    assert!(pause.reason.as_deref().unwrap().contains("failed on request"), "{pause:?}");
    assert_eq!(streak_metric(&p.metrics().encode()).as_deref(), Some("2"));

    // Fixed and resumed: the next run succeeds and says how many failed before it.
    control::resume(&db, "noop").await.unwrap();
    publish(&s, &[tick("noop", minutes_ago(5), &[])]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let last = r.last().unwrap();
    assert_eq!(last.outcome, Outcome::Succeeded, "{r:#?}");
    assert_eq!(last.counts.get("failedBefore"), Some(&2), "{last:?}");
    assert!(last.message.as_deref().unwrap().contains("recovered after 2 failed run(s) in a row"), "{last:?}");
    assert_eq!(streak_metric(&p.metrics().encode()).as_deref(), Some("0"));
    assert!(control::paused(&db, "noop").await.unwrap().is_none());

    // The next success is an ordinary one.
    publish(&s, &[tick("noop", minutes_ago(1), &[])]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    assert_eq!(r.last().unwrap().counts.get("failedBefore"), None, "{r:#?}");

    // A run with nothing to do (ended at planning) ends a streak too.
    publish(&s, &[tick("noop", minutes_ago(40), &[("fail", "0")])]).await;
    drive(&mut p, 2).await;
    publish(&s, &[tick("noop", minutes_ago(45), &[("chunks", "0")])]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let last = r.last().unwrap();
    assert_eq!((last.outcome, last.counts.get("chunks"), last.counts.get("failedBefore")), (Outcome::Succeeded, Some(&0), Some(&1)), "{r:#?}");
}
