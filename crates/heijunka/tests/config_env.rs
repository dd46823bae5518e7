#![cfg(feature = "config")]
//! Environment overrides: `HEIJUNKA__CONCURRENCY__...` variables on top of the
//! file, read from a list (the process environment is never touched).

use std::time::Duration;

use heijunka::config::{Config, ConfigErrors, LimitKind};
use heijunka::core::PressureLevel;

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn apply(file: &str, list: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(file)
        .unwrap()
        .with_env_overrides(vars(list))
}

#[test]
fn overrides_take_the_field_type_and_beat_the_file() {
    let file = "[concurrency.rate_limit]\nper_second = 10.0\n[concurrency.breaker]\nname = \"db\"";
    let c = apply(
        file,
        &[
            ("HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND", "200"),
            ("HEIJUNKA__CONCURRENCY__RATE_LIMIT__BURST", "50"),
            ("HEIJUNKA__CONCURRENCY__TIMEOUTS__REQUEST", "250ms"),
            ("HEIJUNKA__CONCURRENCY__BREAKER__NAME", "payments"),
            ("HEIJUNKA__CONCURRENCY__BREAKER__FAILURE_THRESHOLD", "0.25"),
            ("HEIJUNKA__CONCURRENCY__MEMORY__REJECT_AT", "elevated"),
            ("HEIJUNKA__CONCURRENCY__LIMIT__ALGORITHM", "aimd"),
            ("HEIJUNKA__CONCURRENCY__LIMIT__MAX_CONCURRENT", "64"),
            ("PATH", "/usr/bin"),
            ("HEIJUNKA_NOT_OURS", "x"),
        ],
    )
    .unwrap();
    let k = &c.concurrency;
    let rate = k.rate_limit.as_ref().unwrap();
    assert_eq!((rate.per_second, rate.burst()), (200.0, 50));
    assert_eq!(k.timeouts.request, Duration::from_millis(250));
    let breaker = k.breaker.as_ref().unwrap();
    assert_eq!(
        (breaker.name.as_str(), breaker.failure_threshold),
        ("payments", 0.25)
    );
    assert_eq!(
        breaker.window, 100,
        "the file's other fields and defaults stay"
    );
    // Tables the file left out are created with their defaults, whatever the
    // order the variables come in (ALGORITHM sorts before MAX_CONCURRENT).
    let memory = k.memory.as_ref().unwrap();
    assert_eq!(memory.reject_at, PressureLevel::Elevated);
    assert_eq!(memory.check_interval, Duration::from_secs(10));
    let limit = k.limit.as_ref().unwrap();
    assert_eq!(
        (limit.algorithm, limit.max_concurrent),
        (LimitKind::Aimd, 64)
    );
    assert!(c.build().is_ok());
}

#[test]
fn no_overrides_is_the_file() {
    let file = "[concurrency.limit]\nmax_concurrent = 5";
    let c = apply(file, &[("HOME", "/root")]).unwrap();
    assert_eq!(c, Config::from_toml_str(file).unwrap());
}

#[test]
fn an_unknown_path_names_the_variable() {
    let err = apply(
        "",
        &[
            ("HEIJUNKA__CONCURRENCY__RATE_LIMIT__RATE", "200"),
            ("HEIJUNKA__CONCURENCY__LIMIT__MAX_CONCURRENT", "5"),
            ("HEIJUNKA__CONCURRENCY__BREAKER", "x"),
        ],
    )
    .unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [
            "HEIJUNKA__CONCURENCY__LIMIT__MAX_CONCURRENT",
            "HEIJUNKA__CONCURRENCY__BREAKER",
            "HEIJUNKA__CONCURRENCY__RATE_LIMIT__RATE",
        ],
        "{err}"
    );
    let rate = err.get("HEIJUNKA__CONCURRENCY__RATE_LIMIT__RATE").unwrap();
    assert!(
        rate.to_string()
            .contains("names no setting (`concurrency.rate_limit.rate`)"),
        "{rate}"
    );
}

#[test]
fn a_bad_value_names_the_variable_and_the_value() {
    let err = apply(
        "",
        &[
            ("HEIJUNKA__CONCURRENCY__LIMIT__MAX_CONCURRENT", "many"),
            ("HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND", "fast"),
        ],
    )
    .unwrap_err();
    assert_eq!(err.as_slice().len(), 2, "both at once: {err}");
    let e = err
        .get("HEIJUNKA__CONCURRENCY__LIMIT__MAX_CONCURRENT")
        .unwrap();
    assert_eq!(e.value(), "\"many\"");
    assert!(e.to_string().contains("whole number"), "{e}");
    let e = err
        .get("HEIJUNKA__CONCURRENCY__RATE_LIMIT__PER_SECOND")
        .unwrap();
    assert_eq!(e.value(), "\"fast\"");

    // Values checked when the tree is read: a duration, an enum.
    for (var, value) in [
        ("HEIJUNKA__CONCURRENCY__TIMEOUTS__REQUEST", "soon"),
        ("HEIJUNKA__CONCURRENCY__MEMORY__REJECT_AT", "panic"),
    ] {
        let err = apply("", &[(var, value)]).unwrap_err();
        let e = err.first();
        assert_eq!(e.field(), var, "{err}");
        assert_eq!(e.value(), format!("{value:?}"), "{err}");
    }
}

#[test]
fn an_override_that_leaves_its_table_incomplete_is_refused() {
    // A worker pool needs `max_workers`; the variable that made the table is named.
    let err = apply(
        "",
        &[("HEIJUNKA__CONCURRENCY__WORKER_POOL__QUEUE_SIZE", "10")],
    )
    .unwrap_err();
    let e = err.first();
    assert_eq!(e.field(), "HEIJUNKA__CONCURRENCY__WORKER_POOL__QUEUE_SIZE");
    assert!(e.to_string().contains("max_workers"), "{e}");
    // With it, the table is whole.
    let c = apply(
        "",
        &[
            ("HEIJUNKA__CONCURRENCY__WORKER_POOL__QUEUE_SIZE", "10"),
            ("HEIJUNKA__CONCURRENCY__WORKER_POOL__MAX_WORKERS", "2"),
        ],
    )
    .unwrap();
    let pool = c.concurrency.worker_pool.unwrap();
    assert_eq!((pool.max_workers, pool.queue_size), (2, 10));
}

#[test]
fn overrides_are_validated_with_the_rest() {
    let c = apply(
        "",
        &[("HEIJUNKA__CONCURRENCY__BREAKER__FAILURE_THRESHOLD", "1.5")],
    )
    .unwrap();
    let err = c.validate().unwrap_err();
    assert_eq!(err.first().field(), "concurrency.breaker.failure_threshold");
}
