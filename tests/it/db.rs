//! Migrations on a fresh database, applied twice; the run deadline's SQL; the run's claim.

use crate::common::{drop_db, fresh_db, settings};

#[tokio::test]
async fn migrations_apply_twice_safely() {
    let s = settings();
    let (pool, name) = fresh_db(&s).await;
    let first = scheduled_jobs::db::migrate(&pool).await.unwrap();
    assert_eq!(first, scheduled_jobs::db::MIGRATOR.iter().count());
    sqlx::query("INSERT INTO products (id, name, stock) VALUES ('p1', 'keyboard', 5)").execute(&pool).await.unwrap();
    let second = scheduled_jobs::db::migrate(&pool).await.unwrap();
    assert_eq!(second, 0);
    let stock: i32 = sqlx::query_scalar("SELECT stock FROM products WHERE id = 'p1'").fetch_one(&pool).await.unwrap();
    assert_eq!(stock, 5, "data survives a second migrate");
    for table in ["orders", "order_items", "products", "daily_statistics"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&pool).await.unwrap();
        assert!(exists, "{table}");
    }
    let idx: bool = sqlx::query_scalar("SELECT to_regclass('orders_status_created_at_idx') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(idx, "expiration scan index");
    // Money is exact: numeric(15,2) in, rust_decimal out.
    sqlx::query("INSERT INTO orders (id, user_id, status, total_amount, created_at) VALUES ('o1','u1','PAYMENT_WAIT', 12345678901.23, now())")
        .execute(&pool)
        .await
        .unwrap();
    let amount: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT total_amount FROM orders WHERE id = 'o1'").fetch_one(&pool).await.unwrap();
    assert_eq!(amount.to_string(), "12345678901.23");
    drop_db(&s, pool, &name).await;
}

/// The run deadline's SQL mechanism on the real database: a statement past the time left is
/// cancelled by PostgreSQL and reported as the deadline, and the pooled connection it ran on
/// keeps no changed setting (`SET LOCAL` ends with the transaction).
#[tokio::test]
async fn a_deadline_transaction_cuts_its_statements_and_leaves_the_connection_as_it_was() {
    use scheduled_jobs::jobs::{Deadline, JobError};
    let s = settings();
    let (pool, name) = fresh_db(&s).await;
    let one = pool_of_one(&pool).await;
    let before: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&one).await.unwrap();

    let d = Deadline::at(chrono::Utc::now() + chrono::TimeDelta::milliseconds(500));
    let started = std::time::Instant::now();
    let mut tx = d.begin(&one).await.unwrap();
    let e = sqlx::query("SELECT pg_sleep(30)").execute(&mut *tx).await.unwrap_err();
    assert!(matches!(d.sql(e), JobError::DeadlineReached(_)));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "cut at the deadline: {:?}", started.elapsed());
    drop(tx);
    let after: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&one).await.unwrap();
    assert_eq!(after, before, "the pooled connection keeps no deadline");

    // Past the deadline nothing starts; without one, nothing is limited.
    assert!(matches!(d.begin(&one).await, Err(JobError::DeadlineReached(_))));
    let mut tx = Deadline::none().begin(&one).await.unwrap();
    let inside: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(inside, before);
    tx.commit().await.unwrap();
    one.close().await;
    drop_db(&s, pool, &name).await;
}

