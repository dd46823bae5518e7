//! tower [`Layer`](::tower::Layer)s for the primitives and the whole [`Policy`](crate::policy::Policy),
//! so they drop into axum, tonic and hyper services.
//!
//! ```
//! use axum::{Router, error_handling::HandleErrorLayer, routing::get};
//! use heijunka::backpressure::{ConcurrencyLimit, Gcra};
//! use heijunka::tower::{ConcurrencyLimitLayer, RateLimitLayer, handle_error};
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
//!     ServiceBuilder::new()
//!         // Rejections become 503 / 429 responses with `Retry-After`.
//!         .layer(HandleErrorLayer::new(handle_error))
//!         .layer(RateLimitLayer::new(Gcra::builder(1000.0).burst(100).build()?))
//!         .layer(ConcurrencyLimitLayer::new(ConcurrencyLimit::new(64)?)),
//! );
//! # Ok::<(), heijunka::core::ConfigError>(())
//! ```
//!
//! An inbound policy on a router, health checks exempt, shutdown wired (the
//! README's snippet):
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, error_handling::HandleErrorLayer, routing::get};
//! use heijunka::backpressure::{ConcurrencyLimit, Gcra};
//! use heijunka::policy::Policy;
//! use heijunka::shutdown::Shutdown;
//! use heijunka::tower::{PolicyLayer, handle_error};
//! use tower::ServiceBuilder;
//!
//! let shutdown = Shutdown::new();
//! // Inbound: deadline, rate, concurrency. No breaker on incoming traffic.
//! let inbound = Policy::builder()
//!     .timeout(Duration::from_secs(5))
//!     .rate_limiter(Gcra::builder(2_000.0).burst(2_000).build()?)
//!     .concurrency_limit(ConcurrencyLimit::new(256)?)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "orders" }))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             // Refusals become 429 / 503 / 504 with Retry-After.
//!             .layer(HandleErrorLayer::new(handle_error))
//!             .layer(
//!                 PolicyLayer::new(inbound)
//!                     .shutdown(shutdown.token())
//!                     .exempt("/health"), // health checks answer while the policy sheds
//!             ),
//!     );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The layers
//!
//! | layer | refuses with | stage | holds until |
//! | --- | --- | --- | --- |
//! | [`ConcurrencyLimitLayer`] | [`AtCapacity`](crate::core::Rejection::AtCapacity) | [`Stage::Concurrency`] | the response body ends or is dropped |
//! | [`RateLimitLayer`] | [`RateLimited`](crate::core::Rejection::RateLimited) (with retry-after) | [`Stage::RateLimit`] | nothing held |
//! | [`KeyedRateLimitLayer`] | [`RateLimited`](crate::core::Rejection::RateLimited) per client key (with retry-after and the `RateLimit-*` quota) | [`Stage::RateLimit`] | nothing held |
//! | [`LoadShedLayer`] | whatever its [`Signal`](crate::backpressure::Signal) says | [`Stage::LoadShed`] | nothing held |
//! | [`BreakerLayer`] | [`CircuitOpen`](crate::core::Rejection::CircuitOpen) (with retry-after) | [`Stage::Breaker`] | the response headers, or the body's end when the [classifier](Classify) waits for trailers |
//! | [`PolicyLayer`] | any of the above, or [`TimedOut`](crate::core::Rejection::TimedOut) | the stage that refused | the response body ends, fails, is dropped or runs past its deadline |
//!
//! # Inbound and outbound
//!
//! [`PolicyLayer::new`] guards incoming requests: deadline (the policy's timeout,
//! shortened by an incoming `grpc-timeout` or a [configured
//! header](PolicyLayer::deadline_header)), rate, shedding, concurrency. Keep the
//! breaker out of it: on incoming traffic, time-outs caused by our own overload
//! open it, and every route then answers 503 for the open period.
//! [`PolicyLayer::client`] guards calls to one dependency (breaker, limit,
//! timeout) around a client service, takes the caller's context and writes the
//! time left on the outgoing request. [`PolicyLayer::exempt`] and
//! [`PolicyLayer::route`] keep health and metrics routes out of a policy or give
//! them their own.
//!
//! # Outcomes
//!
//! A [`Classify`] decides what counts as a failure for the breaker and an
//! adaptive limit: [`HttpClassifier`] (default: `5xx` fail, `4xx` do not),
//! [`GrpcClassifier`] (`grpc-status` in the headers or the trailers), or
//! [`classify_fn`]. Time-outs are always failures; a body dropped mid-stream (the
//! client went away) records nothing.
//!
//! Every layer decides at once by default: a refused request is answered with an
//! error at `call`, it never waits in `poll_ready` as tower's own
//! `ConcurrencyLimit` does, so a full server sheds load in microseconds instead of
//! queueing it. [`PolicyLayer::reserve_in_poll_ready`] switches to tower's way
//! (reserve the permit in `poll_ready`, optionally waiting up to the policy's
//! [`max_wait`](crate::policy::PolicyBuilder::max_wait)) for stacks where tower's
//! `load_shed`, `Buffer` or a balancer must see saturation.
//!
//! # One limit per layer, not per connection
//!
//! A layer holds its limit in an `Arc`; every service it makes (hyper and axum make
//! one per connection) shares that one limit. Cloning a layer also shares it.
//!
//! # Permits held until the body has streamed
//!
//! tower's `ConcurrencyLimit` releases its permit when the response *headers* are
//! ready, so a handler streaming a large body no longer counts against the limit
//! (the gap raised in tower-http pull request 447). [`ConcurrencyLimitLayer`] and
//! [`PolicyLayer`] wrap the response body in a [`ResponseBody`] that holds the
//! permit (and the policy's admission) until the body reports its end, fails, or
//! is dropped.
//!
//! # Errors and axum
//!
//! Following tower's convention, the services' error is [`BoxError`]: a refusal is
//! a boxed [`Rejected`] (the [`Stage`] and the [`Rejection`](crate::core::Rejection)),
//! the inner service's own errors pass through boxed. axum wants infallible
//! services, so put axum's `HandleErrorLayer` outermost with [`handle_error`]: it
//! turns a [`Rejected`] into the response [`rejection_response`] builds (503, 429
//! or 504, with `Retry-After` where the reason knows one) and any other error into
//! a 500. hyper and tonic users can call [`rejection_response`] themselves.

mod body;
mod breaker;
mod classify;
mod error;
mod key;
mod keyed;
mod limit;
mod policy;
mod shed;

pub use crate::policy::Stage;
pub use crate::tower::{
    body::ResponseBody,
    breaker::{Breaker, BreakerFuture, BreakerLayer},
    classify::{Classification, Classify, ClassifyFn, GrpcClassifier, HttpClassifier, classify_fn},
    error::{Rejected, handle_error, rejection_response},
    key::{ForwardedHeader, FromHeader, HeaderKey, KeyExtractor, PeerAddr, PeerIp},
    keyed::{
        KeyedFuture, KeyedRateLimit, KeyedRateLimitLayer, MissingKey, NoKeyError, QuotaHeaders,
        RateLimitHeaders,
    },
    limit::{ConcurrencyLimitLayer, ConcurrencyLimited, GuardedFuture},
    policy::{DeadlineFormat, PolicyFuture, PolicyLayer, PolicyService},
    shed::{LoadShed, LoadShedLayer, RateLimit, RateLimitLayer, ResponseFuture},
};

/// The error type of the services here: any error, boxed, as tower's own
/// middleware uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
