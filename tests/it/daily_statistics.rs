//! `daily-statistics` on the real stack: the figures against an independent SQL computation
//! (orders placed around midnight, UTC and Asia/Seoul), the top-10 list with ties, exactly
//! one event per date under duplicate ticks, second runs and replay (E1, E3, E4), missed
//! midnights covered in date order, empty days, half-even averages, forced re-runs, and the
//! job's own idempotency (a retried chunk emits the same records, another run's nothing).

use std::collections::BTreeMap;
use std::time::Duration;

use apache_avro::types::Value;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use scheduled_jobs::wire::avro::decimal_from_avro;
use scheduled_jobs::kafka::codec::Codec;
use scheduled_jobs::config::{Settings, Topic};
use scheduled_jobs::jobs::daily_statistics::{day_bounds, DailyStatistics};
use scheduled_jobs::jobs::{Deadline, Job, JobCtx};
use scheduled_jobs::wire::derived_id;
use scheduled_jobs::wire::internal::{Outcome, RunResult, WorkItem};
use scheduled_jobs::wire::tick::{Tick, Trigger};
use sqlx::PgPool;

use crate::common::{isolated, read_all};
use crate::processor::{drive, past, processor_on, publish, reset_group, results, spawn_processor, test_db, tick, wait_for_results};

const JOB: &str = "daily-statistics";

/// Settings of an isolated environment whose schedules read in `tz`.
async fn env(tz: &str) -> Settings {
    let mut s = isolated().await;
    s.scheduler.time_zone = tz.into();
    s
}

fn tz_of(s: &Settings) -> Tz {
    s.time_zone().unwrap()
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// A date well in the past (ticks may not be in the future), `back` days before today.
fn days_ago(tz: Tz, back: u64) -> NaiveDate {
    Utc::now().with_timezone(&tz).date_naive().checked_sub_days(chrono::Days::new(back)).unwrap()
}

fn plus(d: NaiveDate, days: i64) -> NaiveDate {
    d + TimeDelta::days(days)
}

/// Local midnight at the start of `d`, as a UTC instant.
fn midnight(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    day_bounds(d, tz).unwrap().0
}

/// The tick a producer publishes for the midnight that ends `d` (its period is `d`).
fn tick_for(d: NaiveDate, tz: Tz, trigger: Trigger) -> Tick {
    let mut t = tick(JOB, midnight(plus(d, 1), tz), &[]);
    t.trigger = trigger;
    t
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Seeding.

#[derive(Debug, Clone)]
struct Order {
    id: String,
    status: &'static str,
    amount: Decimal,
    created: DateTime<Utc>,
    paid: Option<DateTime<Utc>>,
    cancelled: Option<DateTime<Utc>>,
    refunded: Option<(DateTime<Utc>, Decimal)>,
    items: Vec<(String, i32)>,
}

impl Order {
    fn new(id: &str, amount: &str, created: DateTime<Utc>) -> Order {
        Order {
            id: id.into(),
            status: "PAYMENT_WAIT",
            amount: dec(amount),
            created,
            paid: None,
            cancelled: None,
            refunded: None,
            items: Vec::new(),
        }
    }
    fn paid(mut self, at: DateTime<Utc>) -> Order {
        self.status = "PAYMENT_COMPLETED";
        self.paid = Some(at);
        self
    }
    fn cancelled(mut self, at: DateTime<Utc>) -> Order {
        self.status = "ORDER_CANCELLED";
        self.cancelled = Some(at);
        self
    }
    fn refunded(mut self, at: DateTime<Utc>, amount: Decimal) -> Order {
        self.status = "REFUNDED";
        self.refunded = Some((at, amount));
        self
    }
    fn item(mut self, product: &str, quantity: i32) -> Order {
        self.items.push((product.into(), quantity));
        self
    }
}

async fn seed_products(pool: &PgPool, ids: &[&str]) {
    let names: Vec<String> = ids.iter().map(|p| format!("상품 {p}")).collect();
    sqlx::query("INSERT INTO products (id, name, stock) SELECT id, name, 100 FROM unnest($1::text[], $2::text[]) AS t(id, name)")
        .bind(ids.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .bind(names)
        .execute(pool)
        .await
        .unwrap();
}

async fn seed_orders(pool: &PgPool, orders: &[Order]) {
    let col = |f: &dyn Fn(&Order) -> Option<DateTime<Utc>>| orders.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_amount, created_at, paid_at, cancelled_at, cancel_reason, refunded_amount, refunded_at)
         SELECT id, 'user-' || id, status, amount, created, paid, cancelled,
                CASE WHEN cancelled IS NULL THEN NULL ELSE 'USER_REQUESTED' END, refund, refunded
         FROM unnest($1::text[], $2::text[], $3::numeric[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[], $7::numeric[], $8::timestamptz[])
              AS t(id, status, amount, created, paid, cancelled, refund, refunded)",
    )
    .bind(orders.iter().map(|o| o.id.clone()).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.status.to_string()).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.amount).collect::<Vec<_>>())
    .bind(col(&|o| Some(o.created)))
    .bind(col(&|o| o.paid))
    .bind(col(&|o| o.cancelled))
    .bind(orders.iter().map(|o| o.refunded.map(|r| r.1)).collect::<Vec<_>>())
    .bind(col(&|o| o.refunded.map(|r| r.0)))
    .execute(pool)
    .await
    .unwrap();
    let items: Vec<(String, String, i32)> =
        orders.iter().flat_map(|o| o.items.iter().map(|(p, q)| (o.id.clone(), p.clone(), *q))).collect();
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT o, p, q, 1.00 FROM unnest($1::text[], $2::text[], $3::int[]) AS t(o, p, q)",
    )
    .bind(items.iter().map(|i| i.0.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.1.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.2).collect::<Vec<_>>())
    .execute(pool)
    .await
    .unwrap();
}

