//! Listener delivery: a thread delivers only the events queued before it took the
//! dispatch token, the queue is bounded (drops are counted), and every listener
//! sees strictly increasing sequence numbers.
#![cfg(not(loom))]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use heijunka_breaker::{CircuitBreaker, LISTENER_QUEUE_CAPACITY};
use heijunka_core::ManualClock;

/// A breaker whose listener blocks on its first event until the test says so, and
/// records (sequence, delivering thread) of every event.
struct Fixture {
    b: CircuitBreaker,
    seen: Arc<Mutex<Vec<(u64, ThreadId)>>>,
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn fixture() -> Fixture {
    let b = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let sink = seen.clone();
    b.subscribe(move |t| {
        let first = {
            let mut seen = sink.lock().unwrap();
            seen.push((t.sequence, std::thread::current().id()));
            seen.len() == 1
        };
        if first {
            let _ = entered_tx.send(());
            // Bounded: the test always releases; a broken build fails, not hangs.
            let _ = release_rx
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(30));
        }
    });
    Fixture {
        b,
        seen,
        entered,
        release,
    }
}

/// Alternates manual states: each call is one transition.
fn transition(b: &CircuitBreaker, i: usize) {
    if i.is_multiple_of(2) {
        b.disable()
    } else {
        b.force_open()
    }
}

#[test]
fn the_dispatching_thread_delivers_only_what_was_queued_before_it() {
    let f = fixture();
    let holder = {
        let b = f.b.clone();
        std::thread::spawn(move || {
            b.force_open();
            std::thread::current().id()
        })
    };
    f.entered.recv().unwrap(); // the holder is in the listener, holding the token
    for i in 0..20 {
        transition(&f.b, i);
    }
    f.release.send(()).unwrap();
    let holder = holder.join().unwrap();
    let by_holder = f
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| *t == holder)
        .count();
    assert_eq!(
        by_holder,
        1,
        "the holder delivered events queued after it took the token: {:?}",
        f.seen.lock().unwrap()
    );
    // The next dispatch (any transition, or stats) delivers the rest, in order.
    let _ = f.b.stats();
    let seen = f.seen.lock().unwrap();
    let sequences: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, (1..=21).collect::<Vec<_>>());
}

#[test]
fn the_queue_is_bounded_and_drops_are_counted() {
    let f = fixture();
    let holder = {
        let b = f.b.clone();
        std::thread::spawn(move || b.force_open())
    };
    f.entered.recv().unwrap();
    let extra = 50;
    for i in 0..LISTENER_QUEUE_CAPACITY + extra {
        transition(&f.b, i);
    }
    assert_eq!(f.b.stats().dropped_events, extra as u64);
    f.release.send(()).unwrap();
    holder.join().unwrap();
    let _ = f.b.stats();
    let seen = f.seen.lock().unwrap();
    assert_eq!(seen.len(), 1 + LISTENER_QUEUE_CAPACITY);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "sequence numbers strictly increase"
    );
}
