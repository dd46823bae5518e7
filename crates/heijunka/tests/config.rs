#![cfg(feature = "config")]
//! The configuration tree: the example files build a full stack, bad values name
//! the path of their field, unknown fields are refused.

use std::path::PathBuf;
use std::time::Duration;

use heijunka::config::Config;

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
    assert_eq!(stack.policy.timeout(), Some(Duration::from_secs(30)));
    assert_eq!(stack.policy.concurrency_limit().unwrap().limit(), 512);
    assert_eq!(stack.policy.breaker().unwrap().name(), "downstream");
    assert_eq!(stack.limit.as_ref().unwrap().limit(), 512);
    assert_eq!(stack.worker_pool.as_ref().unwrap().stats().workers, 8);
    assert_eq!(stack.task_pool.as_ref().unwrap().stats().workers, 256);
    assert!(stack.memory.is_some());
    let report = stack.worker_pool.unwrap().shutdown(Duration::from_secs(5));
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
        assert_eq!(err.field(), *path, "{text:?} gave {err}");
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
    assert_eq!(err.field(), "path");
    let err = Config::from_file(example("../README.md")).unwrap_err();
    assert_eq!(err.field(), "path");
}