/// xorshift64*: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn micros(&mut self, max: TimeDelta) -> TimeDelta {
        TimeDelta::microseconds(self.below(max.num_microseconds().unwrap().max(1) as u64) as i64)
    }
}

const PRODUCTS: [&str; 12] = ["p-01", "p-02", "p-03", "p-04", "p-05", "p-06", "p-07", "p-08", "p-09", "p-10", "P-11", "p-12"];

/// Orders around the local midnights that bound `days` consecutive dates from `first`: some
/// right at each midnight (-1 µs, 0, +1 µs, ±1 s, ±10 min) and some anywhere in each day, with
/// payments, cancellations (before and after payment) and refunds that may land on the
/// other side of a midnight; plus instants exactly at midnight for each kind.
fn around_midnights(tz: Tz, first: NaiveDate, days: i64, seed: u64) -> Vec<Order> {
    let mut rng = Rng(seed);
    let mut orders = Vec::new();
    let mut created = Vec::new();
    for k in 0..=days {
        let m = midnight(plus(first, k), tz);
        for off in [-600_000_000, -1_000_000, -1, 0, 1, 1_000_000, 600_000_000] {
            created.push(m + TimeDelta::microseconds(off));
        }
        if k < days {
            let len = midnight(plus(first, k + 1), tz) - m;
            for _ in 0..30 {
                created.push(m + rng.micros(len));
            }
        }
    }
    for (i, at) in created.into_iter().enumerate() {
        let amount = Decimal::new(100 + rng.below(5_000_000) as i64, 2);
        let mut o = Order::new(&format!("o-{i:04}"), &amount.to_string(), at);
        let soon = |rng: &mut Rng| rng.micros(TimeDelta::minutes(20));
        o = match rng.below(6) {
            0 => o,
            1 => o.cancelled(at + soon(&mut rng)),
            2 | 3 => o.paid(at + soon(&mut rng)),
            4 => {
                let paid = at + soon(&mut rng);
                let share = Decimal::new(1 + rng.below(100) as i64, 2); // 0.01 .. 1.00 of the amount
                let refund = (amount * share).round_dp(2).min(amount);
                o.paid(paid).refunded(paid + rng.micros(TimeDelta::hours(30)), refund)
            }
            _ => {
                let paid = at + soon(&mut rng);
                o.paid(paid).cancelled(paid + rng.micros(TimeDelta::hours(3)))
            }
        };
        for _ in 0..1 + rng.below(3) {
            let p = PRODUCTS[rng.below(PRODUCTS.len() as u64) as usize];
            if !o.items.iter().any(|(q, _)| q == p) {
                o = o.item(p, 1 + rng.below(5) as i32);
            }
        }
        orders.push(o);
    }
    // Every kind of instant exactly at a midnight: it belongs to the day that starts there.
    let m = midnight(plus(first, 1), tz);
    let before = m - TimeDelta::microseconds(1);
    let e = |id: &str| Order::new(id, "1000.01", m - TimeDelta::hours(1));
    orders.push(e("edge-paid-at-midnight").paid(m).item("p-01", 7));
    orders.push(e("edge-paid-before-midnight").paid(before).item("p-02", 7));
    orders.push(e("edge-cancelled-at-midnight").cancelled(m));
    orders.push(e("edge-refunded-at-midnight").paid(before).refunded(m, dec("1000.01")));
    orders.push(e("edge-refunded-before-midnight").paid(before - TimeDelta::seconds(1)).refunded(before, dec("0.99")));
    orders
}

