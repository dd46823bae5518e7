//! [`FairScheduler`]: per-client queues served by weighted deficit round robin.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use heijunka_core::{ConfigError, Rejection, validate};
use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::Rejected;

/// Default bound of each client's queue.
pub const DEFAULT_CLIENT_CAPACITY: usize = 128;
/// Default bound on the number of clients with queued work.
pub const DEFAULT_MAX_CLIENTS: usize = 1024;
/// Default bound on the number of idle clients (no queued work) whose weight is
/// kept; see [`max_weighted_clients`](FairSchedulerBuilder::max_weighted_clients).
pub const DEFAULT_MAX_WEIGHTED_CLIENTS: usize = 1024;
/// Default [`quantum`](FairSchedulerBuilder::quantum): the cost a weight-1 client
/// may send per round, one unit-cost item.
pub const DEFAULT_QUANTUM: u32 = 1;

/// The cost of an item, from [`FairSchedulerBuilder::cost`].
type CostFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// Per-client queues served fairly: deficit round robin (Shreedhar & Varghese,
/// "Efficient fair queueing using deficit round robin", 1995) with weights and
/// item costs.
///
/// Each client has its own bounded queue; a client that floods is rejected at its
/// own bound ([`Rejection::QueueFull`] naming the per-client capacity) and cannot
/// push the others out.
///
/// **Deficit round robin.** Every item has a cost (1 unless a
/// [`cost`](FairSchedulerBuilder::cost) function says otherwise: bytes, rows,
/// tokens). Clients with queued work take turns in a round. At the start of its
/// turn a client's deficit counter grows by `quantum * weight`; it then sends
/// items from its head while the head's cost fits in the deficit, taking each
/// cost off; when the head no longer fits, its turn ends and it keeps the deficit
/// for its next turn. A client whose queue empties leaves the round and its
/// deficit is reset to zero (so idle time banks nothing), and its state is
/// dropped: the scheduler holds state only for clients with queued work (at most
/// [`max_clients`](FairSchedulerBuilder::max_clients); see
/// [`clients`](Self::clients)), and weights for at most
/// [`max_weighted_clients`](FairSchedulerBuilder::max_weighted_clients) idle
/// clients (see [`set_weight`](Self::set_weight)). Over any span in which clients stay backlogged,
/// each gets `weight / sum of backlogged weights` of the **served cost**, within
/// one largest item cost plus one quantum per weight, however different their item
/// costs are.
///
/// The structure sits behind one mutex (held for a few pointer moves, never across
/// an `.await` or user code: the cost function runs before the lock is taken).
/// Pushing is O(1); popping is O(1) when `quantum` is at least the largest item
/// cost (DRR's own advice), and otherwise at most one pass over the backlogged
/// clients: a round in which no client can send is followed by skipping, in one
/// step, every further round in which none could.
///
/// ```
/// use heijunka_backpressure::FairScheduler;
///
/// let s = FairScheduler::builder().client_capacity(2).build()?;
/// s.set_weight("gold", 2)?;
/// for i in 0..2 {
///     s.try_push("gold", i).unwrap();
///     s.try_push("free", i).unwrap();
/// }
/// assert!(s.try_push("free", 9).is_err()); // "free" is full; "gold" is not affected
/// let order: Vec<_> = std::iter::from_fn(|| s.try_pop()).map(|(k, _)| k).collect();
/// assert_eq!(order, ["gold", "gold", "free", "free"]);
/// assert_eq!(s.clients(), 0); // drained clients leave no state
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
///
/// With costs (a request of `n` bytes costs `n`):
///
/// ```
/// use heijunka_backpressure::FairScheduler;
///
/// let s = FairScheduler::<&str, Vec<u8>>::builder()
///     .quantum(1_500)
///     .cost(|req: &Vec<u8>| req.len() as u64)
///     .build()?;
/// s.try_push("bulk", vec![0; 1_500]).unwrap();
/// s.try_push("bulk", vec![0; 1_500]).unwrap();
/// for _ in 0..3 {
///     s.try_push("chat", vec![0; 500]).unwrap();
/// }
/// let order: Vec<_> = std::iter::from_fn(|| s.try_pop()).map(|(k, _)| k).collect();
/// // One 1500-byte request per turn for "bulk", three 500-byte ones for "chat".
/// assert_eq!(order, ["bulk", "chat", "chat", "chat", "bulk"]);
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct FairScheduler<K, T> {
    state: Mutex<State<K, T>>,
    notify: Notify,
    cost: Option<CostFn<T>>,
    client_capacity: usize,
    max_clients: usize,
    max_weighted_clients: usize,
    quantum: u64,
}

