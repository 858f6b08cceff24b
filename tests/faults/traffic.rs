//! The shop's traffic, as the Order service makes it: orders placed with their Redis
//! reservations (the same Lua scripts), some paid, and some Redis stock drifted on purpose.
//! Every operation is retried until it succeeds, so a service restart delays the traffic but
//! never leaves an operation half done.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use scheduled_jobs::jobs::stock::{stock_key, Reserve, Stock};
use sqlx::PgPool;

pub const START_STOCK: i64 = 1_000_000;

pub struct Shop {
    pub db: PgPool,
    pub stock: Stock,
    pub tag: String,
    /// Products that orders use (never drifted).
    pub order_products: Vec<String>,
    /// Products whose Redis stock is drifted (never ordered).
    pub drift_products: Vec<String>,
}

/// What the traffic did.
#[derive(Debug, Default, Clone)]
pub struct Done {
    pub placed: usize,
    pub paid: usize,
    pub payments_lost_to_expiry: usize,
    pub drifts: usize,
    pub retries: usize,
    /// Orders whose placement held their Redis reservation without their SQL row for longer
    /// than stock-sync's confirmation delay (a PostgreSQL restart stalls the insert): order,
    /// items, reserved at, inserted at. Stock-sync's documented concurrency limit: a window
    /// longer than `confirm_delay_ms` can be mistaken for drift.
    pub stalled: Vec<(String, Vec<(String, i64)>, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
}

/// A placement slower than this is recorded in [`Done::stalled`] (the suite's
/// `confirm_delay_ms` is the default, 200 ms).
const STALL: chrono::TimeDelta = chrono::TimeDelta::milliseconds(150);

/// Retries `op` until it succeeds (a service is restarting), counting the retries. It never
/// gives up: an operation once begun is always finished, even after the stop flag is raised.
macro_rules! retry {
    ($done:expr, $op:expr) => {{
        loop {
            match $op.await {
                Ok(v) => break v,
                Err(e) => {
                    $done.retries += 1;
                    if $done.retries % 50 == 1 {
                        eprintln!("[traffic] retrying: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }};
}

impl Shop {
    pub async fn new(db: PgPool, stock: Stock, tag: &str, order_products: usize, drift_products: usize) -> Shop {
        let order_products: Vec<String> = (0..order_products).map(|i| format!("{tag}-p{i:02}")).collect();
        let drift_products: Vec<String> = (0..drift_products).map(|i| format!("{tag}-d{i:02}")).collect();
        let all: Vec<String> = order_products.iter().chain(&drift_products).cloned().collect();
        sqlx::query("INSERT INTO products (id, name, stock) SELECT id, 'product ' || id, $2 FROM UNNEST($1::text[]) AS t(id)")
            .bind(&all)
            .bind(START_STOCK as i32)
            .execute(&db)
            .await
            .expect("seed products");
        let mut pipe = redis::pipe();
        for p in &all {
            pipe.set(stock_key(p), START_STOCK).ignore();
        }
        let _: () = pipe.query_async(&mut stock.connection()).await.expect("seed redis stock");
        Shop { db, stock, tag: tag.into(), order_products, drift_products }
    }

    async fn insert_order(&self, id: &str, items: &[(String, i64)]) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO orders (id, user_id, status, total_amount, created_at) VALUES ($1, 'u', 'PAYMENT_WAIT', 0, now()) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (p, q) in items {
            sqlx::query(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ($1, $2, $3, 9.99) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(p)
            .bind(*q as i32)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE orders SET total_amount = (SELECT sum(quantity * unit_price) FROM order_items WHERE order_id = $1) WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Payment: status and DB stock in one SQL transaction; then the reservation is consumed.
    async fn pay_sql(&self, id: &str) -> Result<u64, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let paid = sqlx::query("UPDATE orders SET status = 'PAYMENT_COMPLETED', paid_at = now() WHERE id = $1 AND status = 'PAYMENT_WAIT'")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if paid == 1 {
            sqlx::query("UPDATE products p SET stock = p.stock - oi.quantity FROM order_items oi WHERE oi.order_id = $1 AND oi.product_id = p.id")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(paid)
    }

    /// Runs until `stop`: about `rate` orders per second, a quarter of them paid at a random age
    /// up to `pay_within` (some of those race the expiry), a drift every `drift_every`.
    /// `burst`: orders to place at once, besides the rate (set by the injector before a rolling
    /// restart, so a large order-expiration run is in flight during it).
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        seed: u64,
        rate: f64,
        pay_within: Duration,
        drift_every: Duration,
        stop: Arc<AtomicBool>,
        stop_drift: Arc<AtomicBool>,
        burst: Arc<AtomicUsize>,
    ) -> Done {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_7aff_1c00);
        let mut done = Done::default();
        let mut to_pay: Vec<(Instant, String)> = Vec::new();
        let mut last_drift = Instant::now();
        let pause = Duration::from_secs_f64(1.0 / rate);
        let mut owed = 0usize;
        while !stop.load(Ordering::SeqCst) {
            owed += burst.swap(0, Ordering::SeqCst);
            let id = format!("{}-o{:06}", self.tag, done.placed);
            let n = rng.random_range(1..=3usize);
            let first = rng.random_range(0..self.order_products.len());
            let items: Vec<(String, i64)> =
                (0..n).map(|k| (self.order_products[(first + k) % self.order_products.len()].clone(), rng.random_range(1..=3))).collect();
            // The Order service: Redis first, then SQL.
            let reserving = chrono::Utc::now();
            let r = retry!(done, self.stock.reserve(&id, &items));
            if r == Reserve::Reserved || r == Reserve::AlreadyReserved {
                retry!(done, self.insert_order(&id, &items));
                let inserted = chrono::Utc::now();
                if inserted - reserving > STALL {
                    done.stalled.push((id.clone(), items.clone(), reserving, inserted));
                }
                done.placed += 1;
                if rng.random_bool(0.25) {
                    let age = Duration::from_millis(rng.random_range(0..pay_within.as_millis() as u64));
                    to_pay.push((Instant::now() + age, id));
                }
            }
            let now = Instant::now();
            let due: Vec<String> = to_pay.iter().filter(|(t, _)| *t <= now).map(|(_, id)| id.clone()).collect();
            to_pay.retain(|(t, _)| *t > now);
            for id in due {
                if retry!(done, self.pay_sql(&id)) == 1 {
                    retry!(done, self.stock.consume(&id));
                    done.paid += 1;
                } else {
                    done.payments_lost_to_expiry += 1;
                }
            }
            if !stop_drift.load(Ordering::SeqCst) && last_drift.elapsed() >= drift_every {
                last_drift = Instant::now();
                let p = &self.drift_products[rng.random_range(0..self.drift_products.len())];
                let delta: i64 = if rng.random_bool(0.5) { rng.random_range(1..=5) } else { -rng.random_range(1..=5) };
                let mut c = self.stock.connection();
                let key = stock_key(p);
                retry!(done, c.incr::<_, _, i64>(&key, delta));
                done.drifts += 1;
            }
            if owed > 0 {
                owed -= 1;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
        done
    }
}
