//! [`WakeList`]: the wakers of tasks asleep until a condition may change.
//!
//! The handshake that makes sleeping safe is not here: the sleeper registers
//! its waker, then sets a flag with a read-modify-write on the location that
//! holds its condition (the topic's `tail` for consumers, a subscriber's
//! cursor for publishers waiting for room) and re-checks the condition in the
//! value it read; the side that changes the condition does so with a
//! read-modify-write on that location too, sees the flag, and calls
//! [`WakeList::wake_all`]. A sleeper that goes away leaves its waker behind:
//! the next wake-up wakes it for nothing and clears the list.

use std::sync::PoisonError;
use std::task::Waker;

use heijunka_core::sync::Mutex;

#[derive(Default)]
pub(crate) struct WakeList {
    wakers: Mutex<Vec<Waker>>,
}

impl WakeList {
    /// Registers `waker` (once: a waker that would wake the same task is
    /// replaced). The caller then flags and re-checks its condition.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        match wakers.iter_mut().find(|w| w.will_wake(waker)) {
            Some(w) => w.clone_from(waker),
            None => wakers.push(waker.clone()),
        }
    }

    /// Wakes every registered task.
    #[cold]
    pub(crate) fn wake_all(&self) {
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in wakers {
            w.wake();
        }
    }
}
