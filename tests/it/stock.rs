//! The Redis scripts shared with the Order service: atomic, idempotent per order.

use redis::AsyncCommands;
use scheduled_jobs::jobs::stock::{reservation_key, stock_key, Reserve, Stock};

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
    // A reservation that does not hold whole numbers fails the call, named, and nothing is
    // given back or forgotten, its neighbours' included.
    let (good, bad) = (unique("o"), unique("o"));
    stock.reserve(&good, &[(p1.clone(), 1)]).await.unwrap();
    let _: () = conn.hset(reservation_key(&bad), &p1, "1.5").await.unwrap();
    let err = stock.release_many(&[good.clone(), bad.clone()]).await.unwrap_err().to_string();
    assert!(err.contains(&bad) && err.contains("1.5"), "{err}");
    assert_eq!(stock.stocks(&[p1.clone()]).await.unwrap(), vec![Some(9)], "nothing given back");
    assert_eq!(stock.release(&good).await.unwrap(), 1, "the good reservation is still there");
    let _: () = conn.del(reservation_key(&bad)).await.unwrap();

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
    assert_eq!(stock.stocks(&[p1.clone(), p2.clone()]).await.unwrap(), vec![Some(7), Some(0)]);
    // a and b share p1: its stock comes back with both quantities, once.
    assert_eq!(stock.release_many(&[a.clone(), b.clone(), unique("o")]).await.unwrap(), vec![1, 2, 0]);
    assert_eq!(stock.stocks(&[p1.clone(), p2.clone()]).await.unwrap(), vec![Some(10), Some(1)]);
    assert_eq!(stock.release_many(&[a, b]).await.unwrap(), vec![0, 0], "released once");
    assert_eq!(stock.stocks(&[p1.clone(), p2.clone()]).await.unwrap(), vec![Some(10), Some(1)]);
    // More reservations than one DEL takes (500 keys), sharing one product.
    let many: Vec<String> = (0..1_201).map(|_| unique("o")).collect();
    let _: () = conn.set(stock_key(&p2), 2_000).await.unwrap();
    for o in &many {
        assert_eq!(stock.reserve(o, &[(p2.clone(), 1)]).await.unwrap(), Reserve::Reserved);
    }
    assert_eq!(stock.stocks(&[p2.clone()]).await.unwrap(), vec![Some(799)]);
    assert_eq!(stock.release_many(&many).await.unwrap(), vec![1; 1_201]);
    assert_eq!(stock.stocks(&[p2.clone()]).await.unwrap(), vec![Some(2_000)]);
    assert_eq!(stock.release_many(&many).await.unwrap(), vec![0; 1_201], "every reservation gone");
    let _: () = conn.set(stock_key(&p2), 1).await.unwrap();

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

/// Regression (found by the fault suite, 30-minute profile): stock-sync dropped a stale
/// reservation field, then its compare-and-set was refused because the product moved; the
/// order's late release found nothing to give back, and the quantity was lost until a later
/// run could repair a quiet product. Now the drop and the set are one atomic step.
#[tokio::test]
async fn a_refused_repair_keeps_the_stale_reservation_for_its_late_release() {
    let s = settings();
    let url = secrecy::ExposeSecret::expose_secret(&s.redis_url()).to_string();
    let stock = Stock::connect(&url).await.unwrap();
    let mut conn = stock.connection();
    let p = unique("p");
    let _: () = conn.set(stock_key(&p), 10).await.unwrap();
    // An order holds 2 (cancelled in the DB, its release not yet done): Redis 8, expected 10.
    let stale = unique("o");
    stock.reserve(&stale, &[(p.clone(), 2)]).await.unwrap();
    // Another order reserves 1 between stock-sync's observation (8) and its repair.
    stock.reserve(&unique("o"), &[(p.clone(), 1)]).await.unwrap();
    let refused = stock.compare_and_set_dropping(&p, Some(8), 10, &[stale.clone()]).await.unwrap();
    assert!(!refused, "the product moved: refused");
    assert_eq!(stock.release(&stale).await.unwrap(), 1, "the stale reservation is still there to release");
    assert_eq!(stock.stocks(&[p.clone()]).await.unwrap(), vec![Some(9)], "10 - 1 reserved: nothing lost");

    // Accepted: the value is set and the stale field dropped together, so its late release
    // adds nothing on top of the repair.
    let late = unique("o");
    stock.reserve(&late, &[(p.clone(), 3)]).await.unwrap();
    assert!(stock.compare_and_set_dropping(&p, Some(6), 9, &[late.clone()]).await.unwrap());
    assert_eq!(stock.release(&late).await.unwrap(), 0);
    assert_eq!(stock.stocks(&[p.clone()]).await.unwrap(), vec![Some(9)]);
    // A field already gone (released meanwhile): refused, nothing changed.
    assert!(!stock.compare_and_set_dropping(&p, Some(9), 12, &[late]).await.unwrap());
    assert_eq!(stock.stocks(&[p]).await.unwrap(), vec![Some(9)]);
}
