//! Load shedding by criticality, from the degradation table in `Signal::check_for`'s
//! docs: sheddable work goes first, critical work last, and `check()` is the
//! default criticality's decision.

use std::sync::Arc;

use heijunka_backpressure::{BoundedQueue, ConcurrencyLimit, LoadShedder, Signal, from_fn};
use heijunka_core::{Criticality, Rejection};

const ALL: [Criticality; 3] = Criticality::ALL;

/// Which criticalities `signal` sheds now, least important first.
fn shed(signal: &dyn Signal) -> [bool; 3] {
    ALL.map(|c| signal.check_for(c).is_err())
}

#[test]
fn a_queue_sheds_sheddable_at_warn_default_at_reject_critical_when_full() {
    let q = BoundedQueue::<u32>::builder(10)
        .warn_at(0.5)
        .reject_at(0.8)
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..10 {
        seen.push((q.len(), shed(&q)));
        // try_push itself refuses from the reject mark.
        if q.try_push(i).is_err() {
            break;
        }
    }
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[4], (4, [false, false, false]));
    assert_eq!(seen[5], (5, [true, false, false]), "warn mark");
    assert_eq!(seen[8], (8, [true, true, false]), "reject mark");
    assert_eq!(q.check(), Err(Rejection::QueueFull { capacity: 10 }));
}

#[test]
fn a_full_queue_sheds_critical_work_too() {
    let q = BoundedQueue::<u32>::builder(4)
        .reject_at(1.0)
        .build()
        .unwrap();
    for i in 0..4 {
        q.try_push(i).unwrap();
    }
    assert_eq!(shed(&q), [true, true, true]);
}

#[test]
fn a_limit_keeps_its_last_fifth_from_sheddable_work() {
    let limit = ConcurrencyLimit::new(10).unwrap();
    let mut held = Vec::new();
    for in_use in 0..=10 {
        let expected = match in_use {
            0..=7 => [false, false, false],
            8 | 9 => [true, false, false],
            _ => [true, true, true],
        };
        assert_eq!(shed(&limit), expected, "{in_use} in use");
        assert_eq!(limit.check().is_err(), expected[1], "check() is default's");
        if in_use < 10 {
            held.push(limit.try_acquire().unwrap());
        }
    }
}

#[test]
fn a_shedder_asks_each_signal_for_the_criticality() {
    let limit = ConcurrencyLimit::new(5).unwrap();
    let _held = limit.try_acquire_many(4).unwrap();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c = closed.clone();
    let shedder = LoadShedder::builder()
        .signal(limit.clone())
        .signal(from_fn(move || {
            if c.load(std::sync::atomic::Ordering::Relaxed) {
                Err(Rejection::ShuttingDown)
            } else {
                Ok(())
            }
        }))
        .build();
    assert_eq!(shed(&shedder), [true, false, false]);
    assert_eq!(shedder.stats().rejected, 1);
    // A closure signal knows no criticality: it sheds everything alike.
    closed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(shed(&shedder), [true, true, true]);
    // Through an Arc, too.
    let shared: Arc<dyn Signal> = Arc::new(shedder);
    assert_eq!(shed(&shared), [true, true, true]);
}

