//! What a policy tells its operator: `Policy::stats()`, the `metrics` feature's
//! series (docs/metrics.md), and the rejection logs. Each figure is checked
//! against what the test itself saw happen (the results callers got, the paused
//! clock it advanced), not against the counters the policy keeps.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use heijunka::backpressure::ConcurrencyLimit;
use heijunka::breaker::{CircuitBreaker, SlidingWindowType, State};
use heijunka::context::RequestContext;
use heijunka::core::cancel::{Outcome, cancel_points};
use heijunka::policy::{Policy, PolicyError, Stage};
use support::paused_runtime;

#[derive(Debug)]
struct Boom;

fn policy(name: &str, limit: &ConcurrencyLimit) -> Policy {
    Policy::builder()
        .name(name)
        .timeout(Duration::from_millis(100))
        .concurrency_limit(limit.clone())
        .build()
        .unwrap()
}

#[test]
fn stats_count_what_the_callers_saw() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let limit = ConcurrencyLimit::new(2).unwrap();
    let breaker = CircuitBreaker::builder()
        .name("dep")
        .sliding_window(SlidingWindowType::CountBased, 100)
        .minimum_number_of_calls(100)
        .build()
        .unwrap();
    let policy = Policy::builder()
        .name("api")
        .timeout(Duration::from_millis(100))
        .concurrency_limit(limit.clone())
        .breaker(breaker)
        .build()
        .unwrap();
    let ctx = RequestContext::new();
    let (mut ok, mut failed, mut timed_out, mut refused) = (0, 0, 0, 0);
    rt.block_on(async {
        for i in 0..12 {
            let r = policy
                .call(&ctx, |_| async move {
                    match i % 3 {
                        0 => Ok(()),
                        1 => Err(Boom),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            Ok(())
                        }
                    }
                })
                .await;
            match r {
                Ok(()) => ok += 1,
                Err(PolicyError::Call(_)) => failed += 1,
                Err(PolicyError::TimedOut { .. }) => timed_out += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    });
    // Two held admissions fill the limit; the next three are refused.
    let held = [
        policy.try_admit(&ctx).unwrap(),
        policy.try_admit(&ctx).unwrap(),
    ];
    for _ in 0..3 {
        if let Err(PolicyError::Rejected { stage, .. }) = policy.try_admit(&ctx) {
            assert_eq!(stage, Stage::Concurrency);
            refused += 1;
        }
    }
    let stats = policy.stats();
    assert_eq!((ok, failed, timed_out, refused), (4, 4, 4, 3));
    assert_eq!(stats.name, "api");
    assert_eq!(stats.admitted, 12 + 2);
    assert_eq!(stats.completed, 12);
    assert_eq!(stats.in_flight, held.len() as u64);
    assert_eq!(stats.timed_out, timed_out);
    assert_eq!(stats.rejected, refused);
    assert_eq!(stats.rejected_by.len(), 1);
    assert_eq!(stats.rejected_by[0].stage, Stage::Concurrency);
    assert_eq!(stats.rejected_by[0].reason, "at_capacity");
    assert_eq!(stats.rejected_by[0].count, refused);
    assert_eq!(stats.limit, Some(2));
    assert_eq!(stats.breaker, Some(State::Closed));
    assert!(stats.shedding, "a refusal just now");
    drop(held);
    let stats = policy.stats();
    assert_eq!((stats.in_flight, stats.completed), (0, 14));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["rejected_by"][0]["stage"], "concurrency");
    assert_eq!(json["breaker"], "closed");
}

#[test]
fn an_empty_name_is_refused_naming_the_field() {
    let err = Policy::builder().name(" ").build().unwrap_err();
    assert_eq!(err.field(), "name");
}

#[test]
fn a_cancelled_caller_is_counted_under_deadline_cancelled() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = policy("p", &limit);
    let ctx = RequestContext::new();
    ctx.cancel();
    assert!(matches!(
        policy.try_admit(&ctx),
        Err(PolicyError::Cancelled)
    ));
    let stats = policy.stats();
    assert_eq!(stats.rejected_by.len(), 1);
    assert_eq!(stats.rejected_by[0].stage, Stage::Deadline);
    assert_eq!(stats.rejected_by[0].reason, "cancelled");
    assert!(
        !stats.shedding,
        "a caller going away is not the policy shedding"
    );
}

