//! The per-client rate-limit layer: one bucket per key, keys taken from the peer
//! address (trusting forwarding headers only from trusted proxies), a header or a
//! closure, and the quota reported in response headers. Time is a `ManualClock`;
//! expected header values are worked out by hand from the GCRA rule in each test.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::routing::get;
use heijunka::backpressure::{KeyedRateLimiter, OverflowPolicy};
use heijunka::core::cancel::{Polled, cancel_points};
use heijunka::core::{ManualClock, Rejection};
use heijunka::tower::{
    BoxError, ForwardedHeader, FromHeader, KeyExtractor, KeyedRateLimitLayer, MissingKey,
    NoKeyError, PeerAddr, PeerIp, RateLimitHeaders, Rejected, Stage, handle_error,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

type Req = Request<()>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A limiter on `clock`: `per_second` per key, bursts of `burst`.
fn limiter<K: std::hash::Hash + Eq>(
    clock: &ManualClock,
    per_second: f64,
    burst: u32,
) -> KeyedRateLimiter<K> {
    KeyedRateLimiter::builder(per_second)
        .burst(burst)
        .clock(clock.clock())
        .build()
        .unwrap()
}

/// An inner service counting its calls on a counter the test owns.
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send> + Clone + use<>
{
    let calls = Arc::clone(calls);
    service_fn(move |_: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
    })
}

/// A request from `peer`, with `headers`.
fn from(peer: &str, headers: &[(&str, &str)]) -> Req {
    let mut req = Request::get("/");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    req
}

/// Sends `req` through `svc`: the response, or the boxed error.
async fn send<S>(svc: &mut S, req: Req) -> Result<Response<String>, BoxError>
where
    S: Service<Req, Response = Response<String>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// The response a refusal becomes (as under axum's `HandleErrorLayer`).
async fn answer(result: Result<Response<String>, BoxError>) -> Response<String> {
    match result {
        Ok(response) => response,
        Err(err) => handle_error(err).await,
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// (`limit`, `remaining`, `reset`) as `RateLimit-*` headers say them.
fn quota(headers: &HeaderMap) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        header(headers, "ratelimit-limit"),
        header(headers, "ratelimit-remaining"),
        header(headers, "ratelimit-reset"),
    )
}

fn rejected(err: &BoxError) -> Rejected {
    *err.downcast_ref::<Rejected>().expect("a Rejected")
}

#[tokio::test]
async fn each_key_has_its_own_bucket() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc =
        KeyedRateLimitLayer::new(limiter(&clock, 1.0, 2), PeerIp::new()).layer(counting(&calls));
    for _ in 0..2 {
        send(&mut svc, from("192.0.2.1:1000", &[])).await.unwrap();
    }
    let err = send(&mut svc, from("192.0.2.1:1001", &[]))
        .await
        .unwrap_err();
    let r = rejected(&err);
    assert_eq!(r.stage(), Stage::RateLimit);
    // tat 2 s after two at t = 0; 2 + 1 − 0 − 2 = 1 s.
    assert_eq!(
        r.reason(),
        Rejection::RateLimited {
            retry_after: Duration::from_secs(1)
        }
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a refused request never reaches the service"
    );
    // Another client, same instant: its own full bucket.
    for _ in 0..2 {
        send(&mut svc, from("192.0.2.2:1000", &[])).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn services_from_one_layer_and_its_clones_share_the_limiter() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 1), PeerIp::new());
    let mut a = layer.layer(counting(&calls));
    let mut b = layer.clone().layer(counting(&calls));
    send(&mut a, from("192.0.2.1:1", &[])).await.unwrap();
    assert!(send(&mut b, from("192.0.2.1:2", &[])).await.is_err());
    assert_eq!(layer.limiter().len(), 1);
}

