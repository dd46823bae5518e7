//! [`Coalesce`]: concurrent identical requests share one in-flight call
//! (singleflight).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, Weak};

// The flight is a std `Arc` (it is the shared future's `Waker`); its state
// sits behind the sync shim's `Mutex`, so the loom models check the protocol.
use heijunka_core::sync::atomic::{AtomicU64, Ordering};
use heijunka_core::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use heijunka_core::{ConfigError, validate};
use serde::Serialize;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// [`Shared::forget`] as a function pointer.
type Forget<K, T> = fn(&Shared<K, T>, &Arc<Flight<K, T>>);

/// The default bound on keys in flight at once.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The default bound on callers sharing one call.
pub const DEFAULT_MAX_WAITERS: usize = 1024;

/// Why a coalesced call returned no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoalesceError {
    /// The shared call panicked while another caller was driving it (that
    /// caller's task panicked with it).
    #[error("the shared call panicked")]
    Panicked,
}

/// One waiter's place in a flight.
enum Slot {
    Free,
    Waiting(Option<Waker>),
}

struct State<T> {
    /// The shared future, while it runs and nobody is polling it.
    fut: Option<BoxFuture<T>>,
    /// Its output, once done.
    result: Option<T>,
    /// The call that started the flight is still making its future (outside
    /// every lock); joiners wait for it.
    starting: bool,
    poisoned: bool,
    /// Every waiter left before it finished: its future was dropped.
    abandoned: bool,
    /// A waiter is polling the future now (it is out of `fut`).
    polling: bool,
    /// The future asked to be polled again while it was being polled.
    repoll: bool,
    /// Slot 0 (the caller that started the flight), inline: a flight with
    /// one caller allocates no slot list.
    lead: Slot,
    /// Slots 1.. (callers that joined).
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// The only caller left took the output without a clone.
    taken: bool,
    /// Waiters that have not returned and not been dropped.
    live: usize,
}

impl<T> State<T> {
    /// Finished, one way or another: never joined again.
    fn done(&self) -> bool {
        self.result.is_some() || self.poisoned || self.abandoned || self.taken
    }

    fn slot_mut(&mut self, slot: usize) -> &mut Slot {
        match slot {
            0 => &mut self.lead,
            i => &mut self.slots[i - 1],
        }
    }

    /// Takes every registered waker (each waiter registers again when polled).
    fn take_wakers(&mut self) -> Vec<Waker> {
        std::iter::once(&mut self.lead)
            .chain(self.slots.iter_mut())
            .filter_map(|s| match s {
                Slot::Waiting(w) => w.take(),
                Slot::Free => None,
            })
            .collect()
    }

    /// Frees `slot`. When the last waiter leaves a finished flight, its
    /// output is handed back to be dropped after the lock is released: a stale
    /// clone of the flight's waker held elsewhere (the flight is its shared
    /// future's waker) then keeps only the flight, not its output.
    #[must_use = "drop the leftover output after releasing the lock"]
    fn leave(&mut self, slot: usize) -> Option<T> {
        *self.slot_mut(slot) = Slot::Free;
        if slot > 0 {
            self.free.push(slot);
        }
        self.live -= 1;
        if self.live == 0 {
            self.result.take()
        } else {
            None
        }
    }
}

struct Flight<K, T> {
    key: K,
    state: Mutex<State<T>>,
    owner: Weak<Shared<K, T>>,
    /// [`Shared::forget`], instantiated where `K: Hash + Eq` holds, so the
    /// `Drop` of a waiter (which cannot require it) can free the key.
    forget: Forget<K, T>,
}

impl<K, T> Flight<K, T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes this flight from its owner's map (if it is still the one there).
    fn leave_map(self: &Arc<Self>) {
        if let Some(owner) = self.owner.upgrade() {
            (self.forget)(&owner, self);
        }
    }
}

/// The flight is the waker its shared future is polled with (no allocation
/// of its own): it wakes every waiter (any of them may drive the call; one
/// that is not being polled must not stall the others, as in
/// `futures::future::Shared`), or, while a waiter is polling, asks it to poll
/// again. The future holding this waker makes a cycle through the flight,
/// broken whenever the future ends: finished, panicked or abandoned, it is
/// dropped.
impl<K: Send + Sync + 'static, T: Send + 'static> Wake for Flight<K, T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = {
            let mut s = self.lock();
            if s.done() {
                return;
            }
            if s.polling {
                s.repoll = true;
                return;
            }
            s.take_wakers()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    flights: AtomicU64,
    joined: AtomicU64,
    uncoalesced_keys_full: AtomicU64,
    uncoalesced_waiters_full: AtomicU64,
    handoffs: AtomicU64,
    abandoned: AtomicU64,
}

