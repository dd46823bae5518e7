//! Cancellation as an input: every public `async fn` of the bus, dropped after
//! each number of polls it survives, leaves the topic consistent (nothing lost,
//! nothing half-done, counters balanced). `publish` has its own cases in
//! `v2.rs` and `metrics.rs`.

use std::time::Duration;

use heijunka_core::cancel::{Outcome, Polled, cancel_points};
use heijunka_event_bus::{EventBus, Policy, ReplyError, Topic};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A `recv` dropped before it returned took nothing: the next one gets the event.
#[test]
fn recv_cancelled_at_every_poll_loses_nothing() {
    let covered = cancel_points(6, |k| {
        let topic = Topic::<u32>::new("t").unwrap();
        let mut sub = topic.subscriber().buffer(4).subscribe().unwrap();
        let t = topic.clone();
        let outcome = Polled::new(sub.recv()).drop_after_with(k, |i| {
            if i == 2 {
                t.try_publish(7).unwrap();
            }
        });
        match &outcome {
            Outcome::Completed { output, .. } => {
                assert_eq!(output.as_deref(), Some(&7));
                assert!(sub.try_recv().is_none(), "k = {k}: received once");
            }
            Outcome::Cancelled { .. } => {
                // Dropped before the publish (made before poll 3, which then
                // completes): the event published now is there.
                topic.try_publish(7).unwrap();
                assert_eq!(sub.try_recv().map(|e| *e), Some(7), "k = {k}");
            }
        }
        assert_eq!(sub.stats().dropped.total(), 0);
        outcome.map_output()
    });
    assert!(covered >= 3, "covered {covered}");
}

/// `recv_timeout`, dropped or timed out, takes nothing either.
#[test]
fn recv_timeout_cancelled_at_every_poll_loses_nothing() {
    let rt = rt();
    let _g = rt.enter();
    // Its timer does not run between bare polls: it waits at every one.
    for k in 0..4 {
        let topic = Topic::<u32>::new("t").unwrap();
        let mut sub = topic.subscriber().buffer(4).subscribe().unwrap();
        let outcome = Polled::new(sub.recv_timeout(Duration::from_secs(1))).drop_after(k);
        assert!(!outcome.is_completed(), "k = {k}");
        topic.try_publish(9).unwrap();
        assert_eq!(sub.try_recv().map(|e| *e), Some(9), "k = {k}");
    }
}

/// `publish_timeout` dropped while waiting published nothing; finished, it
/// published once.
#[test]
fn publish_timeout_cancelled_at_every_poll_is_all_or_nothing() {
    let rt = rt();
    let _g = rt.enter();
    let covered = cancel_points(6, |k| {
        let topic = Topic::<u32>::new("t").unwrap();
        let mut sub = topic
            .subscriber()
            .buffer(1)
            .policy(Policy::Block)
            .subscribe()
            .unwrap();
        topic.try_publish(1).unwrap();
        let t = topic.clone();
        let mut freed = false;
        let outcome =
            Polled::new(t.publish_timeout(2, Duration::from_secs(60))).drop_after_with(k, |i| {
                if i == 2 {
                    freed = sub.try_recv().is_some();
                }
            });
        let published = topic.stats().published;
        let rest: Vec<u32> = std::iter::from_fn(|| sub.try_recv().map(|e| *e)).collect();
        match outcome.is_completed() {
            true => {
                assert_eq!(published, 2, "k = {k}");
                assert_eq!(rest, if freed { vec![2] } else { vec![1, 2] });
            }
            false => {
                assert_eq!(published, 1, "k = {k}: nothing published");
                assert_eq!(rest, if freed { vec![] } else { vec![1] });
            }
        }
        assert_eq!(topic.stats().dropped.total(), 0);
        outcome.map_output()
    });
    assert!(covered >= 3, "covered {covered}");
}

/// A `request` dropped before its event was published published nothing; one
/// dropped after leaves the event with its subscriber, and a reply to it finds
/// the requester gone.
#[test]
fn request_cancelled_at_every_poll() {
    let rt = rt();
    let _g = rt.enter();
    let covered = cancel_points(6, |k| {
        let topic = Topic::<u32>::new("q").unwrap();
        let mut sub = topic.subscriber().buffer(4).subscribe().unwrap();
        let t = topic.clone();
        let outcome =
            Polled::new(t.request::<u32>(5, Duration::from_secs(60))).drop_after_with(k, |i| {
                if i == 2
                    && let Some(e) = sub.try_recv()
                {
                    e.reply(50_u32).unwrap();
                }
            });
        match &outcome {
            Outcome::Completed { output, .. } => assert_eq!(*output.as_ref().unwrap(), 50),
            Outcome::Cancelled { .. } => match sub.try_recv() {
                Some(e) => assert!(matches!(e.reply(1_u32), Err(ReplyError::RequesterGone(1)))),
                None => assert!(
                    topic.stats().published == u64::from(k >= 1),
                    "k = {k}: received, or never published"
                ),
            },
        }
        outcome.map_output()
    });
    assert!(covered >= 3, "covered {covered}");
}

/// `Handler::join` and `Handler::stop` dropped part-way: the runtime goes on
/// (join) or still stops (stop), and a later join completes.
#[test]
fn handler_waits_cancelled_at_every_poll() {
    let rt = rt();
    let _g = rt.enter();
    // The handler's tasks do not run between bare polls: the waits are
    // pending at every one, and dropped.
    for stop in [false, true] {
        for k in 0..4 {
            let topic = Topic::<u32>::new("jobs").unwrap();
            let handler = topic
                .handle(2, |_| async { tokio::task::yield_now().await })
                .unwrap();
            topic.try_publish(1).unwrap();
            let outcome = if stop {
                Polled::new(handler.stop(Duration::from_secs(60)))
                    .drop_after(k)
                    .map_output()
            } else {
                Polled::new(handler.join()).drop_after(k).map_output()
            };
            // The handler ends once its topic is closed (a stop dropped
            // before its first poll stopped nothing).
            topic.close();
            assert!(!outcome.is_completed(), "stop = {stop}, k = {k}");
            let stats = rt.block_on(handler.join());
            assert_eq!(stats.received, stats.succeeded, "stop = {stop}, k = {k}");
            assert!(handler.is_finished());
        }
    }
}

/// `EventBus::shutdown` dropped part-way: every topic is closed anyway, and a
/// second shutdown finishes.
#[test]
fn bus_shutdown_cancelled_at_every_poll() {
    let rt = rt();
    let _g = rt.enter();
    for k in 0..4 {
        let bus = EventBus::new();
        let jobs = bus.topic::<u32>("jobs").unwrap();
        let handler = jobs
            .handle(1, |_| async { tokio::task::yield_now().await })
            .unwrap();
        jobs.try_publish(1).unwrap();
        let outcome = Polled::new(bus.shutdown(Duration::from_secs(60))).drop_after(k);
        assert_eq!(jobs.is_closed(), k > 0, "k = {k}: closed on the first poll");
        assert!(rt.block_on(bus.shutdown(Duration::from_secs(60))));
        assert!(handler.is_finished());
        assert!(!outcome.is_completed(), "k = {k}");
    }
}

trait MapOutput {
    fn map_output(self) -> Outcome<()>;
}

impl<T> MapOutput for Outcome<T> {
    fn map_output(self) -> Outcome<()> {
        match self {
            Outcome::Completed { polls, .. } => Outcome::Completed { output: (), polls },
            Outcome::Cancelled { polls } => Outcome::Cancelled { polls },
        }
    }
}