// ---------------------------------------------------------------------------------------
// Reading the events, and the independent computation.

/// A `daily.statistics` record as consumers see it, money as exact decimals (scale 2).
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    key: String,
    event_id: String,
    date: String,
    total_orders: i64,
    total_sales: String,
    avg_order_amount: String,
    cancelled_orders: i64,
    refund_amount: String,
    top: Vec<(String, String, i64)>,
    /// The zone the date was counted in, as the record says.
    time_zone: String,
}

fn money(v: &Value) -> String {
    match v {
        Value::Decimal(d) => decimal_from_avro(d, 2).unwrap().to_string(),
        other => panic!("not a decimal: {other:?}"),
    }
}

fn long(v: &Value) -> i64 {
    match v {
        Value::Long(n) => *n,
        other => panic!("not a long: {other:?}"),
    }
}

fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        // `eventId` is a `uuid` string.
        Value::Uuid(u) => u.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Every committed `daily.statistics` record, in topic order (one partition: commit order).
async fn statistics(s: &Settings) -> Vec<Stat> {
    let codec = Codec::new(s).unwrap();
    let mut out = Vec::new();
    for (_, key, value) in read_all(s, &s.topic(Topic::DailyStatistics), "read_committed") {
        let d = codec.decode(&value.unwrap()).await.unwrap();
        let Value::Record(fields) = d.value else { panic!("not a record") };
        let f: BTreeMap<String, Value> = fields.into_iter().collect();
        let Value::Array(items) = &f["topProducts"] else { panic!("topProducts is not an array") };
        let top = items
            .iter()
            .map(|i| {
                let Value::Record(p) = i else { panic!("not a record") };
                let p: BTreeMap<&str, &Value> = p.iter().map(|(k, v)| (k.as_str(), v)).collect();
                (string(p["productId"]), string(p["productName"]), long(p["totalSold"]))
            })
            .collect();
        out.push(Stat {
            key: String::from_utf8(key.unwrap()).unwrap(),
            event_id: string(&f["eventId"]),
            date: string(&f["date"]),
            total_orders: long(&f["totalOrders"]),
            total_sales: money(&f["totalSales"]),
            avg_order_amount: money(&f["avgOrderAmount"]),
            cancelled_orders: long(&f["cancelledOrders"]),
            refund_amount: money(&f["refundAmount"]),
            top,
            time_zone: string(&f["timeZone"]),
        });
    }
    out
}

fn dates_of(stats: &[Stat]) -> Vec<String> {
    stats.iter().map(|s| s.date.clone()).collect()
}

fn date_range(first: NaiveDate, last: NaiveDate) -> Vec<String> {
    first.iter_days().take_while(|d| *d <= last).map(|d| d.to_string()).collect()
}

/// The figures of `d` computed independently of the job: days by PostgreSQL's own time-zone
/// conversion (`AT TIME ZONE … ::date`, not instant bounds), the half-even average by integer
/// division of cents in SQL, the top list sorted here.
async fn expected(pool: &PgPool, d: NaiveDate, tz: Tz) -> Stat {
    let row: (i64, i64, Decimal, i64, Decimal, Decimal) = sqlx::query_as(
        "WITH p AS (
             SELECT coalesce(sum(total_amount), 0) AS sales, count(*) AS n
             FROM orders WHERE (paid_at AT TIME ZONE $2)::date = $1
         ), c AS (SELECT sales * 100 AS cents, n FROM p)
         SELECT
             (SELECT count(*) FROM orders WHERE (created_at AT TIME ZONE $2)::date = $1),
             (SELECT n FROM p),
             (SELECT sales::numeric(15,2) FROM p),
             (SELECT count(*) FROM orders WHERE (cancelled_at AT TIME ZONE $2)::date = $1),
             (SELECT coalesce(sum(refunded_amount), 0)::numeric(15,2) FROM orders WHERE (refunded_at AT TIME ZONE $2)::date = $1),
             (SELECT CASE WHEN n = 0 THEN 0
                          ELSE (div(cents, n) + CASE WHEN 2 * mod(cents, n) > n OR (2 * mod(cents, n) = n AND mod(div(cents, n), 2) = 1)
                                                     THEN 1 ELSE 0 END) / 100
                     END::numeric(10,2) FROM c)",
    )
    .bind(d)
    .bind(tz.name())
    .fetch_one(pool)
    .await
    .unwrap();
    let mut top: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT i.product_id, p.name, sum(i.quantity)::bigint
         FROM order_items i JOIN orders o ON o.id = i.order_id JOIN products p ON p.id = i.product_id
         WHERE (o.paid_at AT TIME ZONE $2)::date = $1
         GROUP BY i.product_id, p.name",
    )
    .bind(d)
    .bind(tz.name())
    .fetch_all(pool)
    .await
    .unwrap();
    // Byte order of the id breaks ties (String's Ord is byte order).
    top.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    Stat {
        key: d.to_string(),
        event_id: derived_id(&["daily-statistics", &d.to_string()]).to_string(),
        date: d.to_string(),
        total_orders: row.0,
        total_sales: cents(row.2),
        avg_order_amount: cents(row.5),
        cancelled_orders: row.3,
        refund_amount: cents(row.4),
        top,
        time_zone: tz.name().to_string(),
    }
}

