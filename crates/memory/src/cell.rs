//! A sequence lock over `N` words: the latest sample, readable without a lock.
//!
//! One writer at a time (the monitor's sampling lock serialises them) bumps the
//! sequence to odd, stores the words, and bumps it to even; a reader reads the
//! sequence, the words and the sequence again, and retries if a write overlapped.
//! The words are atomics themselves (relaxed), so an overlapped read is a stale
//! value to throw away, never a data race (Boehm, "Can seqlocks get along with
//! programming language memory models?", 2012).

use crate::sync::atomic::{AtomicU64, Ordering, fence};
use crate::sync::hint;

/// `N` words published together.
#[derive(Debug)]
pub(crate) struct SeqCell<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> SeqCell<N> {
    pub(crate) fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: [(); N].map(|()| AtomicU64::new(0)),
        }
    }

    /// Publishes `values`. The caller must be the only writer (it holds the lock
    /// that serialises writers); concurrent readers are fine.
    pub(crate) fn write(&self, values: [u64; N]) {
        // Relaxed: only writers store `seq`, and the caller's lock orders writers.
        let seq = self.seq.load(Ordering::Relaxed);
        // Relaxed store of the odd value, then a Release fence: the fence keeps the
        // odd value ahead of the word stores below for any reader whose Acquire
        // fence (in `read`) sees one of those stores.
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(values) {
            // Relaxed: ordered by the fence above and the Release store below.
            word.store(value, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire load of `seq` at the start of `read`; a
        // reader that sees this even value sees every word stored above.
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The words of the last complete write (all zero before the first).
    pub(crate) fn read(&self) -> [u64; N] {
        loop {
            // Acquire: pairs with the Release store that ends `write`.
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                // Relaxed: validated by the sequence check below.
                let values = self.words.each_ref().map(|w| w.load(Ordering::Relaxed));
                // Acquire fence: pairs with the Release fence in `write`, so if any
                // word above came from a write that began after `before`, the
                // reload below sees at least that write's odd value.
                fence(Ordering::Acquire);
                // Relaxed: ordered by the fence above.
                if self.seq.load(Ordering::Relaxed) == before {
                    return values;
                }
            }
            hint::spin_loop();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::{Arc, thread};

    #[test]
    fn reads_the_last_write() {
        let cell = SeqCell::<3>::new();
        assert_eq!(cell.read(), [0, 0, 0]);
        cell.write([1, 2, 3]);
        cell.write([4, 5, 6]);
        assert_eq!(cell.read(), [4, 5, 6]);
    }

    #[test]
    fn concurrent_reads_are_never_torn() {
        let writes = if cfg!(miri) { 50 } else { 20_000 };
        let cell = Arc::new(SeqCell::<4>::new());
        let writer = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                for i in 1..=writes {
                    cell.write([i, i * 2, i * 3, i * 4]);
                }
            })
        };
        let mut last = 0;
        while last < writes && !writer.is_finished() {
            let [a, b, c, d] = cell.read();
            assert_eq!([b, c, d], [a * 2, a * 3, a * 4], "torn read");
            assert!(a >= last, "went back from {last} to {a}");
            last = a;
        }
        writer.join().unwrap();
        assert_eq!(cell.read()[0], writes);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::atomic::AtomicU8;
    use crate::sync::{Arc, thread};

    /// Two writes race one reader: the reader sees the initial words or one write's
    /// words whole, never a mix.
    #[test]
    fn reads_are_whole() {
        loom::model(|| {
            let cell = Arc::new(SeqCell::<2>::new());
            let writer = {
                let cell = Arc::clone(&cell);
                thread::spawn(move || {
                    cell.write([1, 1]);
                    cell.write([2, 2]);
                })
            };
            let [a, b] = cell.read();
            assert_eq!(a, b, "torn read");
            assert!(a <= 2);
            writer.join().unwrap();
            assert_eq!(cell.read(), [2, 2]);
        });
    }

    /// The monitor's publish order: words, then the level (Release). A reader that
    /// loads the level with Acquire and then reads the words sees at least the
    /// write that set that level.
    #[test]
    fn level_then_status_is_never_older() {
        loom::model(|| {
            let cell = Arc::new(SeqCell::<1>::new());
            let level = Arc::new(AtomicU8::new(0));
            let writer = {
                let (cell, level) = (Arc::clone(&cell), Arc::clone(&level));
                thread::spawn(move || {
                    cell.write([1]);
                    // Release: as in `MemoryMonitor::sample_now`.
                    level.store(1, Ordering::Release);
                })
            };
            // Acquire: as in `MemoryMonitor::pressure`; pairs with the store above.
            if level.load(Ordering::Acquire) == 1 {
                assert_eq!(cell.read(), [1]);
            }
            writer.join().unwrap();
        });
    }
}
