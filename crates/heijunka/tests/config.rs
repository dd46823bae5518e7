#![cfg(feature = "config")]
//! The configuration tree: the example files build a full stack, bad values name
//! the path of their field, unknown fields are refused.

use std::path::PathBuf;
use std::time::Duration;

use heijunka::config::{BuildOptions, Config};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../config")
        .join(name)
}

#[tokio::test]
async fn the_example_files_build_a_full_stack() {
    let toml = Config::from_file(example("heijunka.example.toml")).unwrap();
    let yaml = Config::from_file(example("heijunka.example.yaml")).unwrap();
    let c = &toml.concurrency;
    assert_eq!(c.worker_pool.as_ref().unwrap().max_workers, 8);
    assert_eq!(
        c.breaker.as_ref().unwrap().reset_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(
        c.bus.as_ref().unwrap().publish_timeout,
        Duration::from_secs(5)
    );
    // The YAML file says the same (with defaults filling what it leaves out).
    assert_eq!(toml, yaml);

    let stack = toml.build().unwrap();
    assert_eq!(stack.request_timeout, Duration::from_secs(30));
    assert_eq!(stack.body_idle_timeout, Some(Duration::from_secs(120)));
    assert_eq!(stack.policy.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(stack.policy.concurrency_limit().unwrap().limit(), 512);
    // The breaker guards calls out, not incoming requests.
    assert!(stack.policy.breaker().is_none());
    let client = stack.client_policy.as_ref().unwrap();
    assert_eq!(client.breaker().unwrap().name(), "downstream");
    assert_eq!(client.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(stack.limit.as_ref().unwrap().limit(), 512);
    assert_eq!(stack.worker_pool.as_ref().unwrap().stats().workers, 8);
    assert_eq!(stack.task_pool.as_ref().unwrap().stats().workers, 256);
    assert!(stack.memory.is_some());
    // A pool's shutdown with a grace period blocks: off the runtime thread.
    let pool = stack.worker_pool.unwrap();
    let report = tokio::task::spawn_blocking(move || pool.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(report.clean);

    // The policy built from the file admits a request.
    let ctx = heijunka::context::RequestContext::new();
    let v = stack
        .policy
        .call(&ctx, |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(v, 1);
}

#[test]
fn an_empty_file_is_the_defaults() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.concurrency.timeouts.request, Duration::from_secs(30));
    let stack = c.build().unwrap();
    assert!(stack.worker_pool.is_none() && stack.breaker.is_none());
}

#[test]
fn an_adaptive_limit_from_the_file() {
    for (name, algorithm) in [
        ("aimd", "aimd"),
        ("vegas", "vegas"),
        ("gradient2", "gradient2"),
    ] {
        let text = format!(
            "[concurrency.limit]\nmax_concurrent = 200\nmin_concurrent = 5\nalgorithm = \"{algorithm}\""
        );
        let stack = Config::from_toml_str(&text).unwrap().build().unwrap();
        let limit = stack.adaptive_limit.expect(name);
        assert_eq!(
            limit.limit(),
            20,
            "{name} starts at Netflix's initial limit"
        );
        assert!(stack.limit.is_none());
        assert!(stack.policy.adaptive_limit().is_some());
    }
    let err = Config::from_toml_str("[concurrency.limit]\nmax_concurrent = 5\nalgorithm = \"bbr\"")
        .unwrap_err();
    assert!(err.to_string().contains("bbr"), "{err}");
}

#[test]
fn bad_values_name_their_path() {
    let cases: &[(&str, &str)] = &[
        (
            "[concurrency.breaker]\nfailure_threshold = 1.5",
            "concurrency.breaker.failure_threshold",
        ),
        (
            "[concurrency.breaker]\nfailure_threshold = 0.0",
            "concurrency.breaker.failure_threshold",
        ),
        (
            "[concurrency.breaker]\nhalf_open_max = 0",
            "concurrency.breaker.half_open_max",
        ),
        (
            "[concurrency.breaker]\nreset_timeout = \"0s\"",
            "concurrency.breaker.reset_timeout",
        ),
        (
            "[concurrency.breaker]\nname = \"\"",
            "concurrency.breaker.name",
        ),
        (
            "[concurrency.worker_pool]\nmax_workers = 0",
            "concurrency.worker_pool.max_workers",
        ),
        (
            "[concurrency.worker_pool]\nmax_workers = 4\nqueue_size = 0",
            "concurrency.worker_pool.queue_size",
        ),
        (
            "[concurrency.task_pool]\nmax_running = 0",
            "concurrency.task_pool.max_running",
        ),
        (
            "[concurrency.rate_limit]\nper_second = -1.0",
            "concurrency.rate_limit.per_second",
        ),
        (
            "[concurrency.rate_limit]\nper_second = 10.0\nburst = 0",
            "concurrency.rate_limit.burst",
        ),
        (
            "[concurrency.limit]\nmax_concurrent = 0",
            "concurrency.limit.max_concurrent",
        ),
        (
            "[concurrency.memory]\nelevated = 1.5",
            "concurrency.memory.elevated",
        ),
        (
            "[concurrency.memory]\nelevated = 0.9\ncritical = 0.8",
            "concurrency.memory.critical",
        ),
        (
            "[concurrency.memory]\ncheck_interval = \"0s\"",
            "concurrency.memory.check_interval",
        ),
        (
            "[concurrency.timeouts]\nrequest = \"0s\"",
            "concurrency.timeouts.request",
        ),
        (
            "[concurrency.bus]\nbuffer_size = 0",
            "concurrency.bus.buffer_size",
        ),
        (
            "[concurrency.bus]\npublish_timeout = \"0ms\"",
            "concurrency.bus.publish_timeout",
        ),
    ];
    for (text, path) in cases {
        let err = Config::from_toml_str(text)
            .and_then(|c| c.build().map(drop))
            .unwrap_err();
        assert_eq!(err.first().field(), *path, "{text:?} gave {err}");
        assert!(err.to_string().starts_with(path), "{err}");
    }
}

#[test]
fn unknown_fields_and_malformed_values_are_refused() {
    let err = Config::from_toml_str("[concurrency.breaker]\nfailure_treshold = 0.5").unwrap_err();
    assert!(err.to_string().contains("failure_treshold"), "{err}");
    let err = Config::from_toml_str("[concurency]").unwrap_err();
    assert!(err.to_string().contains("concurency"), "{err}");
    let err = Config::from_toml_str("[concurrency.timeouts]\nrequest = \"soon\"").unwrap_err();
    assert!(
        err.to_string().contains("soon") && err.to_string().contains("line 2"),
        "{err}"
    );
    let err = Config::from_yaml_str("concurrency:\n  limit:\n    max_concurent: 3\n").unwrap_err();
    assert!(err.to_string().contains("max_concurent"), "{err}");
    let err = Config::from_file("/nonexistent/heijunka.toml").unwrap_err();
    assert_eq!(err.first().field(), "path");
    let err = Config::from_file(example("../README.md")).unwrap_err();
    assert_eq!(err.first().field(), "path");
}

/// Configs `build()` refuses must be refused by `validate()` too, under the
/// config's own path.
#[test]
fn validate_refuses_what_build_would_refuse() {
    let cases: &[(&str, &str)] = &[
        (
            "[concurrency.timeouts]\nshutdown = \"0s\"",
            "concurrency.timeouts.shutdown",
        ),
        (
            "[concurrency.memory]\nelevated = 0.05\ncritical = 0.9",
            "concurrency.memory.elevated",
        ),
        (
            "[concurrency.memory]\ncheck_interval = \"500us\"",
            "concurrency.memory.check_interval",
        ),
        (
            "[concurrency.memory]\nreject_at = \"normal\"",
            "concurrency.memory.reject_at",
        ),
        (
            "[concurrency.limit]\nmax_concurrent = 4000000000",
            "concurrency.limit.max_concurrent",
        ),
        (
            "[concurrency.rate_limit]\nper_second = 1e12",
            "concurrency.rate_limit.per_second",
        ),
        (
            "[concurrency.breaker]\nwindow = 2000000",
            "concurrency.breaker.window",
        ),
        (
            "[concurrency.breaker]\nhalf_open_max = 2000000",
            "concurrency.breaker.half_open_max",
        ),
        (
            "[concurrency.worker_pool]\nmax_workers = 2\nqueue_size = 9999999999",
            "concurrency.worker_pool.queue_size",
        ),
        (
            "[concurrency.task_pool]\nmax_running = 1\nmax_waiting = 9999999999",
            "concurrency.task_pool.max_waiting",
        ),
        (
            "[concurrency.bus]\nbuffer_size = 999999999999",
            "concurrency.bus.buffer_size",
        ),
    ];
    for (text, path) in cases {
        let config = Config::from_toml_str(text).unwrap();
        let err = config.clone().validate().map(drop).unwrap_err();
        assert!(
            err.to_string().starts_with(path),
            "{text:?}: validate gave {err}"
        );
        let err = config.build().map(drop).unwrap_err();
        assert!(
            err.to_string().starts_with(path),
            "{text:?}: build gave {err}"
        );
    }
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let text = "[concurrency.breaker]\nfailure_threshold = 1.5\nhalf_open_max = 0\n\
                [concurrency.timeouts]\nrequest = \"0s\"\n";
    let err = Config::from_toml_str(text)
        .unwrap()
        .validate()
        .map(drop)
        .unwrap_err()
        .to_string();
    for path in [
        "concurrency.breaker.failure_threshold",
        "concurrency.breaker.half_open_max",
        "concurrency.timeouts.request",
    ] {
        assert!(err.contains(path), "{path} missing from {err}");
    }
}

#[test]
fn unknown_fields_are_named_with_their_full_path() {
    let err = Config::from_toml_str("[concurrency.breaker]\nfailur_threshold = 0.5").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("concurrency.breaker.failur_threshold"),
        "{err}"
    );
    let err = Config::from_yaml_str("concurrency:\n  limit:\n    max_concurent: 3\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("concurrency.limit.max_concurent"),
        "{err}"
    );
    let err = Config::from_toml_str("[concurrency.limit]\nmax_concurrent = \"many\"").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("concurrency.limit.max_concurrent"),
        "{err}"
    );
    let err =
        Config::from_yaml_str("concurrency:\n  limit:\n    max_concurrent: many\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("concurrency.limit.max_concurrent"),
        "{err}"
    );
}

/// A tiny seeded generator (splitmix64) for the traffic tests.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// An exponential inter-arrival time at `rate` per second.
    fn gap(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-(1.0 - self.unit()).ln() / rate)
    }
}

