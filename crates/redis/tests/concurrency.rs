//! The distributed concurrency limit against a real Redis: shared across
//! replicas, released on drop, a crashed holder's permits back after the lease,
//! and cancellation that leaves no lease behind. Holders are counted in Redis
//! (`ZCARD`), not by the code under test.

mod support;

use std::time::{Duration, Instant};

use heijunka_core::cancel::Polled;
use heijunka_redis::{LeaseError, RedisConcurrencyLimit};

async fn holders(raw: &mut redis::aio::MultiplexedConnection, name: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(format!("heijunka:limit:{name}"))
        .query_async(raw)
        .await
        .unwrap()
}

/// Waits (bounded) until Redis shows `want` holders.
async fn holders_become(raw: &mut redis::aio::MultiplexedConnection, name: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = holders(raw, name).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{now} holders, want {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn two_replicas_share_the_limit_and_a_drop_releases() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let a = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 3)
        .name("db")
        .build()
        .unwrap();
    let b = RedisConcurrencyLimit::builder(support::backend(&server, "b"), 3)
        .name("db")
        .build()
        .unwrap();
    let p1 = a.try_acquire().await.unwrap();
    let p2 = b.try_acquire().await.unwrap();
    let p3 = a.try_acquire().await.unwrap();
    assert_eq!(holders(&mut raw, "db").await, 3);
    let refused = b.try_acquire().await.unwrap_err();
    assert!(
        matches!(refused, LeaseError::AtCapacity { limit: 3, .. }),
        "{refused:?}"
    );
    assert_eq!(a.stats().held, 2);
    assert_eq!(b.stats().held, 1);

    drop(p2);
    holders_become(&mut raw, "db", 2).await;
    let p4 = a.acquire_timeout(Duration::from_secs(1)).await.unwrap();
    drop((p1, p3, p4));
    holders_become(&mut raw, "db", 0).await;
    assert_eq!(a.stats().held + b.stats().held, 0);
}

#[tokio::test]
async fn a_waiter_gets_the_permit_released_elsewhere() {
    let server = support::server();
    let a = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 1)
        .name("one")
        .build()
        .unwrap();
    let b = RedisConcurrencyLimit::builder(support::backend(&server, "b"), 1)
        .name("one")
        .build()
        .unwrap();
    let held = a.try_acquire().await.unwrap();
    let waiter =
        tokio::spawn(async move { b.acquire_timeout(Duration::from_secs(2)).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    drop(held);
    waiter.await.unwrap().unwrap();
    let timed_out = a.acquire_timeout(Duration::from_millis(1)).await;
    assert!(timed_out.is_ok() || matches!(timed_out, Err(LeaseError::TimedOut { .. })));
}

/// A replica that dies holding permits (its runtime stops: no release, no
/// refresh) gives them back after the lease, and not before.
#[test]
fn a_crashed_holders_permits_come_back_after_the_lease() {
    const LEASE: Duration = Duration::from_millis(600);
    let server = support::server();
    let crashed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    crashed.block_on(async {
        // A generous time-out: its first call connects and loads the script.
        let backend = heijunka_redis::RedisBackend::builder(url)
            .call_timeout(Duration::from_millis(200))
            .replica_id("doomed")
            .build()
            .unwrap();
        let limit = RedisConcurrencyLimit::builder(backend, 2)
            .name("lease")
            .lease(LEASE)
            .build()
            .unwrap();
        let a = limit.try_acquire().await.unwrap();
        let b = limit.try_acquire().await.unwrap();
        // Never dropped: the process "crashes" with them held.
        std::mem::forget((a, b));
    });
    let crashed_at = Instant::now();
    drop(crashed);

    let live = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    live.block_on(async {
        let other = RedisConcurrencyLimit::builder(support::backend(&server, "survivor"), 2)
            .name("lease")
            .lease(LEASE)
            .build()
            .unwrap();
        assert!(matches!(
            other.try_acquire().await,
            Err(LeaseError::AtCapacity { .. })
        ));
        let p = other.acquire_timeout(Duration::from_secs(3)).await.unwrap();
        let waited = crashed_at.elapsed();
        assert!(
            waited >= LEASE - Duration::from_millis(50),
            "back after {waited:?}, before the lease ended"
        );
        assert!(
            waited <= LEASE + Duration::from_millis(500),
            "back only after {waited:?}"
        );
        drop(p);
    });
}

/// A held permit is refreshed: it outlives several leases.
#[tokio::test]
async fn a_held_permit_is_refreshed_past_its_lease() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let limit = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 1)
        .name("refresh")
        .lease(Duration::from_millis(300))
        .build()
        .unwrap();
    let held = limit.try_acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        holders(&mut raw, "refresh").await,
        1,
        "still held after 4 leases"
    );
    assert!(!held.is_lost());
    assert!(limit.stats().refreshes >= 3);
    drop(held);
    holders_become(&mut raw, "refresh", 0).await;
}