struct Shared<K, T> {
    map: Mutex<HashMap<K, Arc<Flight<K, T>>>>,
    max_keys: usize,
    max_waiters: usize,
    stats: Counters,
}

impl<K: Hash + Eq, T> Shared<K, T> {
    /// Removes `flight` from the map if it is still the one for its key.
    fn forget(&self, flight: &Arc<Flight<K, T>>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
    }
}

/// A [`Coalesce`]'s counts since it was built, and its keys in flight now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CoalesceStats {
    /// Calls made through it.
    pub calls: u64,
    /// Shared calls started (one per key in flight).
    pub flights: u64,
    /// Calls that joined a shared call already in flight.
    pub joined: u64,
    /// Calls run on their own because `max_keys` keys were in flight.
    pub uncoalesced_keys_full: u64,
    /// Calls run on their own because their key had `max_waiters` waiters.
    pub uncoalesced_waiters_full: u64,
    /// Times a waiter that went away handed the driving of a shared call on to
    /// another waiter.
    pub handoffs: u64,
    /// Shared calls dropped unfinished because every waiter went away.
    pub abandoned: u64,
    /// Keys in flight now.
    pub keys_in_flight: usize,
}

/// Singleflight: concurrent calls with the same key share one in-flight call,
/// and each gets a clone of its output. Only calls in flight are shared
/// (a call that starts after the shared one finished makes its own): this is
/// request coalescing, not a cache.
///
/// - **Cancel safe for the others.** The shared call is driven by whichever of
///   its callers is polled; if the caller that started it goes away, another
///   takes over and the call continues. It is dropped (cancelled) only when
///   every caller has gone.
/// - **Bounded.** At most `max_keys` keys in flight and `max_waiters` callers
///   per key; a call beyond either bound runs on its own (counted), so
///   nothing waits unboundedly and nothing is refused.
/// - **Panics** in the shared call reach the caller driving it (its task
///   panics as it would have alone) and the others get
///   [`CoalesceError::Panicked`].
///
/// The output is cloned to each caller: use `Result<V, Arc<E>>` (or `Arc<V>`)
/// for outputs that are not cheap to clone.
///
/// ```
/// use heijunka_retry::Coalesce;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let coalesce: Coalesce<&'static str, u32> = Coalesce::new();
/// let loads = Arc::new(AtomicU32::new(0));
/// let load = || {
///     let loads = loads.clone();
///     async move {
///         loads.fetch_add(1, Ordering::Relaxed);
///         tokio::task::yield_now().await;
///         42
///     }
/// };
/// let (a, b) = tokio::join!(coalesce.call("user:7", &load), coalesce.call("user:7", &load));
/// assert_eq!((a, b), (Ok(42), Ok(42)));
/// assert_eq!(loads.load(Ordering::Relaxed), 1, "one call for both");
/// # }
/// ```
pub struct Coalesce<K, T> {
    shared: Arc<Shared<K, T>>,
}

impl<K, T> Clone for Coalesce<K, T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, T> fmt::Debug for Coalesce<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("max_keys", &self.shared.max_keys)
            .field("max_waiters", &self.shared.max_waiters)
            .finish()
    }
}

impl<K, T> Default for Coalesce<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T> Coalesce<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + 'static,
{
    /// With the default bounds: [`DEFAULT_MAX_KEYS`] keys,
    /// [`DEFAULT_MAX_WAITERS`] callers per key.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_KEYS, DEFAULT_MAX_WAITERS)
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// With at most `max_keys` keys in flight and `max_waiters` callers per key.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `max_keys` or `max_waiters` when zero.
    pub fn with_limits(max_keys: usize, max_waiters: usize) -> Result<Self, ConfigError> {
        validate::at_least("max_keys", max_keys, 1)?;
        validate::at_least("max_waiters", max_waiters, 1)?;
        Ok(Self {
            shared: Arc::new(Shared {
                map: Mutex::new(HashMap::new()),
                max_keys,
                max_waiters,
                stats: Counters::default(),
            }),
        })
    }

    /// The counts, and the keys in flight now.
    pub fn stats(&self) -> CoalesceStats {
        let s = &self.shared.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CoalesceStats {
            calls: load(&s.calls),
            flights: load(&s.flights),
            joined: load(&s.joined),
            uncoalesced_keys_full: load(&s.uncoalesced_keys_full),
            uncoalesced_waiters_full: load(&s.uncoalesced_waiters_full),
            handoffs: load(&s.handoffs),
            abandoned: load(&s.abandoned),
            keys_in_flight: self
                .shared
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        }
    }