#[test]
fn a_rate_limiter_keeps_its_reserve_for_critical_work_under_overload() {
    use heijunka_backpressure::{Gcra, RateLimiter};
    use heijunka_core::ManualClock;
    use std::time::Duration;
    let clock = ManualClock::new();
    let limiter = Gcra::builder(100.0)
        .burst(10)
        .critical_reserve(3)
        .clock(clock.clock())
        .build()
        .unwrap();
    let (mut default_ok, mut critical_ok, mut critical_offered) = (0, 0, 0);
    // 10 s: default work at 1,000/s (ten times the rate), critical at 20/s.
    for ms in 0..10_000u64 {
        if limiter.check_n_for(1, Criticality::Default).is_ok() {
            default_ok += 1;
        }
        if ms % 50 == 0 {
            critical_offered += 1;
            if limiter.check_n_for(1, Criticality::Critical).is_ok() {
                critical_ok += 1;
            }
        }
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(
        critical_ok, critical_offered,
        "every critical request passed"
    );
    // The rate holds for everything together.
    assert!(
        default_ok + critical_ok <= 1_000 + 10,
        "{default_ok} + {critical_ok}"
    );
    assert!(
        default_ok >= 750,
        "default work keeps the rest: {default_ok}"
    );
    // Without the reserve, critical work competes and loses most of the time.
    let plain = Gcra::builder(100.0)
        .burst(10)
        .clock(clock.clock())
        .build()
        .unwrap();
    let mut lost = 0;
    for ms in 0..2_000u64 {
        let _ = plain.check_n_for(1, Criticality::Default);
        if ms % 50 == 0 && plain.check_n_for(1, Criticality::Critical).is_err() {
            lost += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    assert!(lost > 20, "{lost}");
}

#[test]
fn a_reserve_not_below_the_burst_is_refused_by_name() {
    let e = heijunka_backpressure::Gcra::builder(10.0)
        .burst(2)
        .critical_reserve(2)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "critical_reserve");
}

#[test]
fn a_priority_queue_keeps_room_for_critical_work() {
    use heijunka_backpressure::{PriorityQueue, Pushed};
    let q = PriorityQueue::builder(3, 10)
        .reserve_for_top(2)
        .build()
        .unwrap();
    let mut refused = 0;
    let mut displaced = 0;
    for i in 0..20 {
        let c = if i % 2 == 0 {
            Criticality::Sheddable
        } else {
            Criticality::Default
        };
        match q.try_push_for(c, i) {
            Ok(Pushed::Displaced { .. }) => displaced += 1,
            Ok(_) => {}
            Err(_) => refused += 1,
        }
    }
    // Eight slots for other work; once they are taken default work displaces
    // sheddable work (four times), and sheddable pushes are refused.
    assert_eq!(q.len(), 8);
    assert_eq!((displaced, refused), (4, 8));
    assert_eq!(q.stats().lens, vec![0, 8, 0]);
    // Critical work takes the reserve without displacing anything...
    assert_eq!(
        q.try_push_for(Criticality::Critical, 100).unwrap(),
        Pushed::Queued
    );
    assert_eq!(
        q.try_push_for(Criticality::Critical, 101).unwrap(),
        Pushed::Queued
    );
    // ...then displaces the newest default item, handed back.
    assert!(matches!(
        q.try_push_for(Criticality::Critical, 102).unwrap(),
        Pushed::Displaced { class: 1, .. }
    ));
    // And is served first.
    assert_eq!(q.try_pop_with_class(), Some((0, 100)));
    let e = PriorityQueue::<u8>::builder(3, 4)
        .reserve_for_top(4)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "reserve_for_top");
}

#[test]
fn a_plain_check_is_default_work_and_leaves_the_reserve() {
    use heijunka_backpressure::{Gcra, RateLimiter, until_ready};
    use heijunka_core::ManualClock;
    let limiter = Gcra::builder(10.0)
        .burst(3)
        .critical_reserve(1)
        .clock(ManualClock::new().clock())
        .build()
        .unwrap();
    assert!(RateLimiter::check(&limiter).is_ok());
    assert!(RateLimiter::check(&limiter).is_ok());
    // Only the reserve is left: a plain check is refused, critical work passes.
    assert!(RateLimiter::check(&limiter).is_err());
    assert!(limiter.check_n_for(1, Criticality::Critical).is_ok());
    // Asking for more than the burst less the reserve can never pass at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let e = rt.block_on(until_ready(&limiter, 3)).unwrap_err();
    assert!(matches!(
        e,
        heijunka_backpressure::RateLimitError::InsufficientCapacity { .. }
    ));
}