/// `d` written with exactly two decimals, refusing anything finer (sqlx reads a NUMERIC zero
/// back without its scale).
fn cents(d: Decimal) -> String {
    assert!(d.scale() <= 2, "{d} has more than 2 decimals");
    let mut x = d;
    x.rescale(2);
    x.to_string()
}

fn runs_of(r: &[RunResult]) -> BTreeMap<String, &RunResult> {
    r.iter().map(|x| (x.period.clone(), x)).collect()
}

fn count(r: &RunResult, name: &str) -> i64 {
    r.counts.get(name).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// 1. Figures against the independent computation.

async fn three_days_match_independent_sql(zone: &str) {
    let s = env(zone).await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let first = days_ago(tz, 20);
    seed_products(&pool, &PRODUCTS).await;
    let orders = around_midnights(tz, first, 3, 0x5eed_0000 + zone.len() as u64);
    seed_orders(&pool, &orders).await;

    publish(
        &s,
        &[
            tick_for(first, tz, Trigger::Scheduled),
            tick_for(plus(first, 1), tz, Trigger::Scheduled),
            tick_for(plus(first, 2), tz, Trigger::Scheduled),
        ],
    )
    .await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;

    let stats = statistics(&s).await;
    // A fresh table: the first run also covers the 6 days before its date (see the module doc).
    assert_eq!(dates_of(&stats), date_range(plus(first, -6), plus(first, 2)), "each date once, in date order");
    for st in &stats {
        let d = date(&st.date);
        let want = expected(&pool, d, tz).await;
        assert_eq!(st, &want, "{zone} {d}");
    }
    // The data really exercised the figures on the three days.
    for k in 0..3 {
        let st = &stats[6 + k];
        assert!(st.total_orders > 20 && st.cancelled_orders > 0 && st.refund_amount != "0.00" && st.top.len() == 10, "{st:?}");
    }
    let r = results(&s).await;
    assert_eq!(r.len(), 3, "{r:#?}");
    assert!(r.iter().all(|x| x.outcome == Outcome::Succeeded), "{r:#?}");
    assert_eq!(r.iter().map(|x| count(x, "datesAggregated")).sum::<i64>(), stats.len() as i64);
    assert_eq!(r.iter().map(|x| count(x, "orders")).sum::<i64>(), stats.iter().map(|x| x.total_orders).sum::<i64>());
}

#[tokio::test]
async fn figures_of_three_days_match_an_independent_computation_in_utc() {
    three_days_match_independent_sql("UTC").await;
}

#[tokio::test]
async fn figures_of_three_days_match_an_independent_computation_in_seoul() {
    three_days_match_independent_sql("Asia/Seoul").await;
}

// ---------------------------------------------------------------------------------------
// 2. Top 10 with ties.

#[tokio::test]
async fn the_top_ten_counts_only_orders_paid_that_day_and_breaks_ties_by_product_id() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d = days_ago(tz, 5);
    let m = midnight(d, tz);
    let next = midnight(plus(d, 1), tz);
    let ids = ["p-top", "p-a", "p-b", "p-c", "P-z", "p-d", "p-e", "p-f", "p-g", "p-h", "p-i", "p-j", "p-k", "p-noise"];
    seed_products(&pool, &ids).await;
    let at = m + TimeDelta::hours(12);
    let orders = vec![
        Order::new("a", "10.00", at).paid(at).item("p-top", 20).item("p-a", 15).item("p-b", 40),
        Order::new("b", "10.00", at).paid(at).item("p-top", 20).item("p-a", 25).item("p-c", 30),
        Order::new("c", "10.00", at).paid(m).item("p-top", 10).item("P-z", 20).item("p-d", 20).item("p-e", 15).item("p-f", 12),
        Order::new("d", "10.00", at)
            .paid(next - TimeDelta::microseconds(1))
            .item("p-g", 10)
            .item("p-h", 10)
            .item("p-i", 10)
            .item("p-j", 10)
            .item("p-k", 5),
        // Not paid that day: never counted, however large.
        Order::new("unpaid", "10.00", at).item("p-noise", 100).item("p-j", 100),
        Order::new("cancelled", "10.00", at).cancelled(at).item("p-noise", 100),
        Order::new("paid-the-day-before", "10.00", m - TimeDelta::hours(2))
            .paid(m - TimeDelta::microseconds(1))
            .item("p-noise", 100)
            .item("p-i", 100),
        Order::new("paid-the-day-after", "10.00", at).paid(next).item("p-noise", 100),
    ];
    seed_orders(&pool, &orders).await;
    publish(&s, &[tick_for(d, tz, Trigger::Scheduled)]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;

    let stats = statistics(&s).await;
    let st = stats.iter().find(|x| x.date == d.to_string()).unwrap();
    let want: Vec<(String, String, i64)> = [
        ("p-top", 50),
        ("p-a", 40),
        ("p-b", 40),
        ("p-c", 30),
        ("P-z", 20), // byte order: upper case before lower case, whatever the DB's locale
        ("p-d", 20),
        ("p-e", 15),
        ("p-f", 12),
        ("p-g", 10),
        ("p-h", 10), // p-i and p-j sold 10 too: the tie is cut by product id
    ]
    .iter()
    .map(|(id, n)| (id.to_string(), format!("상품 {id}"), *n))
    .collect();
    assert_eq!(st.top, want);
    assert_eq!(st, &expected(&pool, d, tz).await);
    assert_eq!((st.total_orders, st.total_sales.as_str(), st.avg_order_amount.as_str()), (7, "40.00", "10.00"));
}

// ---------------------------------------------------------------------------------------
// 3. Duplicates, second runs, replay.

#[tokio::test]
async fn duplicate_ticks_a_second_run_and_a_replay_emit_nothing_new() {
    let s = env("Asia/Seoul").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d = days_ago(tz, 3);
    seed_products(&pool, &PRODUCTS).await;
    seed_orders(&pool, &around_midnights(tz, d, 1, 7)).await;

    // E4: the same fire time from two producers, and the same tick twice.
    let t = tick_for(d, tz, Trigger::Scheduled);
    let mut twin = t.clone();
    twin.producer = Some("producer-b".into());
    publish(&s, &[t.clone(), twin, t.clone()]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;
    let first = statistics(&s).await;
    assert_eq!(dates_of(&first), date_range(plus(d, -6), d));
    assert_eq!(first.last().unwrap(), &expected(&pool, d, tz).await);
    assert_eq!(results(&s).await.len(), 1);

    // A second run later: the same tick again, and a catch-up tick of the same midnight.
    let mut catch_up = t.clone();
    catch_up.trigger = Trigger::CatchUp;
    publish(&s, &[t.clone(), catch_up]).await;
    drive(&mut p, 2).await;
    assert_eq!(statistics(&s).await, first);

    // E3: replay both input topics from offset 0.
    drop(p);
    reset_group(&s, &s.processor.group_id, &s.topic(Topic::Tick));
    reset_group(&s, &s.processor.group_id, &s.topic(Topic::WorkItems));
    let mut p = processor_on(&s, pool.clone()).await;
    let handled = drive(&mut p, 3).await;
    assert!(handled >= 5, "ticks and work items were consumed again ({handled})");
    assert_eq!(statistics(&s).await, first, "nothing new after the replay");
    assert_eq!(results(&s).await.len(), 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_statistics").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 7);
}

/// Below the pipeline: the job's own apply, called directly. A retried chunk of the owning
/// run emits the same records; a chunk of another run that lists the same dates emits
/// nothing and counts them skipped.
#[tokio::test]
async fn apply_repeats_its_records_for_its_run_and_skips_dates_owned_by_another() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d = days_ago(tz, 4);
    seed_products(&pool, &PRODUCTS).await;
    seed_orders(&pool, &around_midnights(tz, plus(d, -1), 2, 11)).await;
    let ctx = JobCtx { db: pool.clone(), redis: None, tz, settings: s.job("daily_statistics").cloned().unwrap(), deadline: Deadline::none(), effects_done: false };
    let item = |run: &str| WorkItem {
        period: d.to_string(),
        scheduled_at: midnight(plus(d, 1), tz),
        planned_at: Utc::now(),
        ..crate::common::work_item(JOB, run, 0, vec![plus(d, -1).to_string(), d.to_string()], Utc::now())
    };
    let job = DailyStatistics;
    let once = job.apply(&ctx, &item("run-a")).await.unwrap();
    let again = job.apply(&ctx, &item("run-a")).await.unwrap();
    assert_eq!(once.records.len(), 2);
    assert_eq!(format!("{:?}", once.records), format!("{:?}", again.records), "a retry emits the same records");
    assert_eq!(once.counts, again.counts);
    assert_eq!(once.counts["datesAggregated"], 2);
    let other = job.apply(&ctx, &item("run-b")).await.unwrap();
    assert!(other.records.is_empty());
    assert_eq!((other.counts["datesAggregated"], other.counts["datesSkipped"]), (0, 2));
}

// ---------------------------------------------------------------------------------------
// 4. Missed midnights.

/// History: the run of `d0` on a fresh table (it covers `d0` and the 6 days before).
async fn with_history(s: &Settings, pool: &PgPool, d0: NaiveDate) -> scheduled_jobs::runtime::processor::Processor {
    let tz = tz_of(s);
    seed_products(pool, &PRODUCTS).await;
    seed_orders(pool, &around_midnights(tz, plus(d0, -1), 5, 3)).await;
    publish(s, &[tick_for(d0, tz, Trigger::Scheduled)]).await;
    let mut p = processor_on(s, pool.clone()).await;
    drive(&mut p, 3).await;
    assert_eq!(dates_of(&statistics(s).await), date_range(plus(d0, -6), d0));
    p
}

#[tokio::test]
async fn three_missed_midnights_caught_up_by_the_tick_producer_are_emitted_once_each_in_order() {
    let s = env("Asia/Seoul").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d0 = days_ago(tz, 8);
    let mut p = with_history(&s, &pool, d0).await;

    // Down for three midnights; the producer comes back and publishes them oldest first.
    let ticks: Vec<Tick> = (1..=3).map(|k| tick_for(plus(d0, k), tz, Trigger::CatchUp)).collect();
    assert!(ticks.windows(2).all(|w| w[0].scheduled_at < w[1].scheduled_at));
    assert_eq!(ticks[0].tick_id, Tick::scheduled_id(JOB, midnight(plus(d0, 2), tz)));
    publish(&s, &ticks).await;
    drive(&mut p, 3).await;

    let stats = statistics(&s).await;
    assert_eq!(dates_of(&stats), date_range(plus(d0, -6), plus(d0, 3)), "each date once, in date order");
    for st in &stats[7..] {
        assert_eq!(st, &expected(&pool, date(&st.date), tz).await);
    }
    let r = results(&s).await;
    let by = runs_of(&r);
    assert_eq!(r.len(), 4, "{r:#?}");
    assert_eq!((1..=3).map(|k| count(by[&plus(d0, k).to_string()], "datesAggregated")).sum::<i64>(), 3);
}

#[tokio::test]
async fn when_only_the_latest_tick_arrives_its_run_covers_the_missed_dates_in_order() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d0 = days_ago(tz, 8);
    let mut p = with_history(&s, &pool, d0).await;

    // The ticks of d0+1 and d0+2 never came; the one of d0+3 does.
    publish(&s, &[tick_for(plus(d0, 3), tz, Trigger::Scheduled)]).await;
    drive(&mut p, 3).await;
    let stats = statistics(&s).await;
    assert_eq!(dates_of(&stats), date_range(plus(d0, -6), plus(d0, 3)));
    for st in &stats[7..] {
        assert_eq!(st, &expected(&pool, date(&st.date), tz).await);
    }
    let r = results(&s).await;
    let latest = runs_of(&r)[&plus(d0, 3).to_string()];
    assert_eq!((count(latest, "datesAggregated"), count(latest, "datesSkipped")), (3, 0), "{latest:?}");

    // A late catch-up tick of a covered midnight: its run finds the date done.
    publish(&s, &[tick_for(plus(d0, 1), tz, Trigger::CatchUp)]).await;
    drive(&mut p, 3).await;
    assert_eq!(statistics(&s).await, stats);
    let r = results(&s).await;
    let late = runs_of(&r)[&plus(d0, 1).to_string()];
    assert_eq!(late.outcome, Outcome::Succeeded);
    assert_eq!((count(late, "datesAggregated"), count(late, "datesSkipped")), (0, 1), "{late:?}");
}

// ---------------------------------------------------------------------------------------
// 5. Empty days, rounding, forced re-runs.

#[tokio::test]
async fn an_empty_day_is_emitted_with_zeros() {
    let s = env("Asia/Seoul").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d = days_ago(tz, 2);
    publish(&s, &[tick_for(d, tz, Trigger::Scheduled)]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;
    let stats = statistics(&s).await;
    assert_eq!(stats.len(), 7);
    let st = stats.last().unwrap();
    assert_eq!(st.key, d.to_string());
    assert_eq!(
        (st.total_orders, st.total_sales.as_str(), st.avg_order_amount.as_str(), st.cancelled_orders, st.refund_amount.as_str()),
        (0, "0.00", "0.00", 0, "0.00")
    );
    assert!(st.top.is_empty());
    assert_eq!(st, &expected(&pool, d, tz).await);
}

#[tokio::test]
async fn the_average_order_amount_rounds_half_to_even() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let (d1, d2) = (days_ago(tz, 3), days_ago(tz, 2));
    seed_products(&pool, &["p"]).await;
    let at = |d: NaiveDate| midnight(d, tz) + TimeDelta::hours(9);
    seed_orders(
        &pool,
        &[
            // 20.01 / 2 = 10.005 -> 10.00 (half-up would give 10.01)
            Order::new("a1", "10.01", at(d1)).paid(at(d1)).item("p", 1),
            Order::new("a2", "10.00", at(d1)).paid(at(d1)).item("p", 1),
            // 20.03 / 2 = 10.015 -> 10.02
            Order::new("b1", "10.03", at(d2)).paid(at(d2)).item("p", 1),
            Order::new("b2", "10.00", at(d2)).paid(at(d2)).item("p", 1),
        ],
    )
    .await;
    publish(&s, &[tick_for(d2, tz, Trigger::Scheduled)]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;
    let stats = statistics(&s).await;
    let avg = |d: NaiveDate| stats.iter().find(|x| x.date == d.to_string()).unwrap().avg_order_amount.clone();
    assert_eq!((avg(d1).as_str(), avg(d2).as_str()), ("10.00", "10.02"));
    for d in [d1, d2] {
        assert_eq!(stats.iter().find(|x| x.date == d.to_string()).unwrap(), &expected(&pool, d, tz).await);
    }
}

#[tokio::test]
async fn a_forced_re_run_recomputes_its_date_only_and_keeps_the_event_id() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d = days_ago(tz, 3);
    seed_products(&pool, &PRODUCTS).await;
    seed_orders(&pool, &around_midnights(tz, d, 1, 5)).await;
    publish(&s, &[tick_for(d, tz, Trigger::Scheduled)]).await;
    let mut p = processor_on(&s, pool.clone()).await;
    drive(&mut p, 3).await;
    let before = statistics(&s).await;
    assert_eq!(before.len(), 7);

    // A correction recorded afterwards (a refund dated that day), then an operator's re-run.
    let at = midnight(d, tz) + TimeDelta::hours(23);
    seed_orders(&pool, &[Order::new("late", "55.55", at - TimeDelta::hours(1)).paid(at - TimeDelta::hours(1)).refunded(at, dec("55.55"))])
        .await;
    let mut forced = tick(JOB, Utc::now() - TimeDelta::seconds(5), &[("date", &d.to_string()), ("force", "true")]);
    forced.tick_id = uuid::Uuid::new_v4().to_string();
    forced.trigger = Trigger::Manual;
    publish(&s, &[forced]).await;
    drive(&mut p, 3).await;

    let after = statistics(&s).await;
    assert_eq!(after.len(), 8, "only the forced date again");
    let (old, new) = (&before[6], &after[7]);
    assert_eq!((new.date.as_str(), &new.event_id), (d.to_string().as_str(), &old.event_id));
    assert_ne!(new.refund_amount, old.refund_amount);
    assert_eq!(new, &expected(&pool, d, tz).await);
    let r = results(&s).await;
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|x| x.outcome == Outcome::Succeeded && count(x, "datesAggregated") >= 1), "{r:#?}");
}

