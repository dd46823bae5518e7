//! The handler runtime: bounded concurrency, panics and errors, retries, dead
//! letters, request/reply, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use heijunka_event_bus::{
    DeadLetter, Event, EventBus, Policy, ReplyError, RequestError, SubscribeError, Topic,
};
use heijunka_recycler::Recycler;
use heijunka_shutdown::{HookOutcome, Shutdown};

fn quiet_panics() {
    // The handler's panics are expected; keep the test output readable.
    std::panic::set_hook(Box::new(|_| {}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_errors_recycle_events_and_dead_letter_after_n_attempts() {
    quiet_panics();
    let pool = Recycler::with_reset(|| 0_u32, |v| *v = 0)
        .capacity(64)
        .build()
        .unwrap();
    let bus = EventBus::new();
    let jobs = bus.topic::<u32>("jobs").unwrap();
    let dead = bus.topic::<DeadLetter<u32>>("jobs.dead").unwrap();
    let mut dead_sub = dead.subscriber().buffer(1000).subscribe().unwrap();
    let handler = jobs
        .handler(4)
        .max_attempts(3)
        .dead_letter(dead.clone())
        .policy(Policy::Block)
        .spawn(|n: Event<u32>| async move {
            tokio::task::yield_now().await;
            if (*n).is_multiple_of(7) {
                panic!("boom {}", *n);
            }
            if (*n).is_multiple_of(5) {
                return Err(format!("refused {}", *n));
            }
            Ok(())
        })
        .unwrap();
    let total = 200_u32;
    for i in 1..=total {
        let mut v = pool.get();
        *v = i;
        jobs.publish(Event::pooled(v.into_shared())).await.unwrap();
    }
    jobs.close();
    let stats = handler.join().await;
    let panicking = (1..=total).filter(|n| n.is_multiple_of(7)).count() as u64;
    let failing = (1..=total)
        .filter(|n| n.is_multiple_of(5) && !n.is_multiple_of(7))
        .count() as u64;
    let ok = total as u64 - panicking - failing;
    assert_eq!(stats.received, total as u64);
    assert_eq!(stats.succeeded, ok, "other events unaffected");
    assert_eq!(stats.panics, 3 * panicking);
    assert_eq!(stats.errors, 3 * failing);
    assert_eq!(stats.retries, 2 * (panicking + failing));
    assert_eq!(stats.dead_lettered, panicking + failing);
    assert_eq!(stats.abandoned, 0);
    let mut letters = Vec::new();
    while let Some(l) = dead_sub.try_recv() {
        assert_eq!(l.attempts, 3);
        assert_eq!(l.topic, "jobs");
        if (*l.event).is_multiple_of(7) {
            assert_eq!(l.error, format!("panicked: boom {}", *l.event));
        } else {
            assert_eq!(l.error, format!("refused {}", *l.event));
        }
        letters.push(*l.event);
    }
    assert_eq!(letters.len() as u64, panicking + failing);
    drop(letters);
    let s = pool.stats();
    assert_eq!((s.gets, s.returns), (total as u64, total as u64), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_concurrency_handlers_at_once() {
    let topic = Topic::<u32>::new("bounded").unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let handler = topic
        .handler(3)
        .policy(Policy::Block)
        .spawn(move |_e| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    for i in 0..300 {
        topic.publish(i).await.unwrap();
    }
    topic.close();
    let stats = handler.join().await;
    assert_eq!(stats.succeeded, 300);
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(handler.is_finished());
}

#[tokio::test]
async fn without_a_dead_letter_topic_failures_are_abandoned_and_counted() {
    let topic = Topic::<u32>::new("t").unwrap();
    let handler = topic
        .handler(1)
        .max_attempts(2)
        .spawn(|_e| async { Err::<(), _>("nope") })
        .unwrap();
    topic.publish(1).await.unwrap();
    topic.close();
    let s = handler.join().await;
    assert_eq!((s.errors, s.retries, s.abandoned), (2, 1, 1));
    assert_eq!(topic.stats().handlers, vec![s]);
}

#[tokio::test(start_paused = true)]
async fn request_reply_and_its_errors() {
    let bus = EventBus::new();
    let echo = bus.topic::<String>("echo").unwrap();
    let _h = echo
        .handle(2, |e| async move {
            let _ = e.reply(e.to_uppercase());
        })
        .unwrap();
    let got: String = echo
        .request("hi".to_string(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got, "HI");

    // A reply of another type is refused and comes back; the requester times out.
    let wrong = bus.topic::<u8>("wrong").unwrap();
    let mut sub = wrong.subscribe().unwrap();
    let requester = {
        let wrong = wrong.clone();
        tokio::spawn(async move { wrong.request::<u64>(1, Duration::from_millis(100)).await })
    };
    let e = sub.recv().await.unwrap();
    assert!(e.wants_reply());
    let ReplyError::WrongType { value, .. } = e.reply("text").unwrap_err() else {
        panic!("expected WrongType");
    };
    assert_eq!(value, "text");
    let err = requester.await.unwrap().unwrap_err();
    assert!(matches!(err, RequestError::TimedOut { after } if after == Duration::from_millis(100)));
    assert!(matches!(e.reply(5_u64), Err(ReplyError::RequesterGone(5))));

    // Dropped unanswered: NoReply at once, not a timeout.
    let dropper = bus.topic::<u8>("dropper").unwrap();
    let _h2 = dropper.handle(1, |_e| async {}).unwrap();
    let start = tokio::time::Instant::now();
    let err = dropper
        .request::<u8>(1, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::NoReply));
    assert!(start.elapsed() < Duration::from_secs(10));

    // Nobody listening: the event comes back.
    let nobody = bus.topic::<u8>("nobody").unwrap();
    let err = nobody
        .request::<u8>(7, Duration::from_secs(1))
        .await
        .unwrap_err();
    let RequestError::NotDelivered(e) = err else {
        panic!("expected NotDelivered");
    };
    assert_eq!(*e.into_inner(), 7);

    // A plain publish is not a request.
    assert!(matches!(
        Event::new(1).reply(2),
        Err(ReplyError::NotARequest(2))
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_topics_and_lets_handlers_drain() {
    let shutdown = Shutdown::new();
    let bus = EventBus::new();
    bus.register_with(&shutdown, Duration::from_secs(30))
        .unwrap();
    let topic = bus.topic::<u32>("work").unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let handler = topic
        .handle(2, move |_e| {
            let d = d.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                d.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    for i in 0..50 {
        topic.publish(i).await.unwrap();
    }
    shutdown.trigger();
    let report = shutdown.wait().await;
    assert_eq!(report.hooks[0].name, "event bus");
    assert_eq!(report.hooks[0].outcome, HookOutcome::Ok);
    assert_eq!(
        done.load(Ordering::SeqCst),
        50,
        "buffered events were handled"
    );
    assert!(handler.is_finished());
    assert!(topic.is_closed());
    assert!(matches!(topic.subscribe(), Err(SubscribeError::Closed(_))));
}

#[tokio::test(start_paused = true)]
async fn stop_cancels_what_is_left_after_the_grace_and_recycles_it() {
    let pool = Recycler::with_reset(|| 0_u32, |v| *v = 0)
        .capacity(64)
        .build()
        .unwrap();
    let topic = Topic::<u32>::new("stuck").unwrap();
    let handler = topic
        .handle(2, |_e| async { std::future::pending::<()>().await })
        .unwrap();
    for _ in 0..10 {
        topic
            .publish(Event::pooled(pool.get().into_shared()))
            .await
            .unwrap();
    }
    tokio::task::yield_now().await;
    assert!(!handler.stop(Duration::from_secs(1)).await, "not clean");
    assert!(handler.is_finished());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let s = pool.stats();
    assert_eq!(
        s.returns, 10,
        "cancelled and buffered events went back: {s:?}"
    );
}

#[test]
fn a_handler_needs_a_runtime() {
    let topic = Topic::<u32>::new("t").unwrap();
    let err = topic.handle(1, |_e| async {}).unwrap_err();
    assert_eq!(err, SubscribeError::NoRuntime);
}

/// `EventBus::shutdown` closes a dead-letter topic only after the handlers that
/// feed it have drained: failures during the drain are still dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_the_dead_letter_topic_open_while_handlers_drain() {
    let bus = EventBus::new();
    let jobs = bus.topic::<u32>("jobs").unwrap();
    let dead = bus.topic::<DeadLetter<u32>>("jobs.dead").unwrap();
    let mut dead_sub = dead.subscriber().buffer(100).subscribe().unwrap();
    let handler = jobs
        .handler(1)
        .max_attempts(1)
        .dead_letter(dead.clone())
        .spawn(|n: Event<u32>| async move { Err::<(), _>(format!("refused {}", *n)) })
        .unwrap();
    for i in 0..5 {
        jobs.publish(i).await.unwrap();
    }
    assert!(bus.shutdown(Duration::from_secs(5)).await);
    let stats = handler.stats();
    assert_eq!((stats.dead_lettered, stats.abandoned), (5, 0), "{stats:?}");
    let mut letters = 0;
    while dead_sub.recv().await.is_some() {
        letters += 1;
    }
    assert_eq!(letters, 5);
}

/// Time-outs too long to represent wait without a deadline instead of panicking.
#[tokio::test(start_paused = true)]
async fn huge_timeouts_do_not_panic() {
    let bus = EventBus::new();
    let topic = bus.topic::<u32>("t").unwrap();
    let mut sub = topic
        .subscriber()
        .buffer(1)
        .policy(Policy::Timeout(Duration::MAX))
        .subscribe()
        .unwrap();
    topic.publish_timeout(1, Duration::MAX).await.unwrap();
    // The buffer is full: this one waits (without a deadline) until it is read.
    let (second, first) = tokio::join!(topic.publish_timeout(2, Duration::MAX), async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        sub.recv().await
    });
    assert_eq!(second.unwrap().delivered, 1);
    assert_eq!(*first.unwrap(), 1);
    assert!(bus.shutdown(Duration::MAX).await);
}