struct State<K, T> {
    /// Clients with queued work; an entry is removed when its queue empties.
    clients: HashMap<K, Flow<T>>,
    /// Weights (other than 1) of clients with no queued work.
    idle_weights: IdleWeights<K>,
    /// Entries of `clients` whose weight is not 1.
    weighted_active: usize,
    /// Clients with queued work, in turn order; the front is taking its turn.
    active: VecDeque<K>,
    len: usize,
    rejected: u64,
    closed: bool,
}

/// One client's queue and DRR state.
struct Flow<T> {
    /// Items with their costs (each at least 1).
    queue: VecDeque<(u64, T)>,
    deficit: u64,
    /// Its weight: it lives with the flow and goes back to
    /// [`IdleWeights`] when the queue empties.
    weight: u32,
    /// Whether the current turn at the front has been granted its quantum.
    in_turn: bool,
}

/// Weights of idle clients (no queued work), at most `max` of them: the oldest
/// is evicted to make room (that client goes back to weight 1).
struct IdleWeights<K> {
    /// Weight and the stamp of its entry in `order`.
    map: HashMap<K, (u32, u64)>,
    /// Insertion order; an entry is live while its stamp matches `map`'s. Compacted
    /// when it reaches twice `max`, so it stays bounded too.
    order: VecDeque<(K, u64)>,
    next_stamp: u64,
    max: usize,
}

impl<K> IdleWeights<K> {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            max,
        }
    }
}

impl<K: Hash + Eq + Clone> IdleWeights<K> {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn take(&mut self, client: &K) -> Option<u32> {
        self.map.remove(client).map(|(w, _)| w)
    }

    /// Keeps `weight` for `client`, evicting the oldest idle weights beyond `max`.
    fn keep(&mut self, client: K, weight: u32) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.map.insert(client.clone(), (weight, stamp));
        self.order.push_back((client, stamp));
        while self.map.len() > self.max {
            let Some((k, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|&(_, s)| s == stamp) {
                self.map.remove(&k);
            }
        }
        if self.order.len() >= 2 * self.max {
            let map = &self.map;
            self.order
                .retain(|(k, stamp)| map.get(k).is_some_and(|&(_, s)| s == *stamp));
        }
    }
}

/// Builds a [`FairScheduler`]; see [`FairScheduler::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct FairSchedulerBuilder<K, T> {
    client_capacity: usize,
    max_clients: usize,
    max_weighted_clients: usize,
    quantum: u32,
    cost: Option<CostFn<T>>,
    key: PhantomData<fn() -> K>,
}

impl<K, T> Clone for FairSchedulerBuilder<K, T> {
    fn clone(&self) -> Self {
        Self {
            client_capacity: self.client_capacity,
            max_clients: self.max_clients,
            max_weighted_clients: self.max_weighted_clients,
            quantum: self.quantum,
            cost: self.cost.clone(),
            key: PhantomData,
        }
    }
}

impl<K, T> fmt::Debug for FairSchedulerBuilder<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairSchedulerBuilder")
            .field("client_capacity", &self.client_capacity)
            .field("max_clients", &self.max_clients)
            .field("max_weighted_clients", &self.max_weighted_clients)
            .field("quantum", &self.quantum)
            .field("cost", &self.cost.as_ref().map(|_| "fn"))
            .finish()
    }
}

impl<K, T> FairSchedulerBuilder<K, T> {
    /// The bound of each client's queue. Default [`DEFAULT_CLIENT_CAPACITY`].
    pub fn client_capacity(mut self, n: usize) -> Self {
        self.client_capacity = n;
        self
    }