/// `try_acquire` and `acquire_timeout` dropped after k polls leave no lease in
/// Redis and no permit counted.
#[tokio::test]
async fn a_cancelled_acquire_leaves_no_lease() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let limit = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 2)
        .name("cancel")
        .build()
        .unwrap();
    for polls in 1..=3 {
        let _ = Polled::new(limit.try_acquire()).drop_after(polls);
        let _ = Polled::new(limit.acquire_timeout(Duration::from_secs(1))).drop_after(polls);
    }
    holders_become(&mut raw, "cancel", 0).await;
    assert_eq!(limit.stats().held, 0);
    // Both permits are still there to take.
    let _a = limit.try_acquire().await.unwrap();
    let _b = limit.try_acquire().await.unwrap();
}

/// The hard case: Redis has granted the lease, the answer is on its way, and
/// the caller drops the future before reading it. The lease it never saw is
/// released.
#[tokio::test]
async fn a_lease_granted_to_a_dropped_acquire_is_released() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let limit = RedisConcurrencyLimit::builder(support::backend(&server, "a"), 2)
        .name("granted")
        .build()
        .unwrap();
    // Connected first: the connection's own task then carries the request
    // while the future is not polled.
    drop(limit.try_acquire().await.unwrap());
    holders_become(&mut raw, "granted", 0).await;
    let mut f = Polled::new(limit.try_acquire());
    assert!(!f.poll(), "in flight");
    // Redis runs the script while the future waits, unpolled, for the answer.
    holders_become(&mut raw, "granted", 1).await;
    drop(f);
    holders_become(&mut raw, "granted", 0).await;
    assert_eq!(limit.stats().held, 0);
}

#[tokio::test]
async fn bad_configuration_is_refused_with_the_field() {
    let server = support::server();
    let backend = support::backend(&server, "a");
    let e = RedisConcurrencyLimit::builder(backend.clone(), 0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "limit");
    let e = RedisConcurrencyLimit::builder(backend.clone(), 1)
        .lease(Duration::from_millis(299))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "lease");
    let e = RedisConcurrencyLimit::builder(backend, 1)
        .name("")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "name");
}

/// Two replicas given the same id still hold separate leases.
#[tokio::test]
async fn replicas_sharing_an_id_hold_separate_leases() {
    let server = support::server();
    let mut raw = support::raw(&server).await;
    let a = RedisConcurrencyLimit::builder(support::backend(&server, "same"), 2)
        .name("twins")
        .build()
        .unwrap();
    let b = RedisConcurrencyLimit::builder(support::backend(&server, "same"), 2)
        .name("twins")
        .build()
        .unwrap();
    let pa = a.try_acquire().await.unwrap();
    let pb = b.try_acquire().await.unwrap();
    assert_eq!(holders(&mut raw, "twins").await, 2);
    assert!(a.try_acquire().await.is_err(), "the limit is full");
    drop(pa);
    holders_become(&mut raw, "twins", 1).await;
    drop(pb);
    holders_become(&mut raw, "twins", 0).await;
}
