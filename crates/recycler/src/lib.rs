//! Object reuse: pooled values handed out as guards that reset them and give them
//! back on drop, even while unwinding.
//!
//! ```
//! # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
//! use heijunka_recycler::Recycler;
//!
//! // Up to 256 idle 4 KiB buffers (plus a few per thread).
//! let buffers = Recycler::builder(|| Vec::<u8>::with_capacity(4096))
//!     .capacity(256)
//!     .max_value_capacity(64 * 1024) // drop buffers that grew past 64 KiB
//!     .poison()                      // debug builds: returned buffers read 0xDEADBEEF
//!     .build()?;
//!
//! {
//!     let mut buf = buffers.get(); // an idle buffer, or a new one
//!     buf.extend_from_slice(b"request body");
//! } // cleared and back in the pool, also if the scope panics
//!
//! // One value read by many: a shared handle gives it back after the last clone.
//! let mut event = buffers.get();
//! event.extend_from_slice(b"price=42");
//! let event = event.into_shared();
//! let copies: Vec<_> = (0..3).map(|_| event.clone()).collect();
//! drop(event);
//! drop(copies);
//!
//! let stats = buffers.stats();
//! assert_eq!(stats.gets, 2);
//! assert_eq!(stats.returns, 2);
//! assert_eq!(stats.misses, 1); // the second `get` reused the first buffer
//! # Ok::<(), heijunka_core::ConfigError>(())
//! ```
//!
//! # What is here
//!
//! - [`Recycler`]: the pool. [`get`](Recycler::get) returns a [`Recycled`] guard
//!   (`Deref`/`DerefMut`) that resets the value and gives it back when dropped,
//!   also while unwinding. Idle values wait in each thread's small cache, then in a
//!   bounded shared store; a value returned when both are full is dropped and
//!   counted, never leaked. Built with [`RecyclerBuilder`].
//! - [`Recycle`]: how a value is reset, implemented for `Vec`, `String`,
//!   `VecDeque`, `HashMap`, `HashSet`, `BTreeMap` and `Box<T: Recycle>`;
//!   [`Recycler::with_reset`] takes a closure for types you do not own. The
//!   optional shrink rule ([`RecyclerBuilder::max_value_capacity`]) drops values
//!   that grew too big instead of keeping them.
//! - [`Shared`]: [`Recycled::into_shared`] turns a guard into a cloneable
//!   `Send + Sync` handle that gives the value back when its last clone drops: one
//!   pooled event delivered to many subscribers without copies or allocation.
//! - The manual path: [`Recycled::detach`] takes a value out of the recycler's
//!   care; [`Recycler::put`] (or [`try_put`](Recycler::try_put)) gives one back.
//! - Debug checks ([`DEBUG_CHECKS`]: debug builds, or the `debug-checks` feature):
//!   a value given back twice is reported with both call sites ([`Misuse`]), and
//!   returned values are
//!   [`Poison`]ed (byte buffers filled with [`POISON_PATTERN`],
//!   `0xDE 0xAD 0xBE 0xEF`) so a stale reader sees garbage, and a stale writer is
//!   caught on the next `get`. Release builds skip all of it at no cost.
//! - [`RecyclerRegistry`]: one recycler per value type, looked up by type.
//! - [`RecyclerStats`]: gets, hits, misses (factory calls), returns, drops (full,
//!   oversize, panicking reset), evictions and idle values, summed over threads.
//!
//! # Ownership does most of the work
//!
//! In Go a pooled pointer can be put back twice, or used after it was put back. In
//! Rust a guard owns its value: it is given back exactly once, by its `Drop`, and
//! nothing can use it afterwards. The checks above cover the paths the compiler
//! cannot see: values that leave through [`detach`](Recycled::detach) and come back
//! through [`put`](Recycler::put), possibly via raw pointers and foreign code.
//! They identify a value by its heap allocation ([`Recycle::identity`]); a type
//! without one is not checked on `put`.
//!
//! # Speed
//!
//! Like Go's `sync.Pool` and its per-P caches, each thread keeps a few idle values
//! of each recycler and its own counters, so the common get and return touch no
//! cache line another thread writes and use no atomic read-modify-write. The shared
//! store (crossbeam's `ArrayQueue`) is reached only when a thread's cache is empty
//! or full. Values are kept boxed (one allocation when the factory makes a value),
//! so handing one out or taking it back moves a pointer and the reset works in
//! place. When a thread exits, its cached values go to the shared store (or are
//! dropped and counted when it is full); none are stranded in a dead thread. The
//! crate has no `unsafe`.
//!
//! # Bad input
//!
//! Settings are validated by [`RecyclerBuilder::build`] (a zero capacity is a
//! [`ConfigError`](heijunka_core::ConfigError)). A factory that panics panics in
//! the caller of `get`, and the recycler stays usable. A reset that panics drops
//! the value and counts it in `reset_panics`; the panic does not escape the drop
//! that triggered it.
//!
//! # Metrics
//!
//! With the `metrics` feature, a recycler emits `heijunka_recycler_*` counters
//! (hits, misses, discarded values by reason) through the `metrics` facade,
//! labelled with its [`name`](RecyclerBuilder::name). The common get and return
//! still use no atomic read-modify-write: a thread's hits are published in
//! batches of up to 64, at once when a get or return reaches the shared store,
//! and in full when the thread's cache goes (thread exit, [`Recycler::clear`]);
//! misses and discards are published as they happen. [`Recycler::stats`] stays
//! exact. The table is in `docs/metrics.md`; install the recorder before building
//! the recycler.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings), allow(dead_code, unused_variables))
))]

mod builder;
mod checks;
mod error;
mod guard;
#[cfg(not(loom))]
mod local;
mod metrics;
mod poison;
mod recycle;
mod recycler;
mod registry;
mod returns;
mod shared;
mod stats;

pub use crate::{
    builder::{DEFAULT_CAPACITY, DEFAULT_PER_THREAD, MAX_CAPACITY, RecyclerBuilder},
    checks::DEBUG_CHECKS,
    error::{Misuse, PutError, RegisterError},
    guard::Recycled,
    poison::{POISON_PATTERN, Poison},
    recycle::Recycle,
    recycler::Recycler,
    registry::{RecyclerRegistry, RegistryStats, TypeStats},
    shared::Shared,
    stats::RecyclerStats,
};
