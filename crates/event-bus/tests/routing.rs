//! Routing versions: stale events are filtered, critical ones always pass.

use heijunka_event_bus::{Event, SkipReason, Topic};

#[tokio::test]
async fn stale_events_are_filtered_and_critical_kinds_pass() {
    let topic = Topic::<&'static str>::new("orders").unwrap();
    let mut old = topic.subscribe().unwrap();
    let mut new = topic.subscriber().min_version(5).subscribe().unwrap();

    let r = topic
        .publish(Event::new("v4 order").with_version(4))
        .await
        .unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(r.skipped, vec![(new.id(), SkipReason::Filtered)]);

    let r = topic
        .publish(Event::new("v5 order").with_version(5))
        .await
        .unwrap();
    assert!(r.is_complete());

    let r = topic
        .publish(Event::new("topology flip").with_version(1).critical())
        .await
        .unwrap();
    assert_eq!(r.delivered, 2, "critical events pass every filter");

    topic.close();
    let mut got_new = Vec::new();
    while let Some(e) = new.recv().await {
        got_new.push(*e);
    }
    assert_eq!(got_new, ["v5 order", "topology flip"]);
    let mut got_old = Vec::new();
    while let Some(e) = old.recv().await {
        got_old.push((*e, e.version(), e.is_critical()));
    }
    assert_eq!(
        got_old,
        [
            ("v4 order", 4, false),
            ("v5 order", 5, false),
            ("topology flip", 1, true)
        ]
    );
    assert_eq!(topic.stats().dropped.filtered, 1);
}

#[tokio::test]
async fn an_event_every_subscriber_filters_comes_back() {
    let topic = Topic::<u8>::new("t").unwrap();
    let _a = topic.subscriber().min_version(2).subscribe().unwrap();
    let err = topic
        .publish(Event::new(1).with_version(1))
        .await
        .unwrap_err();
    assert_eq!(err.report().unwrap().skipped_for(SkipReason::Filtered), 1);
    let e = err.into_inner();
    assert_eq!((*e, e.version()), (1, 1));
}

#[derive(Debug, PartialEq)]
enum Routing {
    Order(u32),
    TopologyFlip { to: u64 },
}

#[tokio::test]
async fn kinds_marked_critical_pass_without_the_flag() {
    let topic = Topic::<Routing>::new("routing").unwrap();
    let mut sub = topic.subscriber().min_version(3).subscribe().unwrap();
    // Before marking: a stale flip is filtered like any stale event.
    let err = topic
        .publish(Event::new(Routing::TopologyFlip { to: 3 }).with_version(2))
        .await
        .unwrap_err();
    assert_eq!(err.report().unwrap().skipped_for(SkipReason::Filtered), 1);

    topic.critical_kinds(|e| matches!(e, Routing::TopologyFlip { .. }));
    let stale_order = topic
        .publish(Event::new(Routing::Order(1)).with_version(2))
        .await;
    assert!(stale_order.is_err(), "other kinds are still filtered");
    let r = topic
        .publish(Event::new(Routing::TopologyFlip { to: 4 }).with_version(2))
        .await
        .unwrap();
    assert_eq!(r.delivered, 1);
    topic
        .publish(Event::new(Routing::Order(2)).with_version(3))
        .await
        .unwrap();
    assert_eq!(
        sub.try_recv().as_deref(),
        Some(&Routing::TopologyFlip { to: 4 })
    );
    assert_eq!(sub.try_recv().as_deref(), Some(&Routing::Order(2)));
    assert!(sub.try_recv().is_none());
    assert_eq!(topic.stats().dropped.filtered, 2);
}