#[tokio::test]
async fn forwarded_for_is_read_only_from_a_trusted_proxy() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let key = PeerIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
    let mut svc = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 1), key).layer(counting(&calls));

    // Through our proxy (10.0.0.5): the client is the right-most untrusted hop;
    // "6.6.6.6" was written by the client and is not believed.
    let via_proxy = |xff: &str| from("10.0.0.5:443", &[("x-forwarded-for", xff)]);
    send(&mut svc, via_proxy("6.6.6.6, 203.0.113.7, 10.0.0.9"))
        .await
        .unwrap();
    // Same client, a different forged prefix: same key, refused.
    assert!(
        send(&mut svc, via_proxy("7.7.7.7, 203.0.113.7"))
            .await
            .is_err()
    );
    // Another client behind the same proxy has its own bucket.
    send(&mut svc, via_proxy("203.0.113.8")).await.unwrap();
    // The proxy's own bucket is untouched by its clients' requests.
    send(&mut svc, from("10.0.0.5:443", &[])).await.unwrap();

    // A client connecting directly cannot pick its key with the header: a new
    // forged address per request is still one peer, limited as one.
    let direct = |xff: &str| from("198.51.100.9:5000", &[("x-forwarded-for", xff)]);
    send(&mut svc, direct("1.1.1.1")).await.unwrap();
    for forged in ["1.1.1.2", "203.0.113.9", "10.0.0.1"] {
        let err = send(&mut svc, direct(forged)).await.unwrap_err();
        assert_eq!(rejected(&err).stage(), Stage::RateLimit, "{forged}");
    }
    // And the forged addresses' own buckets were never touched.
    send(&mut svc, via_proxy("1.1.1.2")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[test]
fn x_forwarded_for_walk() {
    let key = PeerIp::new()
        .trust_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])
        .unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        // Untrusted peer: headers ignored.
        ("192.0.2.1:1", &["203.0.113.1"], "192.0.2.1"),
        // Trusted peer, no header: the peer.
        ("10.0.0.1:1", &[], "10.0.0.1"),
        // Several header lines are one list, in order.
        (
            "10.0.0.1:1",
            &["1.1.1.1, 203.0.113.1", "10.0.0.2"],
            "203.0.113.1",
        ),
        // Every hop trusted: the left-most.
        ("10.0.0.1:1", &["10.9.9.9, 10.0.0.2"], "10.9.9.9"),
        // Garbage where our proxy should have written an address: the nearest
        // trusted hop, never what is left of the garbage.
        (
            "10.0.0.1:1",
            &["203.0.113.1, garbage, 10.0.0.2"],
            "10.0.0.2",
        ),
        // Ports, IPv6, IPv4-mapped IPv6 and blanks.
        ("10.0.0.1:1", &["[2001:db8::1]:443 , "], "2001:db8::1"),
        ("10.0.0.1:1", &["203.0.113.1:8080"], "203.0.113.1"),
        (
            "[::ffff:10.0.0.1]:1",
            &["::ffff:203.0.113.1"],
            "203.0.113.1",
        ),
        ("[2001:db8:ffff::1]:1", &["2001:db8::7"], "2001:db8::7"),
    ];
    for &(peer, xff, want) in cases {
        let mut req = Request::get("/");
        for v in xff {
            req = req.header("x-forwarded-for", *v);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        assert_eq!(key.extract(&req), Some(ip(want)), "{peer} {xff:?}");
        // Only the configured header is read.
        let mut req = Request::get("/")
            .header("forwarded", "for=6.6.6.6")
            .body(())
            .unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        let peer_ip = peer.parse::<SocketAddr>().unwrap().ip().to_canonical();
        assert_eq!(
            key.extract(&req),
            Some(peer_ip),
            "{peer}: Forwarded ignored"
        );
    }
}

#[test]
fn forwarded_header_walk() {
    let key = PeerIp::new()
        .trust_proxies(["10.0.0.0/8"])
        .unwrap()
        .forwarded_header(ForwardedHeader::Forwarded);
    let cases: &[(&str, &str)] = &[
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        // Quoted, with a port; parameter names in any case.
        ("For=\"192.0.2.60:4711\"", "192.0.2.60"),
        // IPv6 in brackets with a port.
        ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
        // Right-most untrusted element; a comma inside a quoted string is no
        // element boundary.
        (
            "for=6.6.6.6;x=\"a,for=7.7.7.7\", for=198.51.100.17, for=10.0.0.2",
            "198.51.100.17",
        ),
        // An obfuscated identifier left of the client is never reached...
        ("for=_spoofed, for=198.51.100.17", "198.51.100.17"),
        // ...and one where the client should be stops the walk at the nearest
        // trusted hop: the client is unknown, what is left of it unbelievable.
        ("for=198.51.100.1, for=_hidden, for=10.0.0.2", "10.0.0.2"),
        ("for=198.51.100.1, for=unknown", "10.0.0.1"),
        ("for=198.51.100.1, for=\"_SEVKISEK\"", "10.0.0.1"),
        // An element without `for`.
        ("for=198.51.100.1, proto=https", "10.0.0.1"),
        // An unbalanced quote in the client's part cannot hide our proxy's.
        ("for=\"6.6.6.6, for=198.51.100.17", "198.51.100.17"),
    ];
    for &(forwarded, want) in cases {
        let mut req = Request::get("/")
            .header("forwarded", forwarded)
            .header("x-forwarded-for", "6.6.6.6")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("10.0.0.1:1".parse().unwrap()));
        assert_eq!(key.extract(&req), Some(ip(want)), "{forwarded}");
    }
}