// ---------------------------------------------------------------------------------------
// 6. The run's deadline.

/// The deadline holds inside the chunk: an aggregation that cannot finish (the orders table
/// locked by a migration that does not end) is cut by its statement timeout at the run's
/// deadline. The run is TIMED_OUT with its date stored nowhere and emitted nowhere; the next
/// run covers it, and every date is emitted once, in order.
#[tokio::test]
async fn an_aggregation_cut_at_the_run_deadline_stores_nothing_and_the_next_run_covers_its_date() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let pool = test_db(&s).await;
    let d0 = days_ago(tz, 8);
    let p = with_history(&s, &pool, d0).await;
    drop(p);
    let mut short = s.clone();
    short.jobs.get_mut("daily_statistics").unwrap().timeout_secs = 3;
    let mut p = processor_on(&short, pool.clone()).await;

    let mut migration = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE").execute(&mut *migration).await.unwrap();
    let cut = tick_for(plus(d0, 1), tz, Trigger::Scheduled);
    publish(&s, &[cut.clone()]).await;
    // Without a deadline inside the chunk, its aggregation would wait for the lock for good.
    tokio::time::timeout(Duration::from_secs(60), drive(&mut p, 3)).await.expect("the chunk stopped at its deadline");
    let r = results(&s).await;
    let cut_r = r.iter().find(|x| x.tick_id == cut.tick_id).expect("the cut run's result");
    assert_eq!(cut_r.outcome, Outcome::TimedOut, "{cut_r:?}");
    assert_eq!((count(cut_r, "datesAggregated"), count(cut_r, "datesLeft")), (0, 1), "{cut_r:?}");
    assert_eq!(dates_of(&statistics(&s).await), date_range(plus(d0, -6), d0), "nothing emitted");
    migration.rollback().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_statistics").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 7, "nothing stored: no row without its event");

    let next = tick_for(plus(d0, 2), tz, Trigger::Scheduled);
    publish(&s, &[next.clone()]).await;
    drive(&mut p, 3).await;
    let r = results(&s).await;
    let next_r = r.iter().find(|x| x.tick_id == next.tick_id).expect("the next run's result");
    assert_eq!(next_r.outcome, Outcome::Succeeded, "{next_r:?}");
    assert_eq!(count(next_r, "datesAggregated"), 2, "{next_r:?}");
    let stats = statistics(&s).await;
    assert_eq!(dates_of(&stats), date_range(plus(d0, -6), plus(d0, 2)), "each date once, in date order");
    for st in &stats[7..] {
        assert_eq!(st, &expected(&pool, date(&st.date), tz).await);
    }
}

