//! `ConcurrencyLimitLayer`'s future and body without a server: the permit is taken
//! at `call`, comes back when the call is cancelled at any poll, when the inner
//! service fails, and when the body ends, fails or is dropped; a refused call holds
//! nothing. The permits are observed on the shared `ConcurrencyLimit` (what another
//! request would find), not on the layer.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use heijunka::backpressure::ConcurrencyLimit;
use heijunka::core::Rejection;
use heijunka::tower::{ConcurrencyLimitLayer, Rejected, Stage};
use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use http::Response;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{Layer, Service, service_fn};

/// A future pending `n` times (waking itself each time), then giving `output`.
struct After<T> {
    n: u32,
    output: Option<T>,
}

impl<T: Unpin> Future for After<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if self.n == 0 {
            return Poll::Ready(self.output.take().expect("polled after completion"));
        }
        self.n -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn after<T>(n: u32, output: T) -> After<T> {
    After {
        n,
        output: Some(output),
    }
}

/// Whether another request would find a permit free now (taken and given back).
fn free(limit: &ConcurrencyLimit) -> bool {
    limit.try_acquire_owned().is_ok()
}

/// A body that yields one frame, then fails.
struct FailingBody {
    sent: bool,
}

impl Body for FailingBody {
    type Data = &'static [u8];
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.sent {
            return Poll::Ready(Some(Err("connection reset")));
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(&b"part"[..]))))
    }
}

#[test]
fn a_call_cancelled_at_any_poll_gives_its_permit_back() {
    let covered = cancel_points(10, |k| {
        let limit = ConcurrencyLimit::new(1).unwrap();
        let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| {
            after(3, Ok::<_, Infallible>(Response::new(String::from("hello"))))
        }));
        let future = svc.call(());
        assert!(!free(&limit), "k={k}: the permit is taken at `call`");
        let outcome = match Polled::new(future).drop_after(k) {
            Outcome::Completed { output, polls } => {
                let response = output.expect("admitted");
                assert!(!free(&limit), "k={k}: the unread body holds the permit");
                assert!(response.body().is_holding());
                drop(response);
                Outcome::Completed { output: (), polls }
            }
            Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
        };
        assert!(free(&limit), "k={k}: the permit is back");
        outcome
    });
    assert_eq!(covered, 4, "three pending polls, then the response");
}

#[tokio::test]
async fn a_refused_call_holds_nothing_and_says_at_capacity() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| async {
        Ok::<_, Infallible>(Response::new(String::from("hello")))
    }));
    let held = svc.call(()).await.unwrap();
    let refused = svc.call(());
    drop(held);
    // The refused future is still alive and was never polled: it holds nothing.
    assert!(free(&limit));
    let mut polled = Polled::new(refused);
    assert!(polled.poll(), "a refusal is ready at the first poll");
    let err = polled.take_output().unwrap().unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.stage(), Stage::Concurrency);
    assert_eq!(rejected.reason(), Rejection::AtCapacity { limit: 1 });
    assert!(free(&limit));
}

#[test]
fn a_future_polled_after_its_output_answers_an_error_without_polling_the_call_again() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| {
        // `After` panics if polled after completion: the layer must not do that.
        after(0, Ok::<_, Infallible>(Response::new(String::from("hello"))))
    }));
    let mut future = Box::pin(svc.call(()));
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
        panic!("the response at the first poll");
    };
    let Poll::Ready(Err(e)) = future.as_mut().poll(&mut cx) else {
        panic!("an error at the second poll");
    };
    assert_eq!(e.to_string(), "polled after completion");
    assert!(!free(&limit), "the response's body still holds the permit");
    drop(response);
    assert!(free(&limit));

    // A refusal polled again: the same error, no panic.
    let held = Box::pin(svc.call(()));
    let mut refused = Box::pin(svc.call(()));
    assert!(matches!(
        refused.as_mut().poll(&mut cx),
        Poll::Ready(Err(_))
    ));
    let Poll::Ready(Err(e)) = refused.as_mut().poll(&mut cx) else {
        panic!("an error at the second poll");
    };
    assert_eq!(e.to_string(), "polled after completion");
    drop(held);
    assert!(free(&limit));
}

#[tokio::test]
async fn an_inner_error_gives_the_permit_back_with_the_error() {
    let limit = ConcurrencyLimit::new(1).unwrap();
    let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| async {
        Err::<Response<String>, _>(std::io::Error::other("backend down"))
    }));
    let err = svc.call(()).await.unwrap_err();
    assert_eq!(err.to_string(), "backend down");
    assert!(err.downcast_ref::<Rejected>().is_none());
    assert!(free(&limit));
}

#[tokio::test]
async fn the_body_holds_the_permit_until_it_ends_fails_or_is_dropped() {
    // Ends: the last frame of a body that knows its end releases it, without
    // waiting for a poll that reads `None`.
    let limit = ConcurrencyLimit::new(1).unwrap();
    let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(&b"hello"[..])))
    }));
    let mut body = svc.call(()).await.unwrap().into_body();
    assert!(!free(&limit));
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), &b"hello"[..]);
    assert!(free(&limit), "the only frame was read");
    drop(body);

    // Fails: the error releases it.
    let mut svc = ConcurrencyLimitLayer::new(limit.clone()).layer(service_fn(|()| async {
        Ok::<_, Infallible>(Response::new(FailingBody { sent: false }))
    }));
    let mut body = svc.call(()).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert!(!free(&limit), "a frame read, the body goes on");
    assert!(body.frame().await.unwrap().is_err());
    assert!(free(&limit), "the body failed");
    drop(body);

    // Dropped mid-stream (the client went away): released.
    let mut body = svc.call(()).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert!(!free(&limit));
    drop(body);
    assert!(free(&limit));
}