#[test]
fn the_peer_address_sources() {
    let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let other: SocketAddr = "192.0.2.2:1".parse().unwrap();
    let key = PeerIp::new();
    let mut req = Request::new(());
    assert_eq!(key.extract(&req), None, "no address, no key");
    req.extensions_mut().insert(addr);
    assert_eq!(key.extract(&req), Some(addr.ip()), "a bare SocketAddr");
    req.extensions_mut().insert(PeerAddr(other));
    assert_eq!(
        key.extract(&req),
        Some(other.ip()),
        "PeerAddr before SocketAddr"
    );

    let mut req = Request::new(());
    req.extensions_mut().insert(ConnectInfo(addr));
    assert_eq!(key.extract(&req), None, "ConnectInfo needs a reader");
    let key = key.peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    assert_eq!(key.extract(&req), Some(addr.ip()));
    req.extensions_mut().insert(PeerAddr(other));
    assert_eq!(key.extract(&req), Some(addr.ip()), "the reader first");
    let mut req = Request::new(());
    req.extensions_mut().insert(PeerAddr(other));
    assert_eq!(key.extract(&req), Some(other.ip()), "then PeerAddr");
}

#[test]
fn ipv6_clients_keyed_by_prefix() {
    let key = PeerIp::new()
        .trust_proxies(["10.0.0.0/8"])
        .unwrap()
        .ipv6_prefix(64)
        .unwrap();
    let cases = [
        ("[2001:db8:1:2:aaaa::1]:1", None, "2001:db8:1:2::"),
        ("[2001:db8:1:2:ffff::9]:1", None, "2001:db8:1:2::"),
        ("[2001:db8:1:3::1]:1", None, "2001:db8:1:3::"),
        ("192.0.2.7:1", None, "192.0.2.7"),
        // The client behind a proxy is masked too; the walk compares whole
        // addresses.
        ("10.0.0.1:1", Some("2001:db8:9:9:1::1"), "2001:db8:9:9::"),
    ];
    for (peer, xff, want) in cases {
        let mut req = Request::get("/");
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        assert_eq!(key.extract(&req), Some(ip(want)), "{peer}");
    }
    for bad in [0, 129] {
        let e = PeerIp::new().ipv6_prefix(bad).unwrap_err().to_string();
        assert!(
            e.contains("ipv6_prefix") && e.contains(&bad.to_string()),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_header_keys_requests() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = KeyedRateLimitLayer::new(
        limiter(&clock, 1.0, 1),
        FromHeader::named("X-Api-Key").unwrap(),
    )
    .layer(counting(&calls));
    let with_key = |k: &str| from("192.0.2.1:1", &[("x-api-key", k)]);
    send(&mut svc, with_key("alpha")).await.unwrap();
    assert!(send(&mut svc, with_key("alpha")).await.is_err());
    send(&mut svc, with_key("beta")).await.unwrap();
    // An empty value is no key: refused by default, as a missing key.
    let err = send(&mut svc, with_key("")).await.unwrap_err();
    assert!(err.is::<NoKeyError>());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_closure_keys_requests() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let tenant = |req: &Req| req.uri().path().strip_prefix("/t/").map(str::to_owned);
    let mut svc = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 1), tenant).layer(counting(&calls));
    let at = |path: &str| Request::get(path).body(()).unwrap();
    send(&mut svc, at("/t/acme")).await.unwrap();
    assert!(send(&mut svc, at("/t/acme")).await.is_err());
    send(&mut svc, at("/t/globex")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_without_a_key() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let anonymous = || Request::new(());

    // Default: refused with `NoKeyError`, a 500; the service is not called.
    let mut svc = KeyedRateLimitLayer::new(limiter::<IpAddr>(&clock, 1.0, 1), PeerIp::new())
        .layer(counting(&calls));
    let err = send(&mut svc, anonymous()).await.unwrap_err();
    assert!(err.is::<NoKeyError>(), "{err}");
    let response = answer(Err(err)).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Admit: through, unlimited, without quota headers.
    let mut svc = KeyedRateLimitLayer::new(limiter::<IpAddr>(&clock, 1.0, 1), PeerIp::new())
        .missing_key(MissingKey::Admit)
        .layer(counting(&calls));
    for _ in 0..3 {
        let response = send(&mut svc, anonymous()).await.unwrap();
        assert_eq!(quota(response.headers()), (None, None, None));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Fallback: every keyless request shares the fallback key's bucket, which is
    // a bucket like any other (a client at that address shares it too).
    let fallback = ip("0.0.0.0");
    let mut svc = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 2), PeerIp::new())
        .missing_key(MissingKey::Fallback(fallback))
        .layer(counting(&calls));
    let response = send(&mut svc, anonymous()).await.unwrap();
    assert_eq!(quota(response.headers()).1, Some("1"));
    send(&mut svc, anonymous()).await.unwrap();
    assert!(send(&mut svc, anonymous()).await.is_err());
    send(&mut svc, from("192.0.2.1:1", &[])).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

/// 0.5 per second (`T` = 2 s), bursts of 2 (`b·T` = 4 s). Admit iff
/// `max(tat, now) + T − now ≤ 4 s`; remaining `⌊(4 s − ahead) / T⌋`, reset `ahead`
/// (`ahead = max(tat − now, 0)`) in seconds rounded up, Retry-After the refusal's
/// `max(tat, now) + T − now − 4 s` rounded up.
#[tokio::test]
async fn exact_headers_on_admitted_and_refused_responses() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc =
        KeyedRateLimitLayer::new(limiter(&clock, 0.5, 2), PeerIp::new()).layer(counting(&calls));
    let mut go = async || answer(send(&mut svc, from("192.0.2.1:1", &[])).await).await;

    // t = 0: tat 2 s: remaining ⌊(4 − 2) / 2⌋ = 1, reset 2.
    let r = go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(quota(r.headers()), (Some("2"), Some("1"), Some("2")));
    assert_eq!(header(r.headers(), "retry-after"), None);
    // t = 0: tat 4 s: remaining 0, reset 4.
    let r = go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(quota(r.headers()), (Some("2"), Some("0"), Some("4")));
    // t = 0: 4 + 2 − 0 = 6 > 4: refused; retry after 2 s; tat stays 4 s.
    let r = go().await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(quota(r.headers()), (Some("2"), Some("0"), Some("4")));
    assert_eq!(header(r.headers(), "retry-after"), Some("2"));
    // t = 1.5 s: ahead 2.5 s; 4 + 2 − 1.5 = 4.5 > 4: refused, retry after 0.5 s
    // → 1; reset 2.5 → 3; remaining ⌊1.5 / 2⌋ = 0.
    clock.advance(ms(1500));
    let r = go().await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(quota(r.headers()), (Some("2"), Some("0"), Some("3")));
    assert_eq!(header(r.headers(), "retry-after"), Some("1"));
    // t = 2 s: 4 + 2 − 2 = 4 ≤ 4: admitted; tat 6 s, ahead 4: remaining 0, reset 4.
    clock.advance(ms(500));
    let r = go().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(quota(r.headers()), (Some("2"), Some("0"), Some("4")));
    // t = 11 s: the bucket is full again (tat 6 s passed): as a fresh one.
    clock.advance(Duration::from_secs(9));
    let r = go().await;
    assert_eq!(quota(r.headers()), (Some("2"), Some("1"), Some("2")));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_x_ratelimit_form_and_none() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = KeyedRateLimitLayer::new(limiter(&clock, 0.5, 2), PeerIp::new())
        .headers(RateLimitHeaders::XRateLimit)
        .layer(counting(&calls));
    // Same values as the IETF form (see the test above), other names.
    let r = answer(send(&mut svc, from("192.0.2.1:1", &[])).await).await;
    let x = |r: &Response<String>, n: &str| header(r.headers(), n).map(str::to_owned);
    assert_eq!(x(&r, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(x(&r, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(x(&r, "x-ratelimit-reset").as_deref(), Some("2"));
    assert_eq!(quota(r.headers()), (None, None, None));
    send(&mut svc, from("192.0.2.1:1", &[])).await.unwrap();
    let r = answer(send(&mut svc, from("192.0.2.1:1", &[])).await).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(x(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(x(&r, "x-ratelimit-reset").as_deref(), Some("4"));
    assert_eq!(x(&r, "retry-after").as_deref(), Some("2"));

    let mut svc = KeyedRateLimitLayer::new(limiter(&clock, 0.5, 1), PeerIp::new())
        .headers(RateLimitHeaders::Off)
        .layer(counting(&calls));
    let r = answer(send(&mut svc, from("192.0.2.1:1", &[])).await).await;
    assert_eq!(r.headers().len(), 0, "{:?}", r.headers());
    let r = answer(send(&mut svc, from("192.0.2.1:1", &[])).await).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(quota(r.headers()), (None, None, None));
    assert!(x(&r, "x-ratelimit-limit").is_none());
    // 0 + 2 − 0 − 2 = 2 s.
    assert_eq!(x(&r, "retry-after").as_deref(), Some("2"));
}

#[tokio::test]
async fn an_exhausted_key_budget_is_a_429() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    // One key at most; 1 per second, bursts of 3.
    let budget = |policy| {
        KeyedRateLimiter::builder(1.0)
            .burst(3)
            .max_keys(1)
            .overflow(policy)
            .clock(clock.clock())
            .build()
            .unwrap()
    };
    let mut svc = KeyedRateLimitLayer::new(budget(OverflowPolicy::Reject), PeerIp::new())
        .layer(counting(&calls));
    send(&mut svc, from("192.0.2.1:1", &[])).await.unwrap(); // tat 1 s
    clock.advance(ms(200));
    // A second client at t = 0.2 s: the budget is full, the held key is busy until
    // 1 s: retry after 0.8 s.
    let err = send(&mut svc, from("192.0.2.2:1", &[])).await.unwrap_err();
    assert_eq!(
        rejected(&err).reason(),
        Rejection::RateLimited {
            retry_after: ms(800)
        }
    );
    let r = answer(Err(err)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(r.headers(), "retry-after"), Some("1"));
    assert_eq!(quota(r.headers()), (Some("3"), Some("0"), Some("1")));
    // At 1 s the held key is idle and gives way.
    clock.advance(ms(800));
    send(&mut svc, from("192.0.2.2:1", &[])).await.unwrap();

    // SharedBucket: new keys past the budget share one bucket.
    let mut svc = KeyedRateLimitLayer::new(budget(OverflowPolicy::SharedBucket), PeerIp::new())
        .layer(counting(&calls));
    send(&mut svc, from("192.0.2.1:1", &[])).await.unwrap();
    for (client, remaining) in [
        ("192.0.2.2:1", "2"),
        ("192.0.2.3:1", "1"),
        ("192.0.2.4:1", "0"),
    ] {
        let r = send(&mut svc, from(client, &[])).await.unwrap();
        assert_eq!(quota(r.headers()).1, Some(remaining), "{client}");
    }
    assert!(send(&mut svc, from("192.0.2.5:1", &[])).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

/// An inner future that is pending `polls` times before answering, and counts
/// its drops.
struct Slow {
    polls: usize,
    drops: Arc<AtomicUsize>,
}

impl Future for Slow {
    type Output = Result<Response<String>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(Ok(Response::new(String::new())));
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Dropping the layer's future at any poll drops the inner future once and leaves
/// the limiter as `call` left it: one unit spent per call, nothing held, nothing
/// given back (observed through a second check of the key, whose remaining count
/// the GCRA rule fixes: burst 100, so after `c` calls a probe sees `99 − c`).
#[test]
fn cancel_at_every_poll() {
    let clock = ManualClock::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let layer = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 100), PeerIp::new());
    let inner_drops = Arc::clone(&drops);
    let mut svc = layer.layer(service_fn(move |_: Req| Slow {
        polls: 3,
        drops: Arc::clone(&inner_drops),
    }));
    let mut calls = 0;
    let covered = cancel_points(10, |k| {
        let future = svc.call(from("192.0.2.1:1", &[]));
        calls += 1;
        let outcome = Polled::new(future).drop_after(k);
        assert_eq!(
            drops.swap(0, Ordering::SeqCst),
            1,
            "k = {k}: inner future dropped once"
        );
        let probe = layer.limiter().check_key_state(&ip("192.0.2.1"));
        calls += 1;
        assert_eq!(probe.state.remaining, 100 - calls, "k = {k}");
        outcome
    });
    assert_eq!(covered, 4);

    // A refused call's future holds no inner future.
    let layer = KeyedRateLimitLayer::new(limiter(&clock, 1.0, 1), PeerIp::new());
    let mut svc = layer.layer(service_fn(move |_: Req| Slow {
        polls: 0,
        drops: Arc::new(AtomicUsize::new(0)),
    }));
    let _ = Polled::new(svc.call(from("192.0.2.1:1", &[]))).drop_after(1);
    for k in 0..2 {
        let outcome = Polled::new(svc.call(from("192.0.2.1:1", &[]))).drop_after(k);
        assert_eq!(outcome.is_completed(), k == 1);
    }
    assert_eq!(layer.limiter().len(), 1);
}

/// axum on a real socket, keyed by the peer address axum's
/// `into_make_service_with_connect_info` provides (127.0.0.1 here), with
/// 127.0.0.1 trusted as a proxy so `X-Forwarded-For` picks the client.
#[tokio::test]
async fn axum_over_tcp_keys_by_peer_ip() {
    let clock = ManualClock::new();
    let limiter: Arc<KeyedRateLimiter<IpAddr>> = Arc::new(limiter(&clock, 1.0, 2));
    let direct =
        PeerIp::new().peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    let via_proxy = direct.clone().trust_proxies(["127.0.0.1"]).unwrap();

    let app = |key: PeerIp, limiter: Arc<KeyedRateLimiter<IpAddr>>| {
        Router::new().route("/", get(|| async { "hello" })).layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(KeyedRateLimitLayer::from_arc(limiter, key)),
        )
    };
    let serve = async |app: Router| {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        format!("http://{addr}/")
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = async |url: &str, xff: Option<&str>| {
        let mut req = Request::get(url);
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let response = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let _ = body.collect().await;
        (parts.status, parts.headers)
    };

    let url = serve(app(direct, Arc::clone(&limiter))).await;
    let (status, headers) = get(&url, Some("203.0.113.1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(quota(&headers), (Some("2"), Some("1"), Some("1")));
    let (status, _) = get(&url, Some("203.0.113.2")).await;
    assert_eq!(status, StatusCode::OK);
    // A third from 127.0.0.1, whatever the header says: refused.
    let (status, headers) = get(&url, Some("203.0.113.3")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(quota(&headers), (Some("2"), Some("0"), Some("2")));
    assert_eq!(limiter.len(), 1, "one key: the peer");
    let probe = limiter.check_key_state(&ip("127.0.0.1"));
    assert!(
        probe.result.is_err(),
        "the peer's own bucket is the one spent"
    );

    // Trusting 127.0.0.1 as a proxy: the header names the client.
    let limiter: Arc<KeyedRateLimiter<IpAddr>> = Arc::new(self::limiter(&clock, 1.0, 2));
    let url = serve(app(via_proxy, Arc::clone(&limiter))).await;
    for _ in 0..2 {
        assert_eq!(get(&url, Some("203.0.113.1")).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&url, Some("203.0.113.1")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get(&url, Some("203.0.113.2")).await.0, StatusCode::OK);
    assert_eq!(get(&url, None).await.0, StatusCode::OK, "the proxy itself");
    assert_eq!(limiter.len(), 3);

    // Without a peer-address reader, axum's ConnectInfo is not found: no key,
    // refused (500) rather than unlimited.
    let limiter: Arc<KeyedRateLimiter<IpAddr>> = Arc::new(self::limiter(&clock, 1.0, 2));
    let url = serve(app(PeerIp::new(), limiter)).await;
    assert_eq!(get(&url, None).await.0, StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn a_clients_non_ascii_entry_does_not_make_the_proxy_the_key() {
    // nginx appends the real client to the line the client sent: junk bytes in
    // the client's own entry must stop the walk there, not at the proxy.
    let key = PeerIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
    for header in ["x-forwarded-for", "forwarded"] {
        let value: &[u8] = if header == "forwarded" {
            b"for=\"\xffjunk\", for=203.0.113.7"
        } else {
            b"\xffjunk, 203.0.113.7"
        };
        let mut req = Request::get("/")
            .header(header, http::HeaderValue::from_bytes(value).unwrap())
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("10.0.0.5:443".parse().unwrap()));
        let mut key = key.clone();
        if header == "forwarded" {
            key = key.forwarded_header(ForwardedHeader::Forwarded);
        }
        assert_eq!(key.extract(&req), Some(ip("203.0.113.7")), "{header}");
    }
}