/// The hole the module once documented as a known limit: a chunk's rows are written, its
/// Kafka transaction never commits (the processor dies right before, as a broker outage
/// fails it), and its retry begins after the run's deadline. The retry completes the chunk:
/// every stored date is emitted, once, and the run's result is committed.
#[tokio::test]
async fn dates_stored_before_a_failed_commit_are_emitted_by_a_retry_after_the_deadline() {
    let s = env("UTC").await;
    let tz = tz_of(&s);
    let (pool, database) = crate::common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let d = days_ago(tz, 3);
    seed_products(&pool, &PRODUCTS).await;
    seed_orders(&pool, &around_midnights(tz, plus(d, -1), 2, 5)).await;
    publish(&s, &[tick_for(d, tz, Trigger::Scheduled)]).await;
    let env = [("SJ_JOBS__DAILY_STATISTICS__TIMEOUT_SECS", "3"), ("SJ_SCHEDULER__TIME_ZONE", "UTC")];
    let mut first = spawn_processor(&s, &database, &[env[0], env[1], ("SJ_FAULT_POINT", "before-apply-commit"), ("SJ_FAULT_JOB", JOB)]);
    let status = tokio::task::spawn_blocking(move || first.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "the fault point killed it");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM daily_statistics").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 7, "the chunk's rows were written");
    assert!(statistics(&s).await.is_empty(), "and not emitted");

    // The retry begins past the deadline (planned + 3 s).
    let planned = crate::processor::planned_at(&s, &pool).await;
    past(planned + TimeDelta::seconds(3)).await;
    let mut second = spawn_processor(&s, &database, &env);
    let r = wait_for_results(&s, 1, Duration::from_secs(60)).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].outcome, Outcome::Succeeded, "the started chunk completed: {r:#?}");
    assert_eq!(count(&r[0], "datesAggregated"), 7, "{r:#?}");
    let stats = statistics(&s).await;
    assert_eq!(dates_of(&stats), date_range(plus(d, -6), d), "every stored date emitted once, in order");
    for st in &stats {
        assert_eq!(st, &expected(&pool, date(&st.date), tz).await);
    }
}
