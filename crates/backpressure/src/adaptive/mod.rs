//! [`AdaptiveLimit`]: a concurrency limit that finds its own size from measured
//! latency and outcomes, with the algorithms of Netflix's `concurrency-limits`
//! behind [`LimitAlgorithm`].

mod aimd;
mod gate;
mod gradient2;
mod vegas;
mod window;

use std::fmt;
use std::time::Duration;

use heijunka_core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use heijunka_core::sync::{Arc, Mutex};
use heijunka_core::{Clock, ConfigError, Instant, validate};
use serde::Serialize;
use tokio::sync::Notify;

use crate::acquire::{AcquireError, AcquireTimeoutError, TryAcquireError};

pub use self::aimd::{Aimd, AimdBuilder};
pub use self::gradient2::{Gradient2, Gradient2Builder, LONG_RTT_DECAY};
pub use self::vegas::{Vegas, VegasBuilder};
pub use self::window::{Windowed, WindowedBuilder};

use self::gate::Gate;

/// What one completed request tells a [`LimitAlgorithm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the request was admitted.
    pub start: Instant,
    /// When it completed.
    pub end: Instant,
    /// `end - start`: the round-trip time.
    pub rtt: Duration,
    /// Requests in flight when this one was admitted, itself included.
    pub inflight: usize,
    /// Whether the request was dropped: rejected by the server as overloaded, or
    /// timed out.
    pub dropped: bool,
}

/// An algorithm that turns [`Sample`]s into a concurrency limit.
///
/// [`AdaptiveLimit`] calls [`update`](Self::update) once per completed request
/// that reported [`success`](AdaptivePermit::success) or
/// [`dropped`](AdaptivePermit::dropped) (never for
/// [`ignore`](AdaptivePermit::ignore)), under a lock, and publishes the result for
/// the lock-free admission path. Because it runs under that lock, an implementation
/// must be quick and must not block; a panic in it leaves the last published limit
/// in place. Implemented by [`Aimd`], [`Vegas`],
/// [`Gradient2`], and [`Windowed`] (which feeds any of them one averaged sample
/// per time window).
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, LimitAlgorithm, Sample};
///
/// /// Halves on a drop, grows by one otherwise.
/// struct Halving(usize);
///
/// impl LimitAlgorithm for Halving {
///     fn initial_limit(&self) -> usize {
///         self.0
///     }
///     fn update(&mut self, sample: &Sample) -> usize {
///         self.0 = if sample.dropped { (self.0 / 2).max(1) } else { self.0 + 1 };
///         self.0
///     }
/// }
///
/// let limit = AdaptiveLimit::builder(Halving(8)).build()?;
/// limit.try_acquire()?.dropped();
/// assert_eq!(limit.limit(), 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait LimitAlgorithm: Send {
    /// The limit before any sample.
    fn initial_limit(&self) -> usize;

    /// Takes one sample and returns the new limit (values below 1 are read as 1).
    ///
    /// Runs on the thread that ends a permit, under the limit's lock (samples
    /// reach the algorithm one at a time). It must not block and must not call
    /// back into the [`AdaptiveLimit`] it drives (its permits, `stats`, ...),
    /// which would deadlock; while it runs, other permits that end wait for it.
    /// [`close`](AdaptiveLimit::close), `try_acquire` and `limit` do not take the
    /// lock and are never delayed by it.
    fn update(&mut self, sample: &Sample) -> usize;
}

impl<A: LimitAlgorithm + ?Sized> LimitAlgorithm for Box<A> {
    fn initial_limit(&self) -> usize {
        (**self).initial_limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        (**self).update(sample)
    }
}

/// How a request ended, as told to an [`AdaptivePermit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It completed normally; its latency is a sample.
    Success,
    /// It was dropped (overload, timeout): a sign the limit is too high.
    Dropped,
    /// Say nothing about the limit (a client error, a cancelled call); only the
    /// in-flight count goes down. Dropping a permit without an outcome means this.
    Ignore,
}

