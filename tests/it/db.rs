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