    /// The most clients with queued work at once. Default [`DEFAULT_MAX_CLIENTS`].
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n;
        self
    }

    /// The most idle clients (no queued work) whose weight is kept. A weight lives
    /// with the client's queue while it has work; when the queue empties the weight
    /// is kept here, and when more than this many idle clients have one, the
    /// weight of the one idle longest (by when it went idle or was set) is dropped
    /// and that client goes back to weight 1. So the weights held never exceed
    /// `max_clients + max_weighted_clients`, however many clients come and go.
    /// Default [`DEFAULT_MAX_WEIGHTED_CLIENTS`].
    pub fn max_weighted_clients(mut self, n: usize) -> Self {
        self.max_weighted_clients = n;
        self
    }

    /// The cost a weight-1 client may send per round (DRR's quantum; a client of
    /// weight `w` gets `w * quantum`). Default [`DEFAULT_QUANTUM`]. DRR advises a
    /// quantum of at least the largest item cost, so every turn sends something.
    pub fn quantum(mut self, n: u32) -> Self {
        self.quantum = n;
        self
    }

    /// The cost of an item (bytes, rows, tokens), in the unit of the
    /// [`quantum`](Self::quantum). Default: every item costs 1. Called once per
    /// push, before the scheduler's lock is taken; a cost of 0 counts as 1, so
    /// every item uses up part of a turn.
    pub fn cost(mut self, cost: impl Fn(&T) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for a zero `client_capacity`,
    /// `max_clients`, `max_weighted_clients` or `quantum`.
    pub fn build(self) -> Result<FairScheduler<K, T>, ConfigError> {
        validate::at_least("client_capacity", self.client_capacity, 1)?;
        validate::at_least("max_clients", self.max_clients, 1)?;
        validate::at_least("max_weighted_clients", self.max_weighted_clients, 1)?;
        validate::at_least("quantum", self.quantum, 1)?;
        Ok(FairScheduler {
            state: Mutex::new(State {
                clients: HashMap::new(),
                idle_weights: IdleWeights::new(self.max_weighted_clients),
                weighted_active: 0,
                active: VecDeque::new(),
                len: 0,
                rejected: 0,
                closed: false,
            }),
            notify: Notify::new(),
            cost: self.cost,
            client_capacity: self.client_capacity,
            max_clients: self.max_clients,
            max_weighted_clients: self.max_weighted_clients,
            quantum: u64::from(self.quantum),
        })
    }
}

/// Live numbers of a [`FairScheduler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FairStats {
    /// Items queued, all clients together.
    pub len: usize,
    /// Clients with queued work (the only clients the scheduler holds state for).
    pub active_clients: usize,
    /// Clients with a weight other than 1 (set by [`FairScheduler::set_weight`]):
    /// those with queued work, plus at most
    /// [`max_weighted_clients`](FairSchedulerBuilder::max_weighted_clients) idle
    /// ones.
    pub weighted_clients: usize,
    /// Items handed back.
    pub rejected: u64,
}

impl<K, T> FairScheduler<K, T> {
    /// A builder with the defaults (the key and item types are inferred, or named
    /// as `FairScheduler::<K, T>::builder`).
    pub fn builder() -> FairSchedulerBuilder<K, T> {
        FairSchedulerBuilder {
            client_capacity: DEFAULT_CLIENT_CAPACITY,
            max_clients: DEFAULT_MAX_CLIENTS,
            max_weighted_clients: DEFAULT_MAX_WEIGHTED_CLIENTS,
            quantum: DEFAULT_QUANTUM,
            cost: None,
            key: PhantomData,
        }
    }
}