    /// Joins the call in flight for `key`, or starts `make()` as that call.
    /// `make` runs only when this caller starts the call (or runs on its own
    /// because a bound was reached).
    ///
    /// # Errors
    ///
    /// [`CoalesceError::Panicked`] when the shared call panicked while another
    /// caller drove it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped caller leaves the shared call, which continues for
    /// the others (driven by the next one polled); dropped by its last caller,
    /// the shared call is dropped too and its key freed. No waker or slot is
    /// left behind.
    pub fn call<F, Fut>(&self, key: K, make: F) -> Coalesced<K, T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let shared = &*self.shared;
        shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        // Lock order: the map, then a flight (never the other way round).
        let mut map = shared.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = map.get(&key) {
            let mut s = flight.lock();
            if !s.done() {
                if s.live < shared.max_waiters {
                    let slot = join(&mut s);
                    drop(s);
                    let flight = flight.clone();
                    drop(map);
                    shared.stats.joined.fetch_add(1, Ordering::Relaxed);
                    return Coalesced {
                        kind: Kind::Shared { flight, slot },
                    };
                }
                drop(s);
                drop(map);
                shared
                    .stats
                    .uncoalesced_waiters_full
                    .fetch_add(1, Ordering::Relaxed);
                return Coalesced {
                    kind: Kind::Own(Box::pin(make())),
                };
            }
            // Finished and about to leave the map: start a new one below.
        } else if map.len() >= shared.max_keys {
            drop(map);
            shared
                .stats
                .uncoalesced_keys_full
                .fetch_add(1, Ordering::Relaxed);
            return Coalesced {
                kind: Kind::Own(Box::pin(make())),
            };
        }
        // A placeholder joiners can wait on while `make` runs outside every
        // lock (it may be slow, or call back into this `Coalesce`).
        let flight = Arc::new(Flight {
            key: key.clone(),
            state: Mutex::new(State {
                fut: None,
                result: None,
                starting: true,
                poisoned: false,
                abandoned: false,
                polling: false,
                repoll: false,
                lead: Slot::Waiting(None),
                slots: Vec::new(),
                free: Vec::new(),
                taken: false,
                live: 1,
            }),
            owner: Arc::downgrade(&self.shared),
            forget: Shared::forget,
        });
        let slot = 0;
        map.insert(key, flight.clone());
        drop(map);
        shared.stats.flights.fetch_add(1, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(make)) {
            Ok(fut) => {
                let wakers = {
                    let mut s = flight.lock();
                    s.fut = Some(Box::pin(fut));
                    s.starting = false;
                    // Joiners that polled while it started.
                    s.take_wakers()
                };
                wakers.into_iter().for_each(Waker::wake);
                Coalesced {
                    kind: Kind::Shared { flight, slot },
                }
            }
            Err(panic) => {
                let wakers = {
                    let mut s = flight.lock();
                    s.starting = false;
                    s.poisoned = true;
                    // Not finished: nothing is left over.
                    let _ = s.leave(slot);
                    s.take_wakers()
                };
                flight.leave_map();
                wakers.into_iter().for_each(Waker::wake);
                resume_unwind(panic)
            }
        }
    }
}

/// Takes a waiter slot.
fn join<T>(s: &mut State<T>) -> usize {
    s.live += 1;
    if matches!(s.lead, Slot::Free) {
        s.lead = Slot::Waiting(None);
        return 0;
    }
    match s.free.pop() {
        Some(i) => {
            s.slots[i - 1] = Slot::Waiting(None);
            i
        }
        None => {
            s.slots.push(Slot::Waiting(None));
            s.slots.len()
        }
    }
}

enum Kind<K, T> {
    Shared {
        flight: Arc<Flight<K, T>>,
        slot: usize,
    },
    Own(BoxFuture<T>),
    Done,
}

/// The future [`Coalesce::call`] returns.
#[must_use = "futures do nothing unless polled"]
pub struct Coalesced<K, T> {
    kind: Kind<K, T>,
}

impl<K, T> fmt::Debug for Coalesced<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Shared { .. } => "Coalesced(shared)",
            Kind::Own(_) => "Coalesced(own)",
            Kind::Done => "Coalesced(done)",
        })
    }
}