/// The default [`report_step`](AdaptiveLimitBuilder::report_step): a `tracing`
/// event when the limit has moved by 10 or more since the last one.
pub const DEFAULT_REPORT_STEP: usize = 10;

/// A concurrency limit whose size moves with measured latency and outcomes.
///
/// Admission ([`try_acquire`](Self::try_acquire)) is lock-free: one compare-and-swap
/// of an in-flight counter against the published limit, and a clock read to stamp
/// the permit. On completion the permit reports its outcome and latency (a second
/// clock read, as Netflix's limiter reads `System.nanoTime()` at both ends); the
/// [`LimitAlgorithm`] runs under a mutex (once per completion with an outcome,
/// never while admitting, never for `ignore`) and publishes the new limit to an
/// atomic. When the limit shrinks below the number in flight, nothing is revoked:
/// new requests wait until enough complete.
///
/// The refusals are the same types as [`ConcurrencyLimit`](crate::ConcurrencyLimit)'s:
/// [`TryAcquireError`], [`AcquireError`] and [`AcquireTimeoutError`].
///
/// Every change of the limit by at least
/// [`report_step`](AdaptiveLimitBuilder::report_step) since the last report emits
/// a `debug` event (`adaptive.limit`, `adaptive.previous`); the current limit is
/// always readable with [`limit`](Self::limit).
///
/// Clones are handles to the same limit.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Gradient2, TryAcquireError};
///
/// let limit = AdaptiveLimit::builder(Gradient2::builder().initial_limit(20).build()?).build()?;
/// assert_eq!(limit.limit(), 20);
///
/// match limit.try_acquire() {
///     Ok(permit) => {
///         // ... call the dependency ...
///         permit.success(); // or .dropped() on overload / timeout
///     }
///     Err(TryAcquireError::AtCapacity { limit }) => { /* shed: respond 503 */ }
///     Err(_) => {}
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

struct Inner {
    gate: Gate,
    clock: Clock,
    /// The algorithm, and the lock that serialises publishing its limit with
    /// `close` (which publishes the gate's closed limit of 0 for good).
    state: Mutex<State>,
    waiting: AtomicUsize,
    notify: Notify,
    rejected: AtomicU64,
    ignored: AtomicU64,
    report_step: usize,
    /// In flight up on admission (`admit`), down on completion; the limit set
    /// whenever the algorithm moves it.
    metrics: crate::metrics::LimitMetrics,
}

/// Wakes `acquire` waiters when dropped: one for the slot a completing request
/// freed, all of them if the limit grew.
struct WakeWaiters<'a> {
    inner: &'a Inner,
    grew: bool,
}

impl Drop for WakeWaiters<'_> {
    fn drop(&mut self) {
        let inner = self.inner;
        // Pairs with the waiter's increment before its re-check (both SeqCst): either
        // it sees this release, or this load sees it waiting.
        if inner.waiting.load(Ordering::SeqCst) > 0 {
            if self.grew {
                inner.notify.notify_waiters();
            }
            inner.notify.notify_one();
        }
    }
}

struct State {
    algorithm: Box<dyn LimitAlgorithm>,
    reported: usize,
    successes: u64,
    drops: u64,
}

/// Builds an [`AdaptiveLimit`]; see [`AdaptiveLimit::builder`].
#[must_use = "a builder does nothing until `build()`"]
pub struct AdaptiveLimitBuilder {
    algorithm: Box<dyn LimitAlgorithm>,
    clock: Clock,
    report_step: usize,
    name: String,
}