impl<K, T> FairScheduler<K, T>
where
    K: Hash + Eq + Clone,
{
    fn lock(&self) -> MutexGuard<'_, State<K, T>> {
        // No user code runs under the lock, so it is never poisoned mid-update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `client`'s weight (default 1). Takes effect from its next turn.
    ///
    /// The weight lives with the client's queue while it has queued work. A client
    /// with no queued work (set before its first push, or after its queue emptied)
    /// keeps its weight among at most
    /// [`max_weighted_clients`](FairSchedulerBuilder::max_weighted_clients) idle
    /// ones; beyond that, the weight of the client idle longest is dropped and it
    /// goes back to weight 1. So the scheduler's state stays bounded however many
    /// distinct clients are weighted; set weights again (for instance on each
    /// push) if more clients than that must keep theirs while idle.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `weight` for 0.
    pub fn set_weight(&self, client: K, weight: u32) -> Result<(), ConfigError> {
        validate::at_least("weight", weight, 1)?;
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(flow) = st.clients.get_mut(&client) {
            st.weighted_active -= usize::from(flow.weight != 1);
            st.weighted_active += usize::from(weight != 1);
            flow.weight = weight;
        } else if weight == 1 {
            st.idle_weights.take(&client);
        } else {
            st.idle_weights.keep(client, weight);
        }
        Ok(())
    }

    /// Forgets `client`'s weight (it goes back to 1).
    pub fn reset_weight(&self, client: &K) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(flow) = st.clients.get_mut(client) {
            st.weighted_active -= usize::from(flow.weight != 1);
            flow.weight = 1;
        } else {
            st.idle_weights.take(client);
        }
    }

    /// Queues `item` for `client`; never waits.
    ///
    /// # Errors
    ///
    /// The item comes back with [`Rejection::QueueFull`] naming the per-client
    /// capacity when that client's queue is full, with [`Rejection::AtCapacity`]
    /// naming `max_clients` when a new client would exceed it, or with
    /// [`Rejection::ShuttingDown`] once closed.
    pub fn try_push(&self, client: K, item: T) -> Result<(), Rejected<T>> {
        // User code, so before the lock.
        let cost = self.cost.as_ref().map_or(1, |f| f(&item)).max(1);
        let mut st = self.lock();
        if st.closed {
            st.rejected += 1;
            return Err(Rejected::new(item, Rejection::ShuttingDown));
        }
        let reason = match st.clients.get(&client) {
            Some(c) if c.queue.len() >= self.client_capacity => Some(Rejection::QueueFull {
                capacity: self.client_capacity,
            }),
            None if st.clients.len() >= self.max_clients => Some(Rejection::AtCapacity {
                limit: self.max_clients as u64,
            }),
            _ => None,
        };
        if let Some(reason) = reason {
            st.rejected += 1;
            return Err(Rejected::new(item, reason));
        }
        {
            let st = &mut *st;
            let flow = match st.clients.entry(client.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let weight = st.idle_weights.take(e.key()).unwrap_or(1);
                    st.weighted_active += usize::from(weight != 1);
                    e.insert(Flow {
                        queue: VecDeque::new(),
                        deficit: 0,
                        weight,
                        in_turn: false,
                    })
                }
            };
            if flow.queue.is_empty() {
                st.active.push_back(client);
            }
            flow.queue.push_back((cost, item));
            st.len += 1;
        }
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// The next item in fair order, with its client; never waits.
    pub fn try_pop(&self) -> Option<(K, T)> {
        let mut guard = self.lock();
        let st = &mut *guard;
        // Turns that ended without a send during this call.
        let mut idle_turns = 0;
        loop {
            let key = st.active.front()?;
            let flow = st
                .clients
                .get_mut(key)
                .expect("an active client has an entry");
            let grant = self.quantum * u64::from(flow.weight);
            if !flow.in_turn {
                flow.in_turn = true;
                flow.deficit = flow.deficit.saturating_add(grant);
            }
            let &(cost, _) = flow
                .queue
                .front()
                .expect("an active client has queued work");
            if cost <= flow.deficit {
                let (_, item) = flow.queue.pop_front().expect("checked non-empty");
                flow.deficit -= cost;
                st.len -= 1;
                if flow.queue.is_empty() {
                    // Leaves the round; its deficit (and all its state) goes, its
                    // weight to the bounded idle weights.
                    let key = st.active.pop_front().expect("checked non-empty");
                    let flow = st.clients.remove(&key).expect("checked present");
                    if flow.weight != 1 {
                        st.weighted_active -= 1;
                        st.idle_weights.keep(key.clone(), flow.weight);
                    }
                    return Some((key, item));
                }
                return Some((key.clone(), item));
            }
            // The head does not fit: the turn ends, the deficit is kept.
            flow.in_turn = false;
            st.active.rotate_left(1);
            idle_turns += 1;
            if idle_turns == st.active.len() {
                self.skip_idle_rounds(st);
                idle_turns = 0;
            }
        }
    }

    /// After a whole round in which no client could send (item costs above the
    /// quanta), adds at once the quanta of the further rounds in which none could
    /// either, so a pop costs one pass, not `cost / quantum` of them. Exactly what
    /// those rounds would have done: every client's deficit grows by its grant
    /// once per round.
    fn skip_idle_rounds(&self, st: &mut State<K, T>) {
        let grant = |flow: &Flow<T>| self.quantum * u64::from(flow.weight);
        let rounds = st
            .active
            .iter()
            .map(|k| {
                let flow = &st.clients[k];
                let short = flow.queue.front().map_or(0, |&(c, _)| c) - flow.deficit;
                short.div_ceil(grant(flow))
            })
            .min()
            .unwrap_or(1)
            .saturating_sub(1);
        if rounds == 0 {
            return;
        }
        for k in &st.active {
            let flow = st
                .clients
                .get_mut(k)
                .expect("an active client has an entry");
            let add = rounds.saturating_mul(grant(flow));
            flow.deficit = flow.deficit.saturating_add(add);
        }
    }

    /// Waits for the next item; `None` once closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only in the poll that returns it, so a
    /// dropped `pop` takes nothing and leaves every queue and deficit as it was. A
    /// wake-up meant for a dropped `pop` is passed on to another waiting `pop`.
    pub async fn pop(&self) -> Option<(K, T)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(x) = self.try_pop() {
                return Some(x);
            }
            if self.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// [`pop`](Self::pop), giving up after `timeout` (tokio's timer).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`pop`](Self::pop): a dropped or timed-out call takes no
    /// item.
    pub async fn pop_timeout(&self, timeout: Duration) -> Option<(K, T)> {
        tokio::time::timeout(timeout, self.pop())
            .await
            .ok()
            .flatten()
    }

    /// Items queued for `client`.
    pub fn client_len(&self, client: &K) -> usize {
        self.lock().clients.get(client).map_or(0, |c| c.queue.len())
    }

    /// Clients the scheduler holds state for: those with queued work. A client
    /// whose queue empties is forgotten (its weight aside, kept among a bounded
    /// number of idle ones: see [`set_weight`](Self::set_weight)), so this never
    /// exceeds
    /// [`max_clients`](FairSchedulerBuilder::max_clients).
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// Items queued, all clients together.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new items; consumers drain what is queued, then `pop` returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> FairStats {
        let st = self.lock();
        FairStats {
            len: st.len,
            active_clients: st.active.len(),
            weighted_clients: st.weighted_active + st.idle_weights.len(),
            rejected: st.rejected,
        }
    }
}