/// `admit` waiting for a permit, dropped after k polls (the permit freed at some
/// poll): whatever k, nothing stays in flight and every admission is completed.
#[test]
fn a_cancelled_admit_leaves_the_counts_balanced() {
    let points = cancel_points(16, |k| {
        let rt = paused_runtime();
        let _g = rt.enter();
        let limit = ConcurrencyLimit::new(1).unwrap();
        let policy = Policy::builder()
            .concurrency_limit(limit.clone())
            .max_wait(Duration::from_millis(50))
            .build()
            .unwrap();
        let mut held = Some(limit.try_acquire_owned().unwrap());
        let ctx = RequestContext::new();
        let outcome =
            heijunka::core::cancel::Polled::new(policy.admit(&ctx)).drop_after_with(k, |i| {
                if i == 2 {
                    held = None;
                }
            });
        let completed = outcome.is_completed();
        drop(outcome.output());
        let stats = policy.stats();
        // A caller that went away while waiting is counted as such; one that
        // never polled never asked.
        let cancelled: Vec<_> = stats
            .rejected_by
            .iter()
            .map(|r| (r.stage, r.reason, r.count))
            .collect();
        if completed || k == 0 {
            assert!(cancelled.is_empty(), "k = {k}: {cancelled:?}");
        } else {
            assert_eq!(cancelled, [(Stage::Deadline, "cancelled", 1)], "k = {k}");
        }
        assert_eq!(stats.in_flight, 0, "k = {k}");
        assert_eq!(stats.admitted, stats.completed, "k = {k}");
        assert_eq!(
            limit.available_permits(),
            1 - u32::from(held.is_some()),
            "k = {k}"
        );
        if completed {
            Outcome::Completed {
                output: (),
                polls: k,
            }
        } else {
            Outcome::Cancelled { polls: k }
        }
    });
    assert!(points >= 3);
}

/// `call` dropped while its work runs: the admission ends with it.
#[test]
fn a_cancelled_call_is_no_longer_in_flight() {
    let rt = paused_runtime();
    let _g = rt.enter();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = policy("p", &limit);
    let ctx = RequestContext::new();
    let mut call = heijunka::core::cancel::Polled::new(policy.call(&ctx, |_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, Boom>(())
    }));
    assert!(!call.poll());
    assert_eq!(policy.stats().in_flight, 1);
    drop(call);
    let stats = policy.stats();
    assert_eq!(
        (stats.admitted, stats.completed, stats.in_flight),
        (1, 1, 0)
    );
    assert_eq!(limit.available_permits(), 1);
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// Every line the fmt subscriber writes, captured.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Captures this thread's log lines at `level` and above while the guard lives.
fn capture(level: tracing::Level) -> (Lines, tracing::subscriber::DefaultGuard) {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

fn count(lines: &[String], level: &str, text: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(level) && l.contains(text))
        .count()
}

