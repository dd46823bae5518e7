//! Live load counters of the dispatcher's workers, and least-loaded selection.
//!
//! Each worker's load (messages queued plus running) is one counter: the
//! dispatcher adds one before it enqueues, the worker takes one off when the
//! message is finished (or the dispatch is undone). Selection scans the counters
//! with plain loads and picks the smallest, starting at a rotating position so
//! ties spread. The scan and the increment are not one atomic step: two
//! producers racing may pick the same worker, so the balance is approximate under
//! concurrency and exact for one producer. No compare-and-swap protocol is
//! involved; the loom model below checks that counts are never lost or
//! underflow, and that a scan never picks a worker with a higher load than one
//! it has seen as strictly lower.

use crossbeam::utils::CachePadded;
use heijunka_core::sync::atomic::{AtomicUsize, Ordering};

pub(super) struct Loads {
    loads: Box<[CachePadded<AtomicUsize>]>,
    cursor: CachePadded<AtomicUsize>,
}

impl Loads {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            loads: (0..workers)
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            cursor: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// The worker with the smallest load, ties broken by a rotating start.
    pub(super) fn least_loaded(&self) -> usize {
        let n = self.loads.len();
        if n == 1 {
            return 0;
        }
        // Relaxed: only spreads ties; no data is published through it.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_load = self.get(start);
        for i in 1..n {
            if best_load == 0 {
                break;
            }
            let w = (start + i) % n;
            let load = self.get(w);
            if load < best_load {
                best = w;
                best_load = load;
            }
        }
        best
    }

    pub(super) fn add(&self, worker: usize) {
        // Relaxed: a load estimate; the message itself travels through the
        // channel, which synchronises.
        self.loads[worker].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn done(&self, worker: usize) {
        // Relaxed: as `add`.
        let before = self.loads[worker].fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "worker {worker} load underflow");
    }

    pub(super) fn get(&self, worker: usize) -> usize {
        // Relaxed: an estimate, read for selection and statistics.
        self.loads[worker].load(Ordering::Relaxed)
    }

    pub(super) fn total(&self) -> usize {
        (0..self.loads.len()).map(|w| self.get(w)).sum()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::Loads;
    use loom::sync::Arc;
    use loom::thread;

    /// Two producers select, add and finish concurrently: every count comes back,
    /// nothing underflows (the debug assertion), every pick is a valid worker.
    #[test]
    fn counts_are_never_lost() {
        loom::model(|| {
            let loads = Arc::new(Loads::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let loads = Arc::clone(&loads);
                    thread::spawn(move || {
                        let w = loads.least_loaded();
                        assert!(w < 2);
                        loads.add(w);
                        loads.done(w);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(loads.total(), 0);
        });
    }

    /// While a worker finishes a message, a producer's pick is the other worker
    /// only if that one was seen as strictly lower; with one busy worker and one
    /// idle, the idle worker is picked whatever the interleaving.
    #[test]
    fn idle_worker_is_picked_over_busy() {
        loom::model(|| {
            let loads = Arc::new(Loads::new(2));
            loads.add(0);
            loads.add(0);
            let finisher = {
                let loads = Arc::clone(&loads);
                thread::spawn(move || loads.done(0))
            };
            // Worker 0 holds 1 or 2, worker 1 holds 0: worker 1 wins.
            let w = loads.least_loaded();
            assert_eq!(w, 1);
            loads.add(w);
            finisher.join().unwrap();
            assert_eq!(loads.get(0), 1);
            assert_eq!(loads.get(1), 1);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Loads;

    #[test]
    fn one_producer_fills_workers_evenly() {
        let loads = Loads::new(3);
        for n in 1..=30 {
            let w = loads.least_loaded();
            loads.add(w);
            let all: Vec<usize> = (0..3).map(|w| loads.get(w)).collect();
            let (min, max) = (all.iter().min().unwrap(), all.iter().max().unwrap());
            assert!(max - min <= 1, "after {n}: {all:?}");
        }
        assert_eq!(loads.total(), 30);
    }

    #[test]
    fn the_least_loaded_worker_wins_wherever_the_scan_starts() {
        let loads = Loads::new(4);
        for (w, n) in [(0, 3), (1, 2), (2, 5), (3, 4)] {
            for _ in 0..n {
                loads.add(w);
            }
        }
        for _ in 0..8 {
            assert_eq!(loads.least_loaded(), 1);
        }
        loads.done(2);
        loads.done(2);
        loads.done(2);
        loads.done(2);
        for _ in 0..8 {
            assert_eq!(loads.least_loaded(), 2);
        }
    }
}
