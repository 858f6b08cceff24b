//! Migrations on a fresh database, applied twice.

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
    let one = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(pool.connect_options().as_ref().clone()).await.unwrap();
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