#[test]
fn rejections_log_at_debug_and_shedding_warns_when_it_starts_and_ends() {
    let (lines, _sub) = capture(tracing::Level::DEBUG);
    let rt = paused_runtime();
    let _g = rt.enter();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = policy("checkout", &limit);
    let ctx = RequestContext::new();
    let advance = |d: Duration| rt.block_on(tokio::time::advance(d));

    // An episode: 50 refusals within half a second.
    let held = policy.try_admit(&ctx).unwrap();
    for _ in 0..50 {
        assert!(policy.try_admit(&ctx).is_err());
        advance(Duration::from_millis(10));
    }
    let seen = lines.take();
    assert_eq!(
        count(&seen, "DEBUG", "request rejected"),
        50,
        "one DEBUG line per rejection: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|l| l.contains("request rejected"))
            .all(|l| l.contains("stage=\"concurrency\"") && l.contains("reason=\"at_capacity\"")),
        "{seen:#?}"
    );
    assert_eq!(count(&seen, "WARN", "started shedding"), 1, "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("policy=checkout")));

    // Not over while refusals continue; over after a quiet second, seen at the
    // next admission.
    drop(held);
    advance(Duration::from_millis(500));
    drop(policy.try_admit(&ctx).unwrap());
    assert_eq!(count(&lines.take(), "WARN", "stopped shedding"), 0);
    advance(Duration::from_millis(600));
    drop(policy.try_admit(&ctx).unwrap());
    let seen = lines.take();
    assert_eq!(count(&seen, "WARN", "stopped shedding"), 1, "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("rejected=50")), "{seen:#?}");
    assert!(!policy.stats().shedding);

    // A second episode within ten seconds of the first WARN: DEBUG lines, no
    // WARN either way (rate-limited).
    let held = policy.try_admit(&ctx).unwrap();
    assert!(policy.try_admit(&ctx).is_err());
    assert!(policy.stats().shedding);
    drop(held);
    advance(Duration::from_millis(1100));
    drop(policy.try_admit(&ctx).unwrap());
    let seen = lines.take();
    assert_eq!(count(&seen, "DEBUG", "request rejected"), 1);
    assert_eq!(count(&seen, "WARN", "shedding"), 0, "{seen:#?}");

    // Ten seconds later, an episode warns again.
    advance(Duration::from_secs(10));
    let held = policy.try_admit(&ctx).unwrap();
    assert!(policy.try_admit(&ctx).is_err());
    drop(held);
    assert_eq!(count(&lines.take(), "WARN", "started shedding"), 1);
}

/// With no request coming after the last refusal, the episode still ends a
/// quiet second later (a task on the runtime), with its WARN.
#[test]
fn shedding_ends_by_itself_when_traffic_stops() {
    let (lines, _sub) = capture(tracing::Level::WARN);
    let rt = paused_runtime();
    let _g = rt.enter();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = policy("quiet", &limit);
    let ctx = RequestContext::new();
    let held = policy.try_admit(&ctx).unwrap();
    assert!(policy.try_admit(&ctx).is_err());
    drop(held);
    rt.block_on(tokio::time::sleep(Duration::from_millis(900)));
    assert_eq!(count(&lines.take(), "WARN", "stopped shedding"), 0);
    rt.block_on(tokio::time::sleep(Duration::from_millis(200)));
    let seen = lines.take();
    assert_eq!(count(&seen, "WARN", "stopped shedding"), 1, "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("rejected=1")), "{seen:#?}");
}

/// An episode that starts inside the WARN rate limit and outlasts it is said
/// once the limit has passed, and its end is said too.
#[test]
fn a_long_episode_started_inside_the_rate_limit_is_still_warned() {
    let (lines, _sub) = capture(tracing::Level::WARN);
    let rt = paused_runtime();
    let _g = rt.enter();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = policy("long", &limit);
    let ctx = RequestContext::new();
    let advance = |d: Duration| rt.block_on(tokio::time::sleep(d));
    // A blip: started and stopped, both said.
    let held = policy.try_admit(&ctx).unwrap();
    assert!(policy.try_admit(&ctx).is_err());
    drop(held);
    advance(Duration::from_millis(1500));
    let seen = lines.take();
    assert_eq!(count(&seen, "WARN", "started shedding"), 1, "{seen:#?}");
    assert_eq!(count(&seen, "WARN", "stopped shedding"), 1, "{seen:#?}");
    // A long overload starting 2 s in: a refusal every 100 ms for 15 s.
    advance(Duration::from_millis(500));
    let held = policy.try_admit(&ctx).unwrap();
    for _ in 0..150 {
        assert!(policy.try_admit(&ctx).is_err());
        advance(Duration::from_millis(100));
    }
    drop(held);
    advance(Duration::from_millis(1500));
    let seen = lines.take();
    assert_eq!(count(&seen, "WARN", "started shedding"), 0, "{seen:#?}");
    assert_eq!(count(&seen, "WARN", "still shedding"), 1, "{seen:#?}");
    assert_eq!(count(&seen, "WARN", "stopped shedding"), 1, "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("rejected=150")), "{seen:#?}");
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[cfg(feature = "metrics")]
mod metrics {
    use super::*;
    use heijunka_core::metrics::TestRecorder;

    const API: &[(&str, &str)] = &[("name", "api")];

    fn rejected(rec: &TestRecorder, stage: &str, reason: &str) -> Option<u64> {
        rec.counter(
            "heijunka_policy_rejected_total",
            &[("name", "api"), ("stage", stage), ("reason", reason)],
        )
    }

    #[test]
    fn the_documented_series_are_registered_when_the_policy_is_built() {
        let rec = TestRecorder::new();
        let limit = ConcurrencyLimit::new(1).unwrap();
        let _policy = rec.scoped(|| policy("api", &limit));
        let policy_keys: Vec<_> = rec
            .keys()
            .into_iter()
            .filter(|(n, _)| n.starts_with("heijunka_policy_"))
            .collect();
        let plain = |n: &str| (n.to_owned(), vec![("name".to_owned(), "api".to_owned())]);
        let mut expected = vec![
            plain("heijunka_policy_admitted_total"),
            plain("heijunka_policy_in_flight"),
            plain("heijunka_policy_latency_seconds"),
            plain("heijunka_policy_shedding"),
            plain("heijunka_policy_timed_out_total"),
        ];
        // docs/metrics.md: the (stage, reason) pairs that can occur.
        let pairs = [
            ("deadline", "timed_out"),
            ("deadline", "cancelled"),
            ("rate_limit", "rate_limited"),
            ("concurrency", "at_capacity"),
            ("concurrency", "shutting_down"),
            ("breaker", "circuit_open"),
        ]
        .into_iter()
        .chain(
            [
                "at_capacity",
                "rate_limited",
                "circuit_open",
                "memory_pressure",
                "shutting_down",
                "timed_out",
                "queue_full",
                "other",
            ]
            .map(|r| ("load_shed", r)),
        );
        for (stage, reason) in pairs {
            let mut labels = vec![
                ("name".to_owned(), "api".to_owned()),
                ("reason".to_owned(), reason.to_owned()),
                ("stage".to_owned(), stage.to_owned()),
            ];
            labels.sort();
            expected.push(("heijunka_policy_rejected_total".to_owned(), labels));
        }
        expected.sort();
        assert_eq!(policy_keys, expected);
        assert!(rec.help("heijunka_policy_rejected_total").is_some());
        assert_eq!(rejected(&rec, "concurrency", "at_capacity"), Some(0));
    }

    #[test]
    fn each_event_moves_its_series() {
        let rt = paused_runtime();
        let _g = rt.enter();
        let rec = TestRecorder::new();
        let limit = ConcurrencyLimit::new(1).unwrap();
        let policy = rec.scoped(|| policy("api", &limit));
        let ctx = RequestContext::new();
        let in_flight = || rec.gauge("heijunka_policy_in_flight", API).unwrap();

        // A call of 30 ms on the paused clock: admitted, in flight while it
        // runs, then one latency sample of 30 ms.
        rt.block_on(async {
            let r = policy
                .call(&ctx, |_| async {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, Boom>(())
                })
                .await;
            assert!(r.is_ok());
        });
        assert_eq!(rec.counter("heijunka_policy_admitted_total", API), Some(1));
        assert_eq!(in_flight(), 0.0);
        let latency = rec
            .histogram("heijunka_policy_latency_seconds", API)
            .unwrap();
        assert_eq!(latency.len(), 1);
        assert!((latency[0] - 0.030).abs() < 1e-3, "{latency:?}");

        // Held: in flight; the next refused at the concurrency stage.
        let held = policy.try_admit(&ctx).unwrap();
        assert_eq!(in_flight(), 1.0);
        assert!(policy.try_admit(&ctx).is_err());
        assert_eq!(rejected(&rec, "concurrency", "at_capacity"), Some(1));
        assert_eq!(rec.gauge("heijunka_policy_shedding", API), Some(1.0));
        drop(held);
        assert_eq!(in_flight(), 0.0);

        // Past the 100 ms timeout: timed out.
        rt.block_on(async {
            let r = policy
                .call(&ctx, |_| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, Boom>(())
                })
                .await;
            assert!(matches!(r, Err(PolicyError::TimedOut { .. })));
        });
        assert_eq!(rec.counter("heijunka_policy_timed_out_total", API), Some(1));

        // A caller already gone.
        let gone = RequestContext::new();
        gone.cancel();
        assert!(policy.try_admit(&gone).is_err());
        assert_eq!(rejected(&rec, "deadline", "cancelled"), Some(1));

        // A quiet second later, the next admission ends the shedding episode.
        rt.block_on(tokio::time::advance(Duration::from_millis(1100)));
        drop(policy.try_admit(&ctx).unwrap());
        assert_eq!(rec.gauge("heijunka_policy_shedding", API), Some(0.0));
        assert_eq!(rec.counter("heijunka_policy_admitted_total", API), Some(4));
        assert_eq!(
            rec.histogram("heijunka_policy_latency_seconds", API)
                .unwrap()
                .len(),
            4
        );
        assert_eq!(in_flight(), 0.0);
    }

    /// A request that waits for a permit (`max_wait`) and gets one is not a
    /// refusal anywhere, the limit's metrics included; one whose wait runs out
    /// is the policy's refusal.
    #[test]
    fn a_wait_for_a_permit_is_not_counted_as_a_refusal() {
        let rt = paused_runtime();
        let _g = rt.enter();
        let rec = TestRecorder::new();
        let (limit, policy) = rec.scoped(|| {
            let limit = ConcurrencyLimit::named(1, "lim").unwrap();
            let policy = Policy::builder()
                .name("api")
                .concurrency_limit(limit.clone())
                .max_wait(Duration::from_millis(50))
                .build()
                .unwrap();
            (limit, policy)
        });
        let ctx = RequestContext::new();
        let held = limit.try_acquire_owned().unwrap();
        rt.block_on(async {
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(held);
            });
            let admission = policy.admit(&ctx).await.unwrap();
            release.await.unwrap();
            drop(admission);
        });
        let lim = [("name", "lim")];
        assert_eq!(
            rec.counter("heijunka_limiter_rejected_total", &lim),
            Some(0)
        );
        assert_eq!(policy.stats().rejected, 0);
        assert_eq!(rec.counter("heijunka_policy_admitted_total", API), Some(1));

        let _held = limit.try_acquire_owned().unwrap();
        rt.block_on(async {
            assert!(policy.admit(&ctx).await.is_err());
        });
        assert_eq!(rejected(&rec, "concurrency", "at_capacity"), Some(1));
    }

    /// A policy built with no recorder installed emits nothing and works.
    #[test]
    fn without_a_recorder_nothing_is_emitted() {
        let rec = TestRecorder::new();
        let limit = ConcurrencyLimit::new(1).unwrap();
        let policy = policy("api", &limit);
        rec.scoped(|| drop(policy.try_admit(&RequestContext::new()).unwrap()));
        assert!(rec.keys().is_empty());
        assert_eq!(policy.stats().admitted, 1);
    }
}

/// The tower layer's refusals count too, those decided in `poll_ready`
/// included; the admitted request stays in flight until its body is done.
#[cfg(feature = "tower")]
#[tokio::test(start_paused = true)]
async fn the_tower_layer_counts_refusals_made_in_poll_ready_and_open_bodies() {
    use heijunka::tower::PolicyLayer;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt, service_fn};

    let limit = ConcurrencyLimit::new(1).unwrap();
    let policy = Policy::builder()
        .concurrency_limit(limit.clone())
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut svc = PolicyLayer::new(policy.clone())
        .reserve_in_poll_ready(true)
        .layer(service_fn(|_: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("body")))
        }));
    let held = limit.try_acquire_owned().unwrap();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert!(svc.call(http::Request::new(())).await.is_err());
    let stats = policy.stats();
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(stats.rejected_by[0].stage, Stage::Concurrency);
    drop(held);

    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(policy.stats().in_flight, 1, "the body holds the admission");
    drop(response);
    let stats = policy.stats();
    assert_eq!((stats.admitted, stats.in_flight), (1, 0));
}

/// The single-primitive layers log their refusals as the policy does.
#[cfg(feature = "tower")]
#[test]
fn the_primitive_layers_log_their_refusals_at_debug() {
    use heijunka::tower::ConcurrencyLimitLayer;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt, service_fn};

    let (lines, _sub) = capture(tracing::Level::DEBUG);
    let rt = paused_runtime();
    let limit = ConcurrencyLimit::new(1).unwrap();
    let held = limit.try_acquire_owned().unwrap();
    let mut svc = ConcurrencyLimitLayer::new(limit).layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    rt.block_on(async {
        assert!(svc.ready().await.unwrap().call(()).await.is_err());
    });
    drop(held);
    let seen = lines.take();
    assert_eq!(count(&seen, "DEBUG", "request rejected"), 1, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("layer=\"concurrency_limit\"")
                && l.contains("stage=\"concurrency\"")
                && l.contains("reason=\"at_capacity\"")),
        "{seen:#?}"
    );
}
