//! The keyed rate-limit layer allocates nothing per request for a known key: the
//! same allocations with the layer as without it (the inner service's own), with
//! and without quota headers (whose numbers, below 1000 here, are written without
//! allocating).
#![cfg(all(feature = "tower", feature = "alloc-tracking"))]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::Bytes;
use heijunka::backpressure::KeyedRateLimiter;
use heijunka::memory::{CountingAlloc, measure_allocations};
use heijunka::tower::{
    FromHeader, HeaderKey, KeyedRateLimitLayer, PeerAddr, PeerIp, RateLimitHeaders,
};
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

/// An inner service whose response has room for a few headers already (as any
/// real one with a content type has): its allocations are the baseline.
fn inner() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    service_fn(|_: Request<()>| async {
        let mut response = Response::new(());
        *response.headers_mut() = HeaderMap::with_capacity(8);
        Ok::<_, Infallible>(response)
    })
}

/// Calls `svc` with each request and polls the future to completion by hand.
fn drive<S>(svc: &mut S, requests: Vec<Request<()>>)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for req in requests {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut future = pin!(svc.call(req));
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(result) => drop(result.expect("admitted")),
            Poll::Pending => panic!("the inner future is ready at once"),
        }
    }
}

/// `n` requests from one peer with one API key. The key's bytes are shared, as
/// hyper shares a connection's read buffer among the header values it parses
/// (a header value built from a `&str` instead allocates once when first cloned).
fn requests(n: usize) -> Vec<Request<()>> {
    let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let shared = Bytes::from(b"k-1".to_vec());
    drop(shared.clone()); // now refcounted: further clones only count
    (0..n)
        .map(|_| {
            let key = HeaderValue::from_maybe_shared(shared.clone()).unwrap();
            let mut req = Request::get("/").header("x-api-key", key).body(()).unwrap();
            req.extensions_mut().insert(PeerAddr(peer));
            req
        })
        .collect()
}

#[test]
fn a_known_key_allocates_nothing_more_than_the_service() {
    const N: usize = 200;
    let mut bare_svc = inner();
    let reqs = requests(N);
    let (_, bare) = measure_allocations(|| drive(&mut bare_svc, reqs));
    assert!(bare.allocations >= N as u64, "the baseline is measured");
    for headers in [
        RateLimitHeaders::Off,
        RateLimitHeaders::Ietf,
        RateLimitHeaders::XRateLimit,
    ] {
        let limiter: KeyedRateLimiter<IpAddr> =
            KeyedRateLimiter::builder(1e6).burst(500).build().unwrap();
        let mut svc = KeyedRateLimitLayer::new(limiter, PeerIp::new())
            .headers(headers)
            .layer(inner());
        drive(&mut svc, requests(1)); // the key's first request stores it
        let reqs = requests(N);
        let (_, layered) = measure_allocations(|| drive(&mut svc, reqs));
        assert_eq!(layered.allocations, bare.allocations, "{headers:?}");

        let limiter: KeyedRateLimiter<HeaderKey> =
            KeyedRateLimiter::builder(1e6).burst(500).build().unwrap();
        let mut svc = KeyedRateLimitLayer::new(limiter, FromHeader::named("x-api-key").unwrap())
            .headers(headers)
            .layer(inner());
        drive(&mut svc, requests(1));
        let reqs = requests(N);
        let (_, layered) = measure_allocations(|| drive(&mut svc, reqs));
        assert_eq!(
            layered.allocations, bare.allocations,
            "header key, {headers:?}"
        );
    }
}