/// The share of `n` Poisson arrivals at `rate` per second that `limiter` refuses.
fn refused_share(
    limiter: &heijunka::backpressure::Gcra,
    clock: &heijunka::core::ManualClock,
    rate: f64,
    n: usize,
) -> f64 {
    use heijunka::backpressure::RateLimiter;
    let mut rng = Rng(7);
    let mut refused = 0;
    for _ in 0..n {
        clock.advance(rng.gap(rate));
        if limiter.check().is_err() {
            refused += 1;
        }
    }
    refused as f64 / n as f64
}

/// The default burst admits Poisson traffic at half the configured rate (the old
/// default of 1 refused about a third of it).
#[test]
fn the_default_burst_admits_poisson_traffic_at_half_the_rate() {
    let config = Config::from_toml_str("[concurrency.rate_limit]\nper_second = 100.0").unwrap();
    let r = config.concurrency.rate_limit.as_ref().unwrap();
    let clock = heijunka::core::ManualClock::new();
    assert_eq!(r.burst(), 100, "one second's worth");
    let limiter = heijunka::backpressure::Gcra::builder(r.per_second)
        .burst(r.burst())
        .clock(clock.clock())
        .build()
        .unwrap();
    let refused = refused_share(&limiter, &clock, 50.0, 20_000);
    assert!(refused < 0.001, "the default burst refused {refused:.3}");
    // The old default, a burst of 1, refuses about a third of the same traffic.
    let clock = heijunka::core::ManualClock::new();
    let old = heijunka::backpressure::Gcra::builder(r.per_second)
        .burst(1)
        .clock(clock.clock())
        .build()
        .unwrap();
    let refused = refused_share(&old, &clock, 50.0, 20_000);
    assert!(
        (0.25..0.45).contains(&refused),
        "a burst of 1 refused {refused:.3}"
    );
    // The stack's own limiter has the same default.
    let clock = heijunka::core::ManualClock::new();
    let stack = config
        .build_with(BuildOptions::new().clock(&clock))
        .unwrap();
    let limiter = stack.rate_limiter.as_ref().unwrap();
    assert_eq!(limiter.burst(), 100);
    let refused = refused_share(limiter, &clock, 50.0, 20_000);
    assert!(refused < 0.001, "the stack's limiter refused {refused:.3}");
}

