//! [`FairScheduler`]: per-client queues served by weighted deficit round robin.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
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

/// Per-client queues served fairly: deficit round robin (Shreedhar & Varghese) with
/// weights.
///
/// Each client has its own bounded queue; a client that floods is rejected at its
/// own bound ([`Rejection::QueueFull`] naming the per-client capacity) and cannot
/// push the others out. Clients with queued work take turns; in each turn a client
/// may take up to `weight * quantum` items (every item costs one), so over time
/// each backlogged client gets `weight / sum of backlogged weights` of the output.
///
/// The structure sits behind one mutex (held for a few pointer moves, never across
/// an `.await` or user code); pushing and popping are O(1). The number of clients
/// with queued work is bounded by [`max_clients`](FairSchedulerBuilder::max_clients);
/// a client's entry goes away when its queue empties (its weight, if set with
/// [`set_weight`](Self::set_weight), is kept).
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
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
pub struct FairScheduler<K, T> {
    state: Mutex<State<K, T>>,
    notify: Notify,
    client_capacity: usize,
    max_clients: usize,
    quantum: u32,
}

struct State<K, T> {
    clients: HashMap<K, Client<T>>,
    weights: HashMap<K, u32>,
    /// Clients with queued work, in turn order; the front is being served.
    active: VecDeque<K>,
    len: usize,
    rejected: u64,
    closed: bool,
}

struct Client<T> {
    queue: VecDeque<T>,
    deficit: u64,
}

/// Builds a [`FairScheduler`]; see [`FairScheduler::builder`].
#[derive(Clone, Copy, Debug)]
#[must_use = "a builder does nothing until `build()`"]
pub struct FairSchedulerBuilder {
    client_capacity: usize,
    max_clients: usize,
    quantum: u32,
}

impl FairSchedulerBuilder {
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

    /// Items a weight-1 client may take per turn. Default 1.
    pub fn quantum(mut self, n: u32) -> Self {
        self.quantum = n;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field for a zero `client_capacity`,
    /// `max_clients` or `quantum`.
    pub fn build<K, T>(self) -> Result<FairScheduler<K, T>, ConfigError> {
        validate::at_least("client_capacity", self.client_capacity, 1)?;
        validate::at_least("max_clients", self.max_clients, 1)?;
        validate::at_least("quantum", self.quantum, 1)?;
        Ok(FairScheduler {
            state: Mutex::new(State {
                clients: HashMap::new(),
                weights: HashMap::new(),
                active: VecDeque::new(),
                len: 0,
                rejected: 0,
                closed: false,
            }),
            notify: Notify::new(),
            client_capacity: self.client_capacity,
            max_clients: self.max_clients,
            quantum: self.quantum,
        })
    }
}

/// Live numbers of a [`FairScheduler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FairStats {
    /// Items queued, all clients together.
    pub len: usize,
    /// Clients with queued work.
    pub active_clients: usize,
    /// Items handed back.
    pub rejected: u64,
}

impl FairScheduler<(), ()> {
    /// A builder with the defaults (the key and item types are chosen by
    /// [`build`](FairSchedulerBuilder::build)).
    pub fn builder() -> FairSchedulerBuilder {
        FairSchedulerBuilder {
            client_capacity: DEFAULT_CLIENT_CAPACITY,
            max_clients: DEFAULT_MAX_CLIENTS,
            quantum: 1,
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
    /// # Errors
    ///
    /// A [`ConfigError`] naming `weight` for 0.
    pub fn set_weight(&self, client: K, weight: u32) -> Result<(), ConfigError> {
        validate::at_least("weight", weight, 1)?;
        self.lock().weights.insert(client, weight);
        Ok(())
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
            let entry = st.clients.entry(client.clone()).or_insert_with(|| Client {
                queue: VecDeque::new(),
                deficit: 0,
            });
            if entry.queue.is_empty() {
                st.active.push_back(client);
            }
            entry.queue.push_back(item);
            st.len += 1;
        }
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// The next item in fair order, with its client; never waits.
    pub fn try_pop(&self) -> Option<(K, T)> {
        let mut st = self.lock();
        let st = &mut *st;
        let key = st.active.front()?.clone();
        let weight = u64::from(st.weights.get(&key).copied().unwrap_or(1));
        let client = st
            .clients
            .get_mut(&key)
            .expect("an active client has an entry");
        if client.deficit == 0 {
            client.deficit = weight * u64::from(self.quantum);
        }
        let item = client
            .queue
            .pop_front()
            .expect("an active client has queued work");
        client.deficit -= 1;
        st.len -= 1;
        if client.queue.is_empty() {
            st.active.pop_front();
            st.clients.remove(&key);
        } else if client.deficit == 0 {
            st.active.rotate_left(1);
        }
        Some((key, item))
    }

    /// Waits for the next item; `None` once closed and drained.
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
            rejected: st.rejected,
        }
    }
}

impl<K, T> fmt::Debug for FairScheduler<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairScheduler")
            .field("client_capacity", &self.client_capacity)
            .field("max_clients", &self.max_clients)
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
        let err = FairScheduler::builder()
            .client_capacity(0)
            .build::<u8, u8>()
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