/// The run's claim (`bookkeeping::try_finalize`) on the real database: the run is claimed
/// exactly once, by the chunk whose record completes it — whatever order the chunks come in
/// (the run's last chunks first, strided, in order, its first chunk last), however many chunks
/// the run has (none, one, a few, dozens), and whether the seal comes before or after them. A
/// chunk only started does not count; a retry of the claiming chunk claims again.
#[tokio::test]
async fn a_run_is_claimed_once_by_the_chunk_that_completes_it_whatever_the_order() {
    use scheduled_jobs::runtime::processor::bookkeeping::{self as b, ChunkOutcome};
    use scheduled_jobs::runtime::processor::SEAL;
    let s = settings();
    let (pool, name) = fresh_db(&s).await;
    scheduled_jobs::db::migrate(&pool).await.unwrap();
    let counts = std::collections::BTreeMap::from([("ordersCancelled".to_string(), 1i64)]);
    // 16: the tail a cheaper claim tried in session 26 looked at first (not kept).
    let tail = 16;
    let n = 2 * tail + 8;
    // Tail first; a pseudo-random order (stride coprime to n); in order; the tail's last chunk
    // first and the run's first chunk last.
    let orders: Vec<(&str, Vec<usize>)> = vec![
        ("tail first", (n - tail..n).chain(0..n - tail).collect()),
        ("strided", (0..n).map(|i| (i * 7 + 3) % n).collect()),
        ("in order", (0..n).collect()),
        ("first chunk last", (1..n).rev().chain([0]).collect()),
        ("fewer than the tail", (0..3).rev().collect()),
        ("one chunk", vec![0]),
    ];
    for (case, order) in orders {
        let run = format!("claim-{}", case.replace(' ', "-"));
        let count = order.len() as i32;
        b::seal(&pool, &run, "noop", "p", count, chrono::Utc::now()).await.unwrap();
        assert!(b::try_finalize(&pool, &run, SEAL).await.unwrap().is_none(), "{case}: the seal of a run with chunks left");
        let last = *order.last().unwrap() as i32;
        // The last chunk is started first: started is not recorded.
        assert!(matches!(b::start_chunk(&pool, &run, last, "i", false).await.unwrap(), b::Start::Fresh));
        for (pos, &k) in order.iter().enumerate() {
            let k = k as i32;
            b::record_chunk(&pool, &run, k, ChunkOutcome::Applied, &counts, None, "i").await.unwrap();
            let claimed = b::try_finalize(&pool, &run, k).await.unwrap();
            if pos + 1 < order.len() {
                assert!(claimed.is_none(), "{case}: chunk {k} (record {} of {count}) claimed a run with chunks left", pos + 1);
            } else {
                let f = claimed.unwrap_or_else(|| panic!("{case}: the chunk that completed the run ({k}) did not claim it"));
                assert_eq!(f.chunk_count, count, "{case}");
                assert_eq!(f.counts["ordersCancelled"], i64::from(count), "{case}");
            }
        }
        assert!(b::try_finalize(&pool, &run, last).await.unwrap().is_some(), "{case}: a retry of the claiming chunk claims again");
        for other in [0, count - 1, SEAL] {
            if other != last {
                assert!(b::try_finalize(&pool, &run, other).await.unwrap().is_none(), "{case}: {other} claimed a run claimed by {last}");
            }
        }
    }

    // A run without chunks is claimed by its seal; chunks recorded before the seal was
    // written leave the claim to the seal.
    b::seal(&pool, "claim-empty", "noop", "p", 0, chrono::Utc::now()).await.unwrap();
    assert!(b::try_finalize(&pool, "claim-empty", SEAL).await.unwrap().is_some(), "an empty run's seal claims it");
    let early = (n - 1) as i32;
    for k in 0..=early {
        b::record_chunk(&pool, "claim-early", k, ChunkOutcome::Applied, &counts, None, "i").await.unwrap();
        assert!(b::try_finalize(&pool, "claim-early", k).await.unwrap().is_none(), "no seal yet: nothing to claim");
    }
    b::seal(&pool, "claim-early", "noop", "p", early + 1, chrono::Utc::now()).await.unwrap();
    assert!(b::try_finalize(&pool, "claim-early", SEAL).await.unwrap().is_some(), "the seal written last claims the run");
    drop_db(&s, pool, &name).await;
}

/// A transaction begun for a job's effects leaves nothing open when its task is aborted at any
/// point — while BEGIN is in flight included, the window in which sqlx 0.8.6 alone returns the
/// connection to the pool inside an open transaction (`scheduled_jobs::db::begin`). Effects
/// started ahead are stopped that way. On a pool of one connection, each round aborts a task
/// after a different number of yields, runs a statement on that connection, and checks from
/// another that the connection is idle (not in a transaction) and holds no lock of the
/// aborted one.
#[tokio::test]
async fn a_transaction_begun_by_an_aborted_task_is_never_left_open_on_its_connection() {
    let s = settings();
    let (pool, name) = fresh_db(&s).await;
    let one = pool_of_one(&pool).await;
    let mut aborted_in_begin = 0;
    for round in 0..300u32 {
        let p = one.clone();
        let began = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = began.clone();
        let task = tokio::spawn(async move {
            let mut tx = scheduled_jobs::db::begin(&p).await.unwrap();
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            sqlx::query("SELECT pg_advisory_xact_lock(42)").execute(&mut *tx).await.unwrap();
            std::future::pending::<()>().await;
        });
        for _ in 0..round % 12 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        if !began.load(std::sync::atomic::Ordering::SeqCst) {
            aborted_in_begin += 1;
        }
        // The connection's backend, seen from another connection once a statement of its own
        // has run on it: idle, not idle in a transaction, and holding no lock.
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&one).await.unwrap();
        let (state, locked): (Option<String>, bool) = sqlx::query_as(
            "SELECT (SELECT state FROM pg_stat_activity WHERE pid = $1),
                    EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 42)",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(state.as_deref(), Some("idle"), "round {round}: the connection was left inside the aborted task's transaction");
        assert!(!locked, "round {round}: the aborted transaction still holds its lock");
    }
    assert!(aborted_in_begin > 0, "no round aborted a task before its transaction had begun");
    one.close().await;
    drop_db(&s, pool, &name).await;
}

/// A pool of one connection to `pool`'s database: every use of it gets the same connection.
async fn pool_of_one(pool: &sqlx::PgPool) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(pool.connect_options().as_ref().clone()).await.unwrap()
}
