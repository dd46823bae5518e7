//! Builder classifiers: they accumulate per type (exact-type match, first match
//! wins), and a per-call classifier (`call_with`, `call_async_with`) takes no
//! builder classifier and no `'static` bound, so borrowed results and errors work.
#![cfg(not(loom))]

use std::io::{Error as IoError, ErrorKind};

use heijunka_breaker::{CallError, CircuitBreaker, SlidingWindowType, Verdict};
use heijunka_core::ManualClock;

fn builder(clock: &ManualClock) -> heijunka_breaker::BreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindowType::CountBased, 10)
        .minimum_number_of_calls(10)
        .clock(clock)
}

#[test]
fn classifiers_of_different_types_accumulate() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .classify_errors(|e: &IoError| match e.kind() {
            ErrorKind::NotFound => Verdict::Ignore,
            _ => Verdict::Failure,
        })
        .classify_errors(|_: &std::fmt::Error| Verdict::Success)
        .build()
        .unwrap();
    let _ = b.call(|| Err::<(), _>(IoError::from(ErrorKind::NotFound)));
    let _ = b.call(|| Err::<(), _>(std::fmt::Error));
    let _ = b.call(|| Err::<(), _>(IoError::from(ErrorKind::TimedOut)));
    let s = b.stats();
    // NotFound ignored (the first classifier still applies), fmt::Error a success,
    // TimedOut a failure.
    assert_eq!(
        (s.calls, s.successful_calls, s.failed_calls),
        (2, 1, 1),
        "{s:?}"
    );
}

#[test]
fn a_classifier_for_the_same_type_again_replaces_the_first() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .classify_results(|_: &u16| Verdict::Failure)
        .classify_results(|_: &&str| Verdict::Ignore)
        .classify_results(|code: &u16| {
            if *code >= 500 {
                Verdict::Failure
            } else {
                Verdict::Success
            }
        })
        .build()
        .unwrap();
    let _ = b.call(|| Ok::<u16, ()>(200));
    let _ = b.call(|| Ok::<u16, ()>(503));
    let _ = b.call(|| Ok::<&str, ()>("skip"));
    let s = b.stats();
    assert_eq!(
        (s.calls, s.successful_calls, s.failed_calls),
        (2, 1, 1),
        "{s:?}"
    );
}

#[test]
// The classifier's parameter must be exactly `&E`, and here `E` is the box.
#[allow(clippy::borrowed_box)]
fn the_match_is_on_the_exact_type_not_a_boxed_one() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .classify_errors(|_: &IoError| Verdict::Ignore)
        .build()
        .unwrap();
    // A boxed io::Error is a `Box<dyn Error + Send + Sync>`, not an `io::Error`:
    // the io::Error classifier does not see it (documented), so it is a failure.
    let _ = b.call(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(Box::new(IoError::from(ErrorKind::NotFound)))
    });
    // A classifier registered for the boxed type itself does.
    let b2 = builder(&clock)
        .classify_errors(|e: &Box<dyn std::error::Error + Send + Sync>| {
            match e.downcast_ref::<IoError>().map(IoError::kind) {
                Some(ErrorKind::NotFound) => Verdict::Ignore,
                _ => Verdict::Failure,
            }
        })
        .build()
        .unwrap();
    let _ = b2.call(|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(Box::new(IoError::from(ErrorKind::NotFound)))
    });
    assert_eq!(b.stats().failed_calls, 1);
    assert_eq!(b2.stats().calls, 0);
}

#[test]
fn call_with_ignores_the_builder_classifiers() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .classify_results(|_: &u32| Verdict::Failure)
        .classify_errors(|_: &u16| Verdict::Ignore)
        .build()
        .unwrap();
    let _ = b.call_with(|_: &u16| Verdict::Failure, || Ok::<u32, u16>(7));
    let _ = b.call_with(|_: &u16| Verdict::Failure, || Err::<u32, u16>(500));
    let s = b.stats();
    // The Ok is a success and the Err what the per-call classifier said.
    assert_eq!(
        (s.calls, s.successful_calls, s.failed_calls),
        (2, 1, 1),
        "{s:?}"
    );
}

#[test]
fn call_with_takes_borrowed_results_and_errors() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    let body = String::from("borrowed body");
    let reason = String::from("borrowed reason");
    let ok: Result<&str, CallError<&str>> =
        b.call_with(|_: &&str| Verdict::Failure, || Ok(body.as_str()));
    assert_eq!(ok.unwrap(), "borrowed body");
    let err: Result<&str, CallError<&str>> =
        b.call_with(|_: &&str| Verdict::Ignore, || Err(reason.as_str()));
    assert_eq!(err.unwrap_err().into_inner(), Some("borrowed reason"));
    let s = b.stats();
    assert_eq!((s.calls, s.failed_calls), (1, 0));
}

#[test]
fn call_async_with_takes_borrowed_results_and_errors() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .classify_results(|_: &u32| Verdict::Failure)
        .build()
        .unwrap();
    let body = String::from("borrowed body");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r: Result<&str, CallError<&str>> =
        rt.block_on(b.call_async_with(|_: &&str| Verdict::Failure, async { Ok(body.as_str()) }));
    assert_eq!(r.unwrap(), "borrowed body");
    let r: Result<u32, CallError<&str>> =
        rt.block_on(b.call_async_with(|_: &&str| Verdict::Failure, async { Ok(1) }));
    assert_eq!(r.unwrap(), 1);
    let s = b.stats();
    // The builder's u32 result classifier does not apply to call_async_with.
    assert_eq!((s.calls, s.successful_calls), (2, 2), "{s:?}");
}