/// The gate built from the config follows the memory level by itself: `build`
/// starts the sampler; nobody calls `sample_now`.
#[test]
fn the_memory_gate_from_the_config_sees_a_level_change() {
    use heijunka::memory::ManualProbe;
    let probe = ManualProbe::new(64 << 30);
    // A manual clock that stays put: samples never go stale, so only the level
    // decides (the sampler's own waits are on the OS clock).
    let clock = heijunka::core::ManualClock::new();
    let stack =
        Config::from_toml_str("[concurrency.memory]\nthreshold_mb = 100\ncheck_interval = \"1ms\"")
            .unwrap()
            .build_with(
                BuildOptions::new()
                    .clock(&clock)
                    .memory_probe(probe.clone()),
            )
            .unwrap();
    let gate = stack.memory_gate.clone().unwrap();
    let ctx = heijunka::context::RequestContext::new();
    assert!(gate.check().is_ok());
    assert!(stack.policy.try_admit(&ctx).is_ok());

    probe.set_rss(95 << 20); // 95 of 100 MiB: critical
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gate.check().is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate never saw it"
        );
        std::thread::yield_now();
    }
    assert!(stack.policy.try_admit(&ctx).is_err());
    probe.set_rss(10 << 20);
    while gate.check().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate never saw it fall"
        );
        std::thread::yield_now();
    }
    // Dropping the stack stops (and joins) the sampler.
    drop(stack);
}

