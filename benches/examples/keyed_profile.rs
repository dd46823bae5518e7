//! A fixed number of requests through heijunka's `KeyedRateLimitLayer` or
//! tower-governor's `GovernorLayer` (the `policy/keyed_layer` setup: peer IP from
//! `ConnectInfo`, 1e9/s, burst 100, no rate-limit headers), for instruction counts under
//! callgrind:
//!
//! ```text
//! cargo build --profile bench -p heijunka-benches --example keyed_profile
//! valgrind --tool=callgrind target/release/examples/keyed_profile heijunka 100000
//! ```
//!
//! Run it with `N` and `2 N` requests: the difference of the totals divided by `N`
//! is the cost of one request. Stacks: `heijunka`, `tower_governor`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use heijunka::backpressure::KeyedRateLimiter;
use heijunka::tower::{KeyedRateLimitLayer, PeerIp, RateLimitHeaders};
use tower::{Layer, Service, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

type Req = http::Request<()>;
type Res = http::Response<axum::body::Body>;

async fn run<S>(svc: &mut S, iters: u64)
where
    S: Service<Req, Response = Res>,
    S::Error: std::fmt::Debug,
{
    let addr = SocketAddr::new(IpAddr::from([10, 0, 0, 1]), 40_000);
    for _ in 0..iters {
        let mut req = Req::new(());
        req.extensions_mut()
            .insert(ConnectInfo(std::hint::black_box(addr)));
        let resp = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("admitted");
        drop(std::hint::black_box(resp));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: keyed_profile STACK ITERATIONS";
    let stack = args.next().expect(usage);
    let iters: u64 = args.next().expect(usage).parse().expect(usage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let inner = || {
        tower::service_fn(|_req: Req| async {
            Ok::<_, std::convert::Infallible>(Res::new(axum::body::Body::empty()))
        })
    };
    rt.block_on(async {
        match stack.as_str() {
            "heijunka" => {
                let limiter = KeyedRateLimiter::builder(1e9)
                    .burst(100)
                    .max_keys(2)
                    .build()
                    .expect("valid");
                let key = PeerIp::new()
                    .peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
                let layer = KeyedRateLimitLayer::new(limiter, key).headers(RateLimitHeaders::Off);
                run(&mut layer.layer(inner()), iters).await;
            }
            "tower_governor" => {
                let mut config = GovernorConfigBuilder::default();
                config.per_nanosecond(1).burst_size(100);
                let layer = GovernorLayer::new(config.finish().expect("valid"));
                run(&mut layer.layer(inner()), iters).await;
            }
            // The layer with a closure for the key instead of `PeerIp`.
            "heijunka-closure" => {
                let limiter = KeyedRateLimiter::builder(1e9)
                    .burst(100)
                    .max_keys(2)
                    .build()
                    .expect("valid");
                let key = |req: &Req| {
                    req.extensions()
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|c| c.0.ip())
                };
                let layer = KeyedRateLimitLayer::new(limiter, key).headers(RateLimitHeaders::Off);
                run(&mut layer.layer(inner()), iters).await;
            }
            // Key extraction alone.
            "extract-peerip" | "extract-closure" => {
                use heijunka::tower::KeyExtractor;
                let peer = PeerIp::new()
                    .peer_addr_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
                let closure = |req: &Req| {
                    req.extensions()
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|c| c.0.ip())
                };
                let addr = SocketAddr::new(IpAddr::from([10, 0, 0, 1]), 40_000);
                let mut req = Req::new(());
                req.extensions_mut().insert(ConnectInfo(addr));
                let mut n = 0_u64;
                for _ in 0..iters {
                    let r = std::hint::black_box(&req);
                    let k = if stack == "extract-peerip" {
                        peer.extract(r)
                    } else {
                        closure(r)
                    };
                    n += u64::from(std::hint::black_box(k).is_some());
                }
                assert_eq!(n, iters);
            }
            // The limiters alone, without the layers.
            "heijunka-check" => {
                let limiter: KeyedRateLimiter<IpAddr> = KeyedRateLimiter::builder(1e9)
                    .burst(100)
                    .max_keys(2)
                    .build()
                    .expect("valid");
                let ip = IpAddr::from([10, 0, 0, 1]);
                for _ in 0..iters {
                    limiter
                        .check_key(std::hint::black_box(&ip))
                        .expect("admitted");
                }
            }
            "governor-check" => {
                use governor::{Quota, RateLimiter};
                use std::num::NonZeroU32;
                let quota = Quota::with_period(std::time::Duration::from_nanos(1))
                    .expect("valid")
                    .allow_burst(NonZeroU32::new(100).expect("non-zero"));
                let limiter = RateLimiter::<IpAddr, _, _>::dashmap(quota);
                let ip = IpAddr::from([10, 0, 0, 1]);
                for _ in 0..iters {
                    limiter
                        .check_key(std::hint::black_box(&ip))
                        .expect("admitted");
                }
            }
            other => panic!("unknown stack {other:?}; {usage}"),
        }
    });
}
