//! The report jobs (09:00 stock-sync summary, 10:00 daily-statistics report) on the real
//! stack: built from the history of real runs, one event per report even when its tick is
//! delivered twice.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, Duration as Delta, TimeZone, Utc};
use redis::AsyncCommands;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::stock::stock_key;
use scheduled_jobs::wire::internal::Outcome;

use crate::common::{isolated, read_all, unique};
use crate::processor::{drive, processor_on, publish, results, test_db, tick};

async fn reports(s: &Settings) -> Vec<BTreeMap<String, Value>> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, _, value) in read_all(s, &s.topic(Topic::JobReport), "read_committed") {
        match codec.decode(&value.unwrap()).await.unwrap().value {
            Value::Record(fields) => out.push(fields.into_iter().collect()),
            other => panic!("not a record: {other:?}"),
        }
    }
    out
}

fn int(f: &BTreeMap<String, Value>, name: &str) -> i32 {
    match &f[name] {
        Value::Int(i) => *i,
        other => panic!("{name}: {other:?}"),
    }
}

fn text(f: &BTreeMap<String, Value>, name: &str) -> String {
    match &f[name] {
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn count(f: &BTreeMap<String, Value>, name: &str) -> i64 {
    match &f["counts"] {
        Value::Map(m) => match m.get(name) {
            Some(Value::Long(n)) => *n,
            None => 0,
            other => panic!("{name}: {other:?}"),
        },
        other => panic!("counts: {other:?}"),
    }
}

fn problems(f: &BTreeMap<String, Value>) -> Vec<String> {
    match &f["problems"] {
        Value::Array(a) => a.iter().map(|v| if let Value::String(s) = v { s.clone() } else { panic!("{v:?}") }).collect(),
        other => panic!("problems: {other:?}"),
    }
}

/// The local midnight that starts `t`'s day in `tz` (the zones used here have no DST gap at
/// midnight).
fn midnight(t: DateTime<Utc>, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let day = t.with_timezone(&tz).date_naive();
    tz.from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap()).earliest().unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_summarise_the_runs_of_the_last_day_once_each() {
    let s = isolated().await;
    // The default zone, the seed's (Asia/Seoul): days and "yesterday" are Seoul's.
    let tz = s.time_zone().unwrap();
    let pool = test_db(&s).await;
    // Stock history: one product drifted in Redis (repaired), one with an impossible DB value
    // (left for a person).
    let (drifted, invalid) = (unique("p"), unique("p"));
    for (id, db) in [(&drifted, 10), (&invalid, -1)] {
        sqlx::query("INSERT INTO products (id, name, stock) VALUES ($1, 'x', $2)").bind(id).bind(db).execute(&pool).await.unwrap();
    }
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap()).await.unwrap();
    let _: () = redis.set(stock_key(&drifted), 7).await.unwrap();
    let _: () = redis.set(stock_key(&invalid), 5).await.unwrap();

    let now = Utc::now();
    publish(&s, &[tick("stock-sync", now - Delta::minutes(1), &[]), tick("daily-statistics", midnight(now, tz), &[])]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 2).await;
    let restored: Option<i64> = redis.get(stock_key(&drifted)).await.unwrap();
    assert_eq!(restored, Some(10), "the stock-sync run repaired the drift");

    // The reports, at a fire time after those runs; each tick delivered twice.
    let at = Utc::now();
    let report_ticks = [tick("stock-sync-report", at, &[]), tick("daily-statistics-report", at, &[])];
    publish(&s, &report_ticks).await;
    publish(&s, &report_ticks).await;
    drive(&mut p, 2).await;

    let r = reports(&s).await;
    assert_eq!(r.len(), 2, "one event per report: {r:#?}");
    let stock = r.iter().find(|f| text(f, "reportType") == "STOCK_SYNC_SUMMARY").unwrap();
    assert_eq!((int(stock, "runs"), int(stock, "succeeded"), int(stock, "failed"), int(stock, "unfinished")), (1, 1, 0, 0));
    assert_eq!(count(stock, "mismatchesRecorded"), 2);
    assert_eq!(count(stock, "cause.REDIS_DRIFT"), 1);
    assert_eq!(count(stock, "cause.INVALID_DB_VALUE"), 1);
    assert_eq!(count(stock, "repair.RESTORED"), 1);
    let pr = problems(stock);
    assert_eq!(pr.len(), 1, "{pr:?}");
    assert!(pr[0].contains(&invalid) && pr[0].contains("manual review"), "{pr:?}");
    assert!(text(stock, "text").contains("2 mismatch(es) recorded, 1 restored"), "{}", text(stock, "text"));

    let daily = r.iter().find(|f| text(f, "reportType") == "DAILY_STATISTICS_REPORT").unwrap();
    assert_eq!((int(daily, "runs"), int(daily, "succeeded"), int(daily, "failed")), (1, 1, 0));
    let yesterday = (at.with_timezone(&tz).date_naive() - Delta::days(1)).to_string();
    assert!(text(daily, "title").contains(&yesterday), "{}", text(daily, "title"));
    assert_eq!(count(daily, "totalOrders"), 0);
    assert!(problems(daily).is_empty(), "{:?}", problems(daily));
    assert!(text(daily, "text").contains(&format!("{yesterday}: 0 orders, sales 0.00")), "{}", text(daily, "text"));
}

/// The run's deadline holds inside the report's chunk: reads that cannot finish (the
/// statistics table locked by a migration that does not end) are cut by their statement
/// timeout at the deadline. The run is TIMED_OUT with no report stored and none emitted; the
/// next tick reports normally.
#[tokio::test]
async fn a_report_cut_at_the_run_deadline_stores_and_emits_nothing_and_the_next_one_reports() {
    let mut s = isolated().await;
    s.jobs.get_mut("daily_statistics_report").unwrap().timeout_secs = 2;
    let pool = test_db(&s).await;
    let mut p = processor_on(&s, pool.clone()).await;
    let mut migration = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE daily_statistics IN ACCESS EXCLUSIVE MODE").execute(&mut *migration).await.unwrap();
    let now = Utc::now();
    let cut = tick("daily-statistics-report", now - Delta::minutes(1), &[]);
    publish(&s, &[cut.clone()]).await;
    // Without a deadline inside the chunk, its reads would wait for the lock for good.
    tokio::time::timeout(std::time::Duration::from_secs(60), drive(&mut p, 2)).await.expect("the chunk stopped at its deadline");
    let r = results(&s).await;
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::TimedOut, "{r:#?}");
    assert!(reports(&s).await.is_empty(), "no report emitted");
    migration.rollback().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM job_reports").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0, "no report stored: none without its event");

    let next = tick("daily-statistics-report", now, &[]);
    publish(&s, &[next.clone()]).await;
    drive(&mut p, 2).await;
    let r = results(&s).await;
    let next_r = r.iter().find(|x| x.tick_id == next.tick_id).expect("the next run");
    assert_eq!(next_r.outcome, Outcome::Succeeded, "{next_r:?}");
    assert_eq!(reports(&s).await.len(), 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM job_reports").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 1);
}
