//! Publishing pooled events allocates nothing in steady state, counted with
//! `heijunka-memory`'s counting allocator.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use heijunka_event_bus::{Event, Policy, Topic};
use heijunka_memory::{CountingAlloc, measure_allocations};
use heijunka_recycler::Recycler;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::system();

/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) `f` made on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    measure_allocations(f).1.allocations
}

/// Polls a future that must complete at once (the buffers have room).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the publish had to wait"),
    }
}

#[test]
fn publishing_pooled_events_does_not_allocate() {
    let pool = Recycler::new(64, || Vec::<u8>::with_capacity(64)).unwrap();
    // A ring of 32: an event goes back to the pool when its slot is reused.
    let topic = Topic::<Vec<u8>>::with_capacity("md", 32).unwrap();
    let mut subs: Vec<_> = [
        Policy::Block,
        Policy::default(),
        Policy::Reject,
        Policy::DropOldest,
    ]
    .into_iter()
    .map(|p| topic.subscriber().buffer(16).policy(p).subscribe().unwrap())
    .collect();
    let round = |i: u8, subs: &mut Vec<heijunka_event_bus::Subscription<Vec<u8>>>| {
        let mut v = pool.get();
        v.push(i);
        let r = if i.is_multiple_of(2) {
            now(topic.publish(Event::pooled(v.into_shared()).with_version(u64::from(i))))
        } else {
            topic.try_publish(Event::pooled(v.into_shared()))
        }
        .unwrap();
        assert_eq!(r.delivered, 4);
        for s in subs.iter_mut() {
            assert_eq!(s.try_recv().map(|e| e[0]), Some(i));
        }
    };
    // Warm up: the pool's values and shared-handle slots, thread-locals, and
    // the ring, whose slots hold their events until reused.
    for i in 0..64 {
        round(i, &mut subs);
    }
    let n = allocations_in(|| {
        for i in 0..200_u8 {
            round(i, &mut subs);
        }
    });
    assert_eq!(n, 0, "{n} allocations in 200 publishes");
    let s = pool.stats();
    assert_eq!(s.gets - s.returns, 32, "the ring holds the last 32");
    drop((subs, topic));
    let s = pool.stats();
    assert_eq!(s.gets, s.returns, "all back once the topic is gone");
}

#[test]
fn publishing_inline_events_does_not_allocate() {
    let topic = Topic::<u64>::new("ticks").unwrap();
    let mut subs: Vec<_> = (0..4)
        .map(|_| {
            topic
                .subscriber()
                .buffer(16)
                .policy(Policy::Block)
                .subscribe()
                .unwrap()
        })
        .collect();
    let mut round = |i: u64| {
        let r = now(topic.publish(Event::inline(i))).unwrap();
        assert_eq!(r.delivered, 4);
        for s in subs.iter_mut() {
            assert_eq!(s.try_recv().map(|e| *e), Some(i));
        }
    };
    for i in 0..8 {
        round(i);
    }
    let n = allocations_in(|| {
        for i in 0..200 {
            round(i);
        }
    });
    assert_eq!(n, 0, "{n} allocations in 200 publishes");
}
