//! The Redis scripts shared with the Order service: atomic, idempotent per order.

use redis::AsyncCommands;
use scheduled_jobs::stock::{stock_key, Reserve, Stock};

use crate::common::{settings, unique};

#[tokio::test]
async fn reserve_release_consume_and_compare_and_set() {
    let s = settings();
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let stock = Stock::connect(&url).await.unwrap();
    let mut conn = stock.connection();
    let (p1, p2) = (unique("p"), unique("p"));
    let _: () = conn.set(stock_key(&p1), 10).await.unwrap();
    let _: () = conn.set(stock_key(&p2), 1).await.unwrap();

    let order = unique("o");
    let items = vec![(p1.clone(), 3), (p2.clone(), 1)];
    assert_eq!(stock.reserve(&order, &items).await.unwrap(), Reserve::Reserved);
    assert_eq!(stock.reserve(&order, &items).await.unwrap(), Reserve::AlreadyReserved);
    assert_eq!(stock.stocks(&[p1.clone(), p2.clone()]).await.unwrap(), vec![Some(7), Some(0)]);
    // All or nothing: p2 has nothing left, so p1 is not touched either.
    assert_eq!(stock.reserve(&unique("o"), &items).await.unwrap(), Reserve::InsufficientStock);
    assert_eq!(stock.stocks(&[p1.clone()]).await.unwrap(), vec![Some(7)]);

    assert_eq!(stock.release(&order).await.unwrap(), 2);
    assert_eq!(stock.release(&order).await.unwrap(), 0, "released once");
    assert_eq!(stock.stocks(&[p1.clone(), p2.clone()]).await.unwrap(), vec![Some(10), Some(1)]);

    let (a, b) = (unique("o"), unique("o"));
    stock.reserve(&a, &[(p1.clone(), 1)]).await.unwrap();
    stock.reserve(&b, &[(p1.clone(), 2), (p2.clone(), 1)]).await.unwrap();
    assert_eq!(stock.release_many(&[a.clone(), b.clone(), unique("o")]).await.unwrap(), vec![1, 2, 0]);
    assert_eq!(stock.release_many(&[a, b]).await.unwrap(), vec![0, 0], "released once");

    let paid = unique("o");
    assert_eq!(stock.reserve(&paid, &[(p1.clone(), 2)]).await.unwrap(), Reserve::Reserved);
    assert!(stock.consume(&paid).await.unwrap());
    assert_eq!(stock.release(&paid).await.unwrap(), 0, "a paid order has nothing to release");
    assert_eq!(stock.stocks(&[p1.clone()]).await.unwrap(), vec![Some(8)]);

    assert!(!stock.compare_and_set(&p1, Some(9), 100).await.unwrap(), "stale observation refused");
    assert!(stock.compare_and_set(&p1, Some(8), 100).await.unwrap());
    let missing = unique("p");
    assert!(stock.compare_and_set(&missing, None, 5).await.unwrap(), "restores a missing key");
    assert!(!stock.compare_and_set(&missing, None, 6).await.unwrap(), "but only while it is missing");
    assert_eq!(stock.stocks(&[p1, missing]).await.unwrap(), vec![Some(100), Some(5)]);
}