impl fmt::Debug for AdaptiveLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitBuilder")
            .field("initial_limit", &self.algorithm.initial_limit())
            .field("report_step", &self.report_step)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AdaptiveLimitBuilder {
    /// The clock that stamps permits (default: the system clock). Tests pass a
    /// `ManualClock`'s.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Emit a `tracing` event when the limit has moved by at least `step` since the
    /// last event. Default [`DEFAULT_REPORT_STEP`].
    pub fn report_step(mut self, step: usize) -> Self {
        self.report_step = step;
        self
    }

    /// The `name` label of the limit's metrics (feature `metrics`, see
    /// `docs/metrics.md`). Default `"default"`.
    ///
    /// ```
    /// use heijunka_backpressure::{AdaptiveLimit, Vegas};
    ///
    /// let limit = AdaptiveLimit::builder(Vegas::builder().build()?)
    ///     .name("checkout")
    ///     .build()?;
    /// # let _ = limit;
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a `report_step` of 0 or an algorithm whose initial
    /// limit is 0.
    pub fn build(self) -> Result<AdaptiveLimit, ConfigError> {
        validate::at_least("report_step", self.report_step, 1)?;
        let initial = validate::at_least("initial_limit", self.algorithm.initial_limit(), 1)?;
        let metrics = crate::metrics::LimitMetrics::new(&self.name);
        metrics.limit.set(initial as f64);
        Ok(AdaptiveLimit {
            inner: Arc::new(Inner {
                gate: Gate::new(initial),
                clock: self.clock,
                state: Mutex::new(State {
                    algorithm: self.algorithm,
                    reported: initial,
                    successes: 0,
                    drops: 0,
                }),
                waiting: AtomicUsize::new(0),
                notify: Notify::new(),
                rejected: AtomicU64::new(0),
                ignored: AtomicU64::new(0),
                report_step: self.report_step,
                metrics,
            }),
        })
    }
}

/// Live numbers of an [`AdaptiveLimit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdaptiveStats {
    /// The limit now.
    pub limit: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Completions reported as success.
    pub successes: u64,
    /// Completions reported as dropped.
    pub drops: u64,
    /// Completions ignored (explicitly, or a permit dropped without an outcome).
    pub ignored: u64,
    /// `try_acquire` calls refused at the limit.
    pub rejected: u64,
    /// Callers of `acquire` waiting now.
    pub waiting: usize,
}

impl AdaptiveLimit {
    /// A builder around `algorithm`.
    pub fn builder(algorithm: impl LimitAlgorithm + 'static) -> AdaptiveLimitBuilder {
        AdaptiveLimitBuilder {
            algorithm: Box::new(algorithm),
            clock: Clock::system(),
            report_step: DEFAULT_REPORT_STEP,
            name: crate::metrics::DEFAULT_NAME.to_owned(),
        }
    }

    /// The limit now.
    #[inline]
    pub fn limit(&self) -> usize {
        self.inner.gate.limit()
    }