impl<K, T> Future for Coalesced<K, T>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + 'static,
{
    type Output = Result<T, CoalesceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Coalesced` is Unpin: its future is boxed.
        let this = self.get_mut();
        let (flight, slot) = match &mut this.kind {
            Kind::Own(fut) => {
                let out = std::task::ready!(fut.as_mut().poll(cx));
                this.kind = Kind::Done;
                return Poll::Ready(Ok(out));
            }
            Kind::Done => panic!("`Coalesced` polled after it completed"),
            Kind::Shared { flight, slot } => (flight.clone(), *slot),
        };
        let mut s = flight.lock();
        if let Some(v) = &s.result {
            // Cloned before leaving: a clone that panics leaves this waiter's
            // slot to its `Drop`.
            let v = v.clone();
            let _left = s.leave(slot);
            drop(s);
            this.kind = Kind::Done;
            return Poll::Ready(Ok(v));
        }
        if s.done() {
            // Poisoned (a waiter left only by finishing or dropping, so never
            // abandoned while this one lives).
            let _left = s.leave(slot);
            drop(s);
            this.kind = Kind::Done;
            return Poll::Ready(Err(CoalesceError::Panicked));
        }
        match s.slot_mut(slot) {
            Slot::Waiting(Some(w)) if w.will_wake(cx.waker()) => {}
            other => *other = Slot::Waiting(Some(cx.waker().clone())),
        }
        if s.polling || s.starting {
            // Another caller drives it (it wakes everyone when done), or its
            // future is being made (its maker wakes everyone then).
            return Poll::Pending;
        }
        let Some(mut fut) = s.fut.take() else {
            // Not done, not starting, not being polled, and no future: only a
            // panic elsewhere leaves this; never wait on it.
            let _left = s.leave(slot);
            drop(s);
            this.kind = Kind::Done;
            return Poll::Ready(Err(CoalesceError::Panicked));
        };
        s.polling = true;
        s.repoll = false;
        drop(s);
        let notify = Waker::from(flight.clone());
        let mut ncx = Context::from_waker(&notify);
        // Polled without the lock held: the future may wake itself from inside
        // `poll`, and its waker takes the lock.
        let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut ncx)));
        let mut s = flight.lock();
        match polled {
            Ok(Poll::Pending) => {
                s.fut = Some(fut);
                s.polling = false;
                let again = std::mem::take(&mut s.repoll);
                drop(s);
                if again {
                    // Woken while it was polled: poll again, but through the
                    // executor (a future that wakes itself must not spin here).
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Ok(Poll::Ready(v)) if s.live == 1 => {
                // The only caller left: it takes the output, no clone.
                s.polling = false;
                s.taken = true;
                let _left = s.leave(slot);
                drop(s);
                this.kind = Kind::Done;
                flight.leave_map();
                Poll::Ready(Ok(v))
            }
            Ok(Poll::Ready(v)) => {
                s.polling = false;
                s.result = Some(v);
                let wakers = s.take_wakers();
                drop(s);
                flight.leave_map();
                wakers.into_iter().for_each(Waker::wake);
                let mut s = flight.lock();
                let out = s.result.clone();
                let _left = s.leave(slot);
                drop(s);
                this.kind = Kind::Done;
                Poll::Ready(out.ok_or(CoalesceError::Panicked))
            }
            Err(panic) => {
                s.polling = false;
                s.poisoned = true;
                let wakers = s.take_wakers();
                let _left = s.leave(slot);
                drop(s);
                this.kind = Kind::Done;
                drop(fut);
                flight.leave_map();
                wakers.into_iter().for_each(Waker::wake);
                resume_unwind(panic)
            }
        }
    }
}

impl<K, T> Drop for Coalesced<K, T> {
    fn drop(&mut self) {
        let Kind::Shared { flight, slot } = std::mem::replace(&mut self.kind, Kind::Done) else {
            return;
        };
        let mut s = flight.lock();
        // Whether it had finished, read before `leave` takes a finished
        // output from its last waiter.
        let finished = s.done();
        let left = s.leave(slot);
        if finished {
            // The output (if this was the last waiter) drops without the lock.
            drop(s);
            drop(left);
            return;
        }
        if s.live == 0 {
            // The last caller left: cancel the shared call and free its key.
            s.abandoned = true;
            let fut = s.fut.take();
            drop(s);
            drop(fut);
            if let Some(owner) = flight.owner.upgrade() {
                owner.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            }
            flight.leave_map();
            return;
        }
        if s.polling {
            // Another waiter is driving it.
            return;
        }
        // This caller may have been woken to drive the call and will never
        // poll again: hand that on to the others.
        let wakers = s.take_wakers();
        drop(s);
        if !wakers.is_empty()
            && let Some(owner) = flight.owner.upgrade()
        {
            owner.stats.handoffs.fetch_add(1, Ordering::Relaxed);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}