/// `validate` accepts exactly what `build` builds: edge values of every field,
/// each in a config of its own, agree.
#[test]
fn validate_agrees_with_build() {
    use heijunka::backpressure::{MAX_CAPACITY, MAX_PERMITS};
    let max_capacity = MAX_CAPACITY as u64;
    let mut cases: Vec<String> = Vec::new();
    let table =
        |cases: &mut Vec<String>, name: &str, fields: &[(&str, Vec<String>)], base: &str| {
            for (field, values) in fields {
                for v in values {
                    cases.push(format!("[concurrency.{name}]\n{base}\n{field} = {v}\n"));
                }
            }
        };
    let n = |values: &[u64]| values.iter().map(u64::to_string).collect::<Vec<_>>();
    let f = |values: &[&str]| values.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let d = |values: &[&str]| values.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>();
    table(
        &mut cases,
        "worker_pool",
        &[
            ("max_workers", n(&[0, 1, 4097])),
            ("queue_size", n(&[0, 1, max_capacity, max_capacity + 1])),
        ],
        "",
    );
    table(
        &mut cases,
        "task_pool",
        &[
            ("max_running", n(&[0, 1, u64::from(u32::MAX) + 1])),
            ("max_waiting", n(&[0, max_capacity, max_capacity + 1])),
        ],
        "max_running = 1",
    );
    table(
        &mut cases,
        "rate_limit",
        &[
            (
                "per_second",
                f(&[
                    "-1.0", "0.0", "nan", "inf", "1e-12", "1e-9", "0.5", "1.0", "1e9", "2e9",
                    "1e10",
                ]),
            ),
            ("burst", n(&[0, 1, u64::from(u32::MAX)])),
        ],
        "",
    );
    // A burst whose tolerance (burst × interval) overflows.
    cases.push("[concurrency.rate_limit]\nper_second = 0.1\nburst = 4294967295\n".into());
    for algorithm in ["static", "aimd", "vegas", "gradient2"] {
        table(
            &mut cases,
            "limit",
            &[
                (
                    "max_concurrent",
                    n(&[
                        0,
                        1,
                        20,
                        u64::from(MAX_PERMITS),
                        u64::from(MAX_PERMITS) + 1,
                        u64::from(u32::MAX),
                    ]),
                ),
                ("min_concurrent", n(&[0, 1, 20, 21])),
                ("initial", n(&[0, 1, 20, 21])),
            ],
            &format!("algorithm = {algorithm:?}"),
        );
    }
    table(
        &mut cases,
        "memory",
        &[
            ("threshold_mb", n(&[0, 1, u64::MAX >> 1])),
            (
                "elevated",
                f(&["0.0", "0.05", "0.0500001", "0.9", "1.0", "1.5", "nan"]),
            ),
            ("critical", f(&["0.0", "0.5", "0.8", "1.0", "1.01"])),
            ("check_interval", d(&["0s", "999us", "1ms", "10s"])),
            ("reject_at", d(&["normal", "elevated", "critical"])),
        ],
        "",
    );
    table(
        &mut cases,
        "breaker",
        &[
            ("name", d(&["", " ", "x"])),
            (
                "failure_threshold",
                f(&["0.0", "1e-9", "1.0", "1.0001", "nan", "-0.5"]),
            ),
            ("window", n(&[0, 1, 1_000_000, 1_000_001])),
            ("minimum_calls", n(&[0, 1, u64::from(u32::MAX)])),
            ("reset_timeout", d(&["0s", "1ns", "100years"])),
            ("half_open_max", n(&[0, 1, 1_000_000, 1_000_001])),
        ],
        "",
    );
    table(
        &mut cases,
        "timeouts",
        &[
            ("request", d(&["0s", "1ns", "1h"])),
            ("shutdown", d(&["0s", "1ns", "1h"])),
            ("idle", d(&["0s", "1ns"])),
        ],
        "",
    );
    table(
        &mut cases,
        "bus",
        &[
            ("buffer_size", n(&[0, 1, 1 << 20, (1 << 20) + 1])),
            ("publish_timeout", d(&["0s", "1ms"])),
        ],
        "",
    );
    let (mut accepted, mut refused) = (0, 0);
    for text in &cases {
        let Ok(config) = Config::from_toml_str(text) else {
            continue; // out of the field's type: not a value to validate
        };
        let validated = config.clone().validate();
        let built = config.build();
        match (&validated, &built) {
            (Ok(_), Ok(_)) => accepted += 1,
            (Err(v), Err(b)) => {
                assert_eq!(v, b, "{text}");
                let mut seen = std::collections::HashSet::new();
                for e in v {
                    assert!(seen.insert(e.clone()), "{text}: reported twice: {e}");
                }
                refused += 1;
            }
            _ => panic!(
                "{text}: validate {:?} but build {:?}",
                validated.as_ref().map(drop),
                built.as_ref().map(drop)
            ),
        }
        if let Ok(stack) = built
            && let Some(pool) = stack.worker_pool
        {
            assert!(pool.shutdown(Duration::from_secs(5)).clean);
        }
    }
    assert!(
        accepted > 40 && refused > 40,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn the_breaker_goes_inbound_only_when_asked() {
    let stack = Config::from_toml_str("[concurrency.breaker]\ninbound = true")
        .unwrap()
        .build()
        .unwrap();
    assert!(stack.policy.breaker().is_some());
    assert!(stack.client_policy.is_some());
    let stack = Config::from_toml_str("[concurrency.limit]\nmax_concurrent = 4")
        .unwrap()
        .build()
        .unwrap();
    assert!(
        stack.client_policy.is_none(),
        "no breaker, no client policy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_of_the_request_timeout_reaches_the_client_policy() {
    let stack =
        Config::from_toml_str("[concurrency.breaker]\n[concurrency.timeouts]\nrequest = \"2s\"")
            .unwrap()
            .build()
            .unwrap();
    let new =
        Config::from_toml_str("[concurrency.breaker]\n[concurrency.timeouts]\nrequest = \"500ms\"")
            .unwrap();
    stack.reload(new).unwrap();
    assert_eq!(stack.policy.timeout(), Some(Duration::from_millis(500)));
    assert_eq!(
        stack.client_policy.as_ref().unwrap().timeout(),
        Some(Duration::from_millis(500))
    );
}