    /// Requests in flight now.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.inner.gate.in_flight()
    }

    /// A snapshot of the live numbers.
    pub fn stats(&self) -> AdaptiveStats {
        let (successes, drops) = {
            let st = self.inner.lock();
            (st.successes, st.drops)
        };
        AdaptiveStats {
            limit: self.limit(),
            in_flight: self.in_flight(),
            successes,
            drops,
            // Relaxed: statistics.
            ignored: self.inner.ignored.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            waiting: self.inner.waiting.load(Ordering::SeqCst),
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.gate.is_closed()
    }

    /// Closes the limit: every waiter wakes with [`AcquireError::Closed`], every
    /// later acquisition is refused the same way, and [`limit`](Self::limit) reads
    /// 0. Permits already held stay valid and still report their outcome (counted
    /// in the stats; the limit stays closed). Takes no lock, so it never waits
    /// for an algorithm's [`update`](LimitAlgorithm::update) in progress; that
    /// update's new limit is not published.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{AdaptiveLimit, Aimd, TryAcquireError};
    ///
    /// let limit = AdaptiveLimit::builder(Aimd::builder().build()?).build()?;
    /// let held = limit.try_acquire()?;
    /// limit.close();
    /// assert_eq!(limit.try_acquire().unwrap_err(), TryAcquireError::Closed);
    /// held.success();
    /// assert!(limit.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        let inner = &*self.inner;
        // No lock: a user algorithm's `update` may hold it. The gate's limit
        // publication never overwrites the closed mark.
        inner.gate.close();
        inner.notify.notify_waiters();
    }

    /// A permit if fewer than [`limit`](Self::limit) requests are in flight; never
    /// waits, never locks.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::AtCapacity`] naming the limit now, or
    /// [`TryAcquireError::Closed`].
    #[inline]
    pub fn try_acquire(&self) -> Result<AdaptivePermit<'_>, TryAcquireError> {
        let inner = &*self.inner;
        match inner.try_enter() {
            Ok((start, inflight)) => Ok(AdaptivePermit {
                inner,
                start,
                inflight,
                done: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// [`try_acquire`](Self::try_acquire) for a permit that owns a handle to the
    /// limit (an `Arc` clone), for work that outlives the borrow: a spawned task, an
    /// HTTP response body.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{AdaptiveLimit, Aimd};
    ///
    /// let limit = AdaptiveLimit::builder(Aimd::builder().build()?).build()?;
    /// let permit = limit.try_acquire_owned()?;
    /// std::thread::spawn(move || permit.success()).join().unwrap();
    /// assert_eq!(limit.in_flight(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(&self) -> Result<OwnedAdaptivePermit, TryAcquireError> {
        let (start, inflight) = self.inner.try_enter()?;
        Ok(OwnedAdaptivePermit {
            inner: Arc::clone(&self.inner),
            start,
            inflight,
            done: false,
            ended: None,
        })
    }

    /// Waits until a permit is free (woken when a request completes or the limit
    /// grows). Needs no runtime timer.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{AdaptiveLimit, Aimd};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = AdaptiveLimit::builder(Aimd::builder().build()?).build()?;
    /// let permit = limit.acquire().await?;
    /// permit.success();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Closed`] if the limit is closed, before or while waiting.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a permit exists only once the future completes, so dropping it
    /// before then leaves nothing in flight (no sample counted) and no waiter
    /// behind. A wake-up it had received is passed on to another waiter.
    pub async fn acquire(&self) -> Result<AdaptivePermit<'_>, AcquireError> {
        let inner = &*self.inner;
        let (start, inflight) = inner.enter().await?;
        Ok(AdaptivePermit {
            inner,
            start,
            inflight,
            done: false,
        })
    }

    /// [`acquire`](Self::acquire) for an owned permit; the future owns a handle to
    /// the limit, so it is `'static` and can be handed to `tokio::spawn`.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{AdaptiveLimit, Aimd};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// let limit = AdaptiveLimit::builder(Aimd::builder().build()?).build()?;
    /// let permit = tokio::spawn(limit.acquire_owned()).await??;
    /// permit.success();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub fn acquire_owned(
        &self,
    ) -> impl std::future::Future<Output = Result<OwnedAdaptivePermit, AcquireError>> + Send + 'static
    {
        let inner = Arc::clone(&self.inner);
        async move {
            let (start, inflight) = inner.enter().await?;
            Ok(OwnedAdaptivePermit {
                inner,
                start,
                inflight,
                done: false,
                ended: None,
            })
        }
    }

    /// [`acquire`](Self::acquire), giving up after `timeout` (tokio's timer).
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_backpressure::{AcquireTimeoutError, AdaptiveLimit, Aimd};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?.block_on(async {
    /// let aimd = Aimd::builder().initial_limit(1).min_limit(1).build()?;
    /// let limit = AdaptiveLimit::builder(aimd).build()?;
    /// let _held = limit.try_acquire()?;
    /// let err = limit.acquire_timeout(Duration::from_millis(5)).await.unwrap_err();
    /// assert_eq!(err, AcquireTimeoutError::TimedOut { after: Duration::from_millis(5) });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireTimeoutError::TimedOut`] after `timeout`, or
    /// [`AcquireTimeoutError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<AdaptivePermit<'_>, AcquireTimeoutError> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                self.inner.metrics.rejected.increment(1);
                Err(AcquireTimeoutError::TimedOut { after: timeout })
            }
        }
    }
}

