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
