//! Memory of `stock-sync` stays flat as the catalogue grows: the products of a range stream
//! in 1,000 at a time and only candidates are kept, so one range of 200,000 products needs
//! no more heap than one of 20,000. Real PostgreSQL and Redis; the whole catalogue is a single
//! range (the harshest case: a job that loaded its range would hold every product).
//!
//! Its own test binary because it measures the process's heap: a counting global allocator
//! (current and peak bytes, resettable between phases) sees only this test. A hand-written
//! counter rather than a heap profiler crate: those record a backtrace per allocation (slow
//! over hundreds of thousands of rows) and cannot reset their peak between two phases.

#[path = "it/common.rs"]
#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use futures::StreamExt;
use scheduled_jobs::jobs::stock_sync::StockSync;
use scheduled_jobs::jobs::{Deadline, Job, JobCtx};
use scheduled_jobs::jobs::stock::stock_key;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts a phase: the peak restarts from the current heap, which is returned.
fn phase_start() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

const JOB: &str = "stock-sync";

#[tokio::test]
async fn stock_sync_heap_stays_flat_from_20000_to_200000_products_in_one_range() {
    let mut s = common::isolated().await;
    s.jobs.get_mut("stock_sync").expect("stock_sync settings").set_option("confirm_delay_ms", 0);
    let (db, db_name) = common::fresh_db(&s).await;
    scheduled_jobs::db::migrate(&db).await.unwrap();
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap()).await.unwrap();
    let tag = common::unique("mem");
    let id = |i: usize| format!("{tag}-{i:08}");
    let settings = s.job(JOB).cloned().unwrap();
    let ctx = JobCtx { db: db.clone(), redis: Some(redis.clone()), tz: chrono_tz::UTC, settings, deadline: Deadline::none(), effects_done: false };

    // Products [from, to) with Redis equal to their stock, except every 10,000th (drifted:
    // the job finds, records and repairs a few, as a real run does).
    let grow = |from: usize, to: usize| {
        let (db, mut redis, tag) = (db.clone(), redis.clone(), tag.clone());
        async move {
            sqlx::query(
                "INSERT INTO products (id, name, stock)
                 SELECT $1 || '-' || lpad(i::text, 8, '0'), 'p', 100 + i % 7 FROM generate_series($2::bigint, $3::bigint) i",
            )
            .bind(&tag)
            .bind(from as i64)
            .bind(to as i64 - 1)
            .execute(&db)
            .await
            .unwrap();
            for start in (from..to).step_by(1000) {
                let mut pipe = redis::pipe();
                for i in start..(start + 1000).min(to) {
                    let v = 100 + i % 7 + usize::from(i % 10_000 == 5);
                    pipe.set(stock_key(&format!("{tag}-{i:08}")), v).ignore();
                }
                pipe.query_async::<()>(&mut redis).await.unwrap();
            }
        }
    };
    // One range over everything there is: apply it, and measure the heap it needed.
    let apply_all = |n: usize, run: usize| {
        let ctx = &ctx;
        let item = common::work_item(JOB, &format!("{tag}-run-{run}"), 0, vec![id(0), id(n - 1)], Utc::now());
        async move {
            let base = phase_start();
            let out = StockSync.apply(ctx, &item).await.unwrap();
            let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
            (out, peak)
        }
    };

    let (small, big) = (20_000usize, 200_000usize);
    grow(0, small).await;
    let (out, _) = apply_all(small, 0).await; // warm-up: pools, prepared statements, scripts
    assert_eq!(out.counts.get("products"), Some(&(small as i64)), "{out:?}");
    let mut redis_c = redis.clone();
    for i in (0..small).filter(|i| i % 10_000 == 5) {
        redis::cmd("INCR").arg(stock_key(&id(i))).query_async::<i64>(&mut redis_c).await.unwrap();
    }
    let (out, peak_small) = apply_all(small, 1).await;
    assert_eq!(out.counts.get("products"), Some(&(small as i64)), "{out:?}");
    assert_eq!(out.counts.get("repaired"), Some(&2), "the two drifted products: {out:?}");

    grow(small, big).await;
    let (out, peak_big) = apply_all(big, 2).await;
    assert_eq!(out.counts.get("products"), Some(&(big as i64)), "{out:?}");
    assert_eq!(out.counts.get("repaired"), Some(&18), "the 18 drifted products added: {out:?}");

    // Holding the range would cost at least an id String (24 bytes + ~17 of text) per
    // product: > 7 MB more for 180,000 more products. Streaming adds only the candidates.
    let extra = peak_big.saturating_sub(peak_small);
    println!("heap peak while applying one range: {peak_small} B at {small} products, {peak_big} B at {big} (+{extra} B)");
    assert!(
        extra < (big - small) * 4,
        "heap grew by {extra} B for {} more products (peak {peak_small} B -> {peak_big} B): the range is being held in memory",
        big - small
    );
    assert!(peak_big < 8 * 1024 * 1024, "one range needed {peak_big} B of heap");

    // Sanity of the measurement itself: holding the ids of the big range is visible to it.
    let base = phase_start();
    let held: Vec<String> = sqlx::query_scalar::<_, String>("SELECT id FROM products ORDER BY id")
        .fetch(&db)
        .map(|r| r.unwrap())
        .collect()
        .await;
    let holding = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(held.len(), big);
    assert!(holding > (big - small) * 4, "the counter must see a loaded range ({holding} B)");
    drop(held);
    common::drop_db(&s, db, &db_name).await;
    common::unlink_tagged(&s, &tag).await;
}