impl Inner {
    /// Admits one request if the gate lets it: `(start, in flight)`.
    #[inline]
    fn try_enter(&self) -> Result<(Instant, usize), TryAcquireError> {
        match self.admit() {
            Ok(inflight) => Ok((self.clock.now(), inflight)),
            Err(limit) => Err(self.refused(limit)),
        }
    }

    /// The gate's `try_enter`, counting an admission in flight (the caller makes
    /// it a permit at once, with no await in between).
    #[inline]
    fn admit(&self) -> Result<usize, usize> {
        let r = self.gate.try_enter();
        if r.is_ok() {
            self.metrics.in_flight.increment(1.0);
        }
        r
    }

    #[cold]
    fn refused(&self, limit: usize) -> TryAcquireError {
        // `close` publishes a limit of 0, which no algorithm can (values below 1 are
        // read as 1).
        if limit == gate::CLOSED {
            return TryAcquireError::Closed;
        }
        // Relaxed: a statistic.
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected.increment(1);
        TryAcquireError::AtCapacity {
            // Saturating: a limit above `u32::MAX` permits reads as `u32::MAX`.
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    /// Waits until the gate admits one request.
    async fn enter(&self) -> Result<(Instant, usize), AcquireError> {
        match self.admit() {
            Ok(inflight) => return Ok((self.clock.now(), inflight)),
            Err(gate::CLOSED) => return Err(AcquireError::Closed),
            Err(_) => {}
        }
        let _waiting = WaitingMark::new(&self.waiting);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a release between the check and the
            // await still wakes this waiter.
            notified.as_mut().enable();
            match self.admit() {
                Ok(inflight) => return Ok((self.clock.now(), inflight)),
                Err(gate::CLOSED) => return Err(AcquireError::Closed),
                Err(_) => {}
            }
            notified.await;
        }
    }

    fn complete(&self, start: Instant, inflight: usize, outcome: Outcome) {
        self.complete_at(start, inflight, outcome, None);
    }

    /// [`complete`](Self::complete) with the sample's end already known (the
    /// request's work ended then; the permit was held on after it).
    fn complete_at(
        &self,
        start: Instant,
        inflight: usize,
        outcome: Outcome,
        ended: Option<Instant>,
    ) {
        let inner = self;
        // Read the clock before leaving, so the sample does not include time spent
        // after the request ended; `ignore` needs no reading at all.
        let end = (outcome != Outcome::Ignore).then(|| ended.unwrap_or_else(|| inner.clock.now()));
        inner.gate.leave();
        inner.metrics.in_flight.decrement(1.0);
        // Wakes waiters on the way out, also if the algorithm panics below: the
        // slot this request held is free either way.
        let mut wake = WakeWaiters { inner, grew: false };
        wake.grew = match outcome {
            Outcome::Ignore => {
                // Relaxed: a statistic.
                inner.ignored.fetch_add(1, Ordering::Relaxed);
                false
            }
            Outcome::Success | Outcome::Dropped => {
                let end = end.unwrap_or(start);
                let dropped = outcome == Outcome::Dropped;
                let sample = Sample {
                    start,
                    end,
                    rtt: end.saturating_duration_since(start),
                    inflight,
                    dropped,
                };
                let mut st = inner.lock();
                if dropped {
                    st.drops += 1;
                } else {
                    st.successes += 1;
                }
                let new = st.algorithm.update(&sample).max(1);
                let old = inner.gate.set_limit(new);
                if old == gate::CLOSED {
                    return;
                }
                // Under the lock, so the gauge ends at the last limit published.
                inner.metrics.limit.set(new as f64);
                if new.abs_diff(st.reported) >= inner.report_step {
                    tracing::debug!(
                        adaptive.limit = new,
                        adaptive.previous = st.reported,
                        "adaptive concurrency limit changed"
                    );
                    st.reported = new;
                }
                new > old
            }
        };
    }
}

impl Inner {
    fn lock(&self) -> heijunka_core::sync::MutexGuard<'_, State> {
        // A panic inside a user algorithm poisons the lock; the state is still a
        // valid limit, so keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Counts a waiter for as long as it waits, including when its future is dropped.
struct WaitingMark<'a>(&'a AtomicUsize);

impl<'a> WaitingMark<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for WaitingMark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One admitted request of an [`AdaptiveLimit`]. Report how it ended with
/// [`success`](Self::success), [`dropped`](Self::dropped) or
/// [`ignore`](Self::ignore); dropping it without doing so counts as `ignore`
/// (also while unwinding from a panic).
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_backpressure::{AdaptiveLimit, Aimd};
///
/// let limit = AdaptiveLimit::builder(Aimd::builder().build()?).build()?;
/// let permit = limit.try_acquire()?;
/// assert_eq!(limit.in_flight(), 1);
/// drop(permit); // counts as `ignore`
/// assert_eq!(limit.in_flight(), 0);
/// assert_eq!(limit.stats().ignored, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the permit is released (as `ignore`) as soon as it is dropped"]
pub struct AdaptivePermit<'a> {
    inner: &'a Inner,
    start: Instant,
    inflight: usize,
    done: bool,
}

