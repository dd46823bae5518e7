//! One priority tag honoured by the policy's stages: the 20/60/20
//! critical/default/sheddable overload simulation of issue #24, on tokio's
//! paused clock. Each request's outcome is recorded by the simulated caller,
//! not read from the policy's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heijunka::backpressure::{ConcurrencyLimit, LoadShedder};
use heijunka::context::RequestContext;
use heijunka::core::Criticality;
use heijunka::policy::Policy;
use tokio::time::Instant;

const SERVICE: Duration = Duration::from_millis(100);

/// Sends `rate` requests per second for `secs` through `policy`, a fifth
/// critical, three fifths default and a fifth sheddable; each admitted request
/// holds its admission for `SERVICE`. Returns (offered, served) per criticality.
async fn overload(policy: Policy, rate: u64, secs: u64) -> [(u64, u64); 3] {
    let counts: Arc<[[AtomicU64; 2]; 3]> = Arc::new(Default::default());
    let start = Instant::now();
    let gap = Duration::from_secs(1) / rate as u32;
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let c = match i % 5 {
            0 => Criticality::Critical,
            4 => Criticality::Sheddable,
            _ => Criticality::Default,
        };
        let ctx = RequestContext::builder().criticality(c).build();
        counts[c.index()][0].fetch_add(1, Ordering::Relaxed);
        if let Ok(admission) = policy.try_admit(&ctx) {
            let counts = counts.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(SERVICE).await;
                admission.success();
                counts[c.index()][1].fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    Criticality::ALL.map(|c| {
        let [offered, served] = &counts[c.index()];
        (
            offered.load(Ordering::Relaxed),
            served.load(Ordering::Relaxed),
        )
    })
}

fn rate((offered, served): (u64, u64)) -> f64 {
    served as f64 / offered as f64
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn critical_work_is_served_under_overload_and_sheddable_goes_first() {
    // Capacity: 100 in flight for 100 ms = 1,000 requests/s; offered 1,500/s.
    let limit = ConcurrencyLimit::new(100).unwrap();
    let policy = Policy::builder()
        .load_shedder(
            "limit",
            LoadShedder::builder().signal(limit.clone()).build(),
        )
        .concurrency_limit(limit.clone())
        .critical_reserve(0.1)
        .build()
        .unwrap();
    let [sheddable, default, critical] = overload(policy, 1500, 10).await;
    eprintln!(
        "20/60/20 at 1.5x capacity: critical {:.1} %, default {:.1} %, sheddable {:.1} % served",
        rate(critical) * 100.0,
        rate(default) * 100.0,
        rate(sheddable) * 100.0
    );
    assert!(rate(critical) >= 0.99, "critical {critical:?}");
    assert!(
        rate(sheddable) < rate(default),
        "{sheddable:?} vs {default:?}"
    );
    assert!(rate(default) < rate(critical));
    // The capacity stays in use, less the reserve kept for critical work that
    // does not come.
    let served = sheddable.1 + default.1 + critical.1;
    assert!(served >= 8_500, "the capacity is used: {served} in 10 s");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_criticality_every_class_suffers_alike() {
    // The control: the same overload with no criticality-aware stage.
    let limit = ConcurrencyLimit::new(100).unwrap();
    let policy = Policy::builder().concurrency_limit(limit).build().unwrap();
    let [sheddable, default, critical] = overload(policy, 1500, 10).await;
    eprintln!(
        "control: critical {:.1} %, default {:.1} %, sheddable {:.1} % served",
        rate(critical) * 100.0,
        rate(default) * 100.0,
        rate(sheddable) * 100.0
    );
    assert!(rate(critical) < 0.9, "critical {critical:?}");
    assert!((rate(critical) - rate(sheddable)).abs() < 0.05);
}

#[test]
fn a_reserve_outside_zero_to_one_is_refused_by_name() {
    for share in [-0.1, 1.0, f64::NAN] {
        let e = Policy::builder()
            .critical_reserve(share)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "critical_reserve");
    }
}

#[cfg(feature = "tower")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_policy_layer_reads_criticality_from_the_header() {
    use heijunka::tower::PolicyLayer;
    use tower::{Layer, Service, ServiceExt, service_fn};

    let policy = Policy::builder().build().unwrap();
    let layer = |trusted: bool| {
        PolicyLayer::new(policy.clone())
            .criticality_header(trusted)
            .layer(service_fn(|req: http::Request<String>| async move {
                let ctx = req.extensions().get::<RequestContext>().cloned().unwrap();
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    ctx.criticality().to_string(),
                ))
            }))
    };
    for (trusted, header, expected) in [
        (true, Some("critical"), "critical"),
        (true, Some("SHEDDABLE"), "sheddable"),
        (true, Some("urgent"), "default"),
        (true, None, "default"),
        // Not trusted (the default): a client cannot claim critical.
        (false, Some("critical"), "default"),
    ] {
        let mut req = http::Request::builder();
        if let Some(h) = header {
            req = req.header(Criticality::HEADER, h);
        }
        let mut svc = layer(trusted);
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(req.body(String::new()).unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, expected, "{header:?}, trusted: {trusted}");
    }
}

#[test]
fn an_adaptive_limit_is_partitioned_by_criticality() {
    use heijunka::backpressure::{AdaptiveLimit, Aimd};
    let limit = AdaptiveLimit::builder(Aimd::builder().initial_limit(20).build().unwrap())
        .build()
        .unwrap();
    let policy = Policy::builder()
        .adaptive_limit(limit.clone())
        .sheddable_share(0.5)
        .critical_reserve(0.1)
        .build()
        .unwrap();
    let ctx = |c| RequestContext::builder().criticality(c).build();
    let mut held = Vec::new();
    // Sheddable work fills half of the limit at most...
    while let Ok(a) = policy.try_admit(&ctx(Criticality::Sheddable)) {
        held.push(a);
    }
    assert_eq!(held.len(), 10);
    // ...default work up to the critical reserve...
    while let Ok(a) = policy.try_admit(&ctx(Criticality::Default)) {
        held.push(a);
    }
    assert_eq!(held.len(), 18);
    // ...and critical work the rest.
    while let Ok(a) = policy.try_admit(&ctx(Criticality::Critical)) {
        held.push(a);
    }
    assert_eq!(held.len(), 20);
    for e in [0.0, 1.5, f64::NAN] {
        let err = Policy::builder().sheddable_share(e).build().unwrap_err();
        assert_eq!(err.field(), "sheddable_share");
    }
}
