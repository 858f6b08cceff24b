//! Issue 16 item 5: every job treats tick parameters alike. A parameter the job does not
//! declare, or a value its check refuses, sends the tick to dead letters with a reason naming
//! the parameter — whatever the job — and nothing runs; the line moves on.

use chrono::{DateTime, Utc};
use scheduled_jobs::config::Topic;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::wire::internal::Outcome;
use scheduled_jobs::wire::tick::{Tick, Trigger};

use crate::common::{minutes_ago, isolated, read_all, with_noop};
use crate::processor::{drive, processor, publish, results, tick};

fn manual(job: &str, at: DateTime<Utc>, params: &[(&str, &str)]) -> Tick {
    let mut t = tick(job, at, params);
    t.trigger = Trigger::Manual;
    t
}

#[tokio::test]
async fn every_job_sends_an_unknown_parameter_or_a_bad_value_to_dead_letters_naming_it() {
    let s = with_noop(isolated().await);
    // Each bad tick, and what its dead letter's reason must say.
    let cases: Vec<(Tick, &str)> = vec![
        // Before: a normal stock-sync run.
        (tick("stock-sync", minutes_ago(30), &[("batch", "-1")]), "unknown parameter `batch` (stock-sync accepts: force)"),
        (manual("stock-sync", minutes_ago(29), &[("force", "maybe")]), "parameter `force` = `maybe`"),
        (tick("stock-sync", minutes_ago(28), &[("force", "true")]), "parameter `force` is only accepted on MANUAL ticks"),
        // Before: a normal order-expiration run.
        (tick("order-expiration", minutes_ago(27), &[("batch_size", "5")]), "unknown parameter `batch_size` (order-expiration accepts: force)"),
        (manual("order-expiration", minutes_ago(26), &[("force", "yes")]), "parameter `force` = `yes`"),
        (tick("daily-statistics", minutes_ago(25), &[("dates", "2026-11-20")]), "unknown parameter `dates` (daily-statistics accepts: force, date)"),
        (manual("daily-statistics", minutes_ago(24), &[("date", "2026-13-01")]), "parameter `date` = `2026-13-01`: not a date"),
        (tick("stock-sync-report", minutes_ago(23), &[("verbose", "1")]), "unknown parameter `verbose` (stock-sync-report accepts: force)"),
        (manual("daily-statistics-report", minutes_ago(22), &[("force", "1")]), "parameter `force` = `1`"),
        (tick("noop", minutes_ago(21), &[("chunk", "2")]), "unknown parameter `chunk` (noop accepts: force, chunks,"),
        (tick("noop", minutes_ago(20), &[("chunks", "-1")]), "parameter `chunks` = `-1`"),
    ];
    let ticks: Vec<Tick> = cases.iter().map(|(t, _)| t.clone()).collect();
    publish(&s, &ticks).await;
    // Behind them, a good tick: the line keeps moving.
    publish(&s, &[tick("noop", minutes_ago(1), &[("chunks", "1")])]).await;

    let mut p = processor(&s).await;
    drive(&mut p, 3).await;
    let codec = Codec::new(&s).unwrap();
    let mut letters = Vec::new();
    for (_, _, v) in read_all(&s, &s.topic(Topic::DeadLetters), "read_committed") {
        let d = codec.decode(v.as_deref().unwrap()).await.unwrap();
        let json = scheduled_jobs::wire::avro::to_json(&d.value, &d.schema);
        letters.push((json["reasonCode"].as_str().unwrap().to_string(), json["reason"].as_str().unwrap().to_string()));
    }
    assert_eq!(letters.len(), cases.len(), "{letters:#?}");
    for (t, needle) in &cases {
        assert!(
            letters.iter().any(|(code, reason)| code == "IMPOSSIBLE_VALUE" && reason.contains(needle)),
            "{} {:?}: no dead letter saying `{needle}`: {letters:#?}",
            t.job,
            t.parameters
        );
    }
    // Nothing ran but the good tick.
    let r = results(&s).await;
    assert_eq!(r.iter().map(|r| (r.job.as_str(), r.outcome)).collect::<Vec<_>>(), [("noop", Outcome::Succeeded)], "{r:?}");
}