impl AdaptivePermit<'_> {
    /// When the request was admitted.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Requests in flight when this one was admitted, itself included.
    pub fn inflight_at_start(&self) -> usize {
        self.inflight
    }

    /// The request completed normally: its latency is a sample.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The request was dropped (overloaded, timed out): the limit should shrink.
    pub fn dropped(self) {
        self.record(Outcome::Dropped);
    }

    /// Release without telling the algorithm anything.
    pub fn ignore(self) {
        self.record(Outcome::Ignore);
    }

    /// Release with `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.inner.complete(self.start, self.inflight, outcome);
    }
}

impl Drop for AdaptivePermit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner
                .complete(self.start, self.inflight, Outcome::Ignore);
        }
    }
}

impl fmt::Debug for AdaptivePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptivePermit")
            .field("start", &self.start)
            .field("inflight", &self.inflight)
            .finish()
    }
}

/// An [`AdaptivePermit`] that owns a handle to its limit; from
/// [`AdaptiveLimit::try_acquire_owned`]. Same rules: record an outcome, or
/// dropping it counts as `ignore`.
#[must_use = "the permit is released (as `ignore`) as soon as it is dropped"]
pub struct OwnedAdaptivePermit {
    inner: Arc<Inner>,
    start: Instant,
    inflight: usize,
    done: bool,
    /// Set by [`mark_end`](Self::mark_end): the sample ends here.
    ended: Option<Instant>,
}

impl OwnedAdaptivePermit {
    /// When the request was admitted.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The request completed normally: its latency is a sample.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The request was dropped (overloaded, timed out): the limit should shrink.
    pub fn dropped(self) {
        self.record(Outcome::Dropped);
    }

    /// Release without telling the algorithm anything.
    pub fn ignore(self) {
        self.record(Outcome::Ignore);
    }