impl<K, T> fmt::Debug for FairScheduler<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairScheduler")
            .field("client_capacity", &self.client_capacity)
            .field("max_clients", &self.max_clients)
            .field("max_weighted_clients", &self.max_weighted_clients)
            .field("quantum", &self.quantum)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn weights_shape_turns() {
        let s = FairScheduler::builder().build().unwrap();
        s.set_weight('a', 3).unwrap();
        for i in 0..6 {
            s.try_push('a', i).unwrap();
            s.try_push('b', i).unwrap();
        }
        let order: String = std::iter::from_fn(|| s.try_pop()).map(|(k, _)| k).collect();
        assert_eq!(order, "aaabaaabbbbb");
        assert!(s.is_empty());
        assert_eq!(s.stats().active_clients, 0);
    }

    #[test]
    fn bounds_and_config() {
        let s = FairScheduler::builder()
            .client_capacity(1)
            .max_clients(1)
            .build()
            .unwrap();
        s.try_push(1, "x").unwrap();
        let e = s.try_push(1, "y").unwrap_err();
        assert_eq!(e.reason(), Rejection::QueueFull { capacity: 1 });
        assert_eq!(e.into_inner(), "y");
        let e = s.try_push(2, "z").unwrap_err();
        assert_eq!(e.reason(), Rejection::AtCapacity { limit: 1 });
        assert_eq!(s.set_weight(1, 0).unwrap_err().field(), "weight");
        assert_eq!(s.stats().rejected, 2);
        let err = FairScheduler::<u8, u8>::builder()
            .client_capacity(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "client_capacity");
        s.close();
        assert_eq!(
            s.try_push(1, "w").unwrap_err().reason(),
            Rejection::ShuttingDown
        );
        assert_eq!(s.try_pop(), Some((1, "x")));
    }

    #[tokio::test(start_paused = true)]
    async fn pop_waits_and_ends_after_close() {
        let s = FairScheduler::builder().build().unwrap();
        assert_eq!(s.pop_timeout(Duration::from_millis(1)).await, None);
        let (got, ()) = tokio::join!(s.pop(), async {
            tokio::task::yield_now().await;
            s.try_push("k", 5).unwrap();
        });
        assert_eq!(got, Some(("k", 5)));
        s.close();
        assert_eq!(s.pop().await, None);
    }
}