    /// Release with `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.inner
            .complete_at(self.start, self.inflight, outcome, self.ended);
    }

    /// Marks the end of the request's own work now, while the permit is held on:
    /// a later [`success`](Self::success) or [`dropped`](Self::dropped) takes its
    /// latency sample from admission to this mark, not to the release. For a
    /// server whose response body streams after the headers: the headers measure
    /// the service, the rest of the body the client's reading speed, which says
    /// nothing about the limit. A second mark replaces the first.
    ///
    /// ```
    /// use heijunka_backpressure::{AdaptiveLimit, Aimd};
    /// use heijunka_core::ManualClock;
    /// use std::time::Duration;
    ///
    /// let manual = ManualClock::new();
    /// let limit = AdaptiveLimit::builder(Aimd::builder().initial_limit(10).min_limit(1).build()?)
    ///     .clock(manual.clock())
    ///     .build()?;
    /// let mut permit = limit.try_acquire_owned()?;
    /// manual.advance(Duration::from_millis(5)); // the handler's work
    /// permit.mark_end();
    /// manual.advance(Duration::from_secs(3)); // a slow client reading the body
    /// permit.success(); // a 5 ms sample
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_end(&mut self) {
        self.ended = Some(self.inner.clock.now());
    }

    /// The limit this permit belongs to (a handle to it).
    pub fn limit(&self) -> AdaptiveLimit {
        AdaptiveLimit {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Drop for OwnedAdaptivePermit {
    fn drop(&mut self) {
        if !self.done {
            self.inner
                .complete(self.start, self.inflight, Outcome::Ignore);
        }
    }
}

impl fmt::Debug for OwnedAdaptivePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedAdaptivePermit")
            .field("start", &self.start)
            .field("inflight", &self.inflight)
            .finish()
    }
}

/// `max(1, floor(log10(n)))`: the step function Netflix's Vegas uses.
pub(crate) fn log10_root(n: f64) -> f64 {
    n.max(1.0).log10().floor().max(1.0)
}

/// Checks the common bounds of an algorithm builder.
pub(crate) fn check_bounds(initial: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    validate::at_least("min_limit", min, 1)?;
    validate::ordered("min_limit", min, "max_limit", max)?;
    validate::at_least("initial_limit", initial, min)?;
    validate::at_most("initial_limit", initial, max)?;
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use heijunka_core::ManualClock;

    struct Fixed(usize);
    impl LimitAlgorithm for Fixed {
        fn initial_limit(&self) -> usize {
            self.0
        }
        fn update(&mut self, s: &Sample) -> usize {
            // Grows on success, shrinks on drop: enough to see the plumbing.
            if s.dropped { self.0 - 1 } else { self.0 + 1 }
        }
    }

    #[test]
    fn permits_carry_latency_and_inflight_to_the_algorithm() {
        struct Capture(Arc<Mutex<Vec<Sample>>>);
        impl LimitAlgorithm for Capture {
            fn initial_limit(&self) -> usize {
                4
            }
            fn update(&mut self, s: &Sample) -> usize {
                self.0.lock().unwrap().push(*s);
                4
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let clock = ManualClock::new();
        let limit = AdaptiveLimit::builder(Capture(Arc::clone(&seen)))
            .clock(clock.clock())
            .build()
            .unwrap();
        let a = limit.try_acquire().unwrap();
        let b = limit.try_acquire().unwrap();
        clock.advance(Duration::from_millis(7));
        b.dropped();
        a.success();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].rtt, Duration::from_millis(7));
        assert_eq!(seen[0].inflight, 2);
        assert!(seen[0].dropped);
        assert_eq!(seen[1].inflight, 1);
        assert!(!seen[1].dropped);
        assert_eq!(limit.stats().successes, 1);
        assert_eq!(limit.stats().drops, 1);
    }

    /// `close()` does not wait for a user algorithm's `update` in progress: an
    /// algorithm blocked (on a channel the test holds) must not delay it.
    #[test]
    fn close_completes_while_a_user_update_is_blocked() {
        use std::sync::mpsc;
        struct Blocking {
            entered: mpsc::Sender<()>,
            release: Mutex<mpsc::Receiver<()>>,
        }
        impl LimitAlgorithm for Blocking {
            fn initial_limit(&self) -> usize {
                2
            }
            fn update(&mut self, _: &Sample) -> usize {
                self.entered.send(()).unwrap();
                // Bounded, so a regression fails rather than hangs.
                let _ = self
                    .release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                3
            }
        }
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let limit = AdaptiveLimit::builder(Blocking {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        })
        .build()
        .unwrap();
        let permit = limit.try_acquire().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| permit.success());
            entered
                .recv_timeout(Duration::from_secs(30))
                .expect("update was called");
            let (closed_tx, closed) = mpsc::channel();
            let limit = &limit;
            s.spawn(move || {
                limit.close();
                closed_tx.send(()).unwrap();
            });
            let done = closed.recv_timeout(Duration::from_secs(2));
            release.send(()).unwrap();
            assert!(
                done.is_ok(),
                "close() waited for the user algorithm's update"
            );
        });
        // The update that was in progress does not reopen the limit.
        assert!(limit.is_closed());
        assert_eq!(limit.limit(), 0);
        assert_eq!(limit.try_acquire().unwrap_err(), TryAcquireError::Closed);
    }

    #[test]
    fn limit_moves_and_is_enforced() {
        let limit = AdaptiveLimit::builder(Fixed(2)).build().unwrap();
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert_eq!(
            limit.try_acquire().unwrap_err(),
            TryAcquireError::AtCapacity { limit: 2 }
        );
        a.success();
        assert_eq!(limit.limit(), 3);
        let _c = limit.try_acquire().unwrap();
        let _d = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_err());
        assert_eq!(limit.stats().rejected, 2);
    }

    #[test]
    fn bad_report_step_is_a_config_error() {
        let err = AdaptiveLimit::builder(Fixed(2))
            .report_step(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "report_step");
        let err = AdaptiveLimit::builder(Fixed(0)).build().unwrap_err();
        assert_eq!(err.field(), "initial_limit");
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_a_release() {
        let limit = AdaptiveLimit::builder(Fixed(1)).build().unwrap();
        let held = limit.try_acquire().unwrap();
        assert_eq!(
            limit
                .acquire_timeout(Duration::from_millis(5))
                .await
                .unwrap_err(),
            AcquireTimeoutError::TimedOut {
                after: Duration::from_millis(5)
            }
        );
        let waiter = async { limit.acquire().await.unwrap().ignore() };
        let releaser = async {
            tokio::task::yield_now().await;
            held.ignore();
        };
        tokio::join!(waiter, releaser);
        assert_eq!(limit.in_flight(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::gate::Gate;
    use heijunka_core::sync::atomic::{AtomicUsize, Ordering};
    use heijunka_core::sync::{Arc, thread};

    /// Never more admitted than the limit, even while the limit shrinks.
    #[test]
    fn gate_never_admits_past_the_limit() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(2));
            let held = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let gate = Arc::clone(&gate);
                    let held = Arc::clone(&held);
                    thread::spawn(move || {
                        if gate.try_enter().is_ok() {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= 2);
                            held.fetch_sub(1, Ordering::SeqCst);
                            gate.leave();
                        }
                    })
                })
                .collect();
            gate.set_limit(1);
            if gate.try_enter().is_ok() {
                gate.leave();
            }
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(gate.in_flight(), 0);
        });
    }

    /// `close` races a limit publication (no lock between them): the gate ends
    /// closed, whichever goes first, and a publication that lost reports it.
    #[test]
    fn close_wins_over_a_racing_set_limit() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(2));
            let g2 = Arc::clone(&gate);
            let t = thread::spawn(move || g2.set_limit(5));
            gate.close();
            let old = t.join().unwrap();
            assert_eq!(
                gate.limit(),
                0,
                "a publication reopened a closed gate (old {old})"
            );
            assert!(old == 2 || old == super::gate::CLOSED);
            assert_eq!(gate.try_enter(), Err(super::gate::CLOSED));
        });
    }

    /// Two racers for the last slot: exactly one wins.
    #[test]
    fn one_winner_for_the_last_slot() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(1));
            let g2 = Arc::clone(&gate);
            let t = thread::spawn(move || g2.try_enter().is_ok());
            let mine = gate.try_enter().is_ok();
            let theirs = t.join().unwrap();
            assert!(mine ^ theirs);
            assert_eq!(gate.in_flight(), 1);
        });
    }
}
