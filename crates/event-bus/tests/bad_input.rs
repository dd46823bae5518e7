//! Bad input: typed errors, events handed back.

use std::time::Duration;

use heijunka_event_bus::{BusError, Event, EventBus, Policy, PublishError, SubscribeError, Topic};

#[test]
fn zero_buffer_and_bad_settings_are_config_errors() {
    let topic = Topic::<u8>::new("t").unwrap();
    let SubscribeError::Config(e) = topic.subscriber().buffer(0).subscribe().unwrap_err() else {
        panic!("expected a config error");
    };
    assert_eq!(e.to_string(), "buffer must be at least 1, got 0");
    let SubscribeError::Config(e) = topic
        .subscriber()
        .policy(Policy::Timeout(Duration::ZERO))
        .subscribe()
        .unwrap_err()
    else {
        panic!("expected a config error");
    };
    assert_eq!(e.field(), "publish_timeout");
    let SubscribeError::Config(e) = topic.subscriber().warn_at(1.5).subscribe().unwrap_err() else {
        panic!("expected a config error");
    };
    assert_eq!(e.field(), "warn_at");
    let SubscribeError::Config(e) = topic
        .subscriber()
        .warn_at(0.9)
        .reject_at(0.5)
        .subscribe()
        .unwrap_err()
    else {
        panic!("expected a config error");
    };
    assert_eq!(e.field(), "warn_at");
    assert_eq!(topic.subscriber_count(), 0, "nothing half-subscribed");
}

#[tokio::test]
async fn zero_concurrency_and_attempts_are_config_errors() {
    let topic = Topic::<u8>::new("t").unwrap();
    let err = topic.handle(0, |_e| async {}).unwrap_err();
    assert!(matches!(err, SubscribeError::Config(e) if e.field() == "concurrency"));
    let err = topic
        .handler(1)
        .max_attempts(0)
        .spawn(|_e| async {})
        .unwrap_err();
    assert!(matches!(err, SubscribeError::Config(e) if e.field() == "max_attempts"));
    assert_eq!(topic.subscriber_count(), 0);
}

#[test]
fn empty_names_and_type_mismatches() {
    let bus = EventBus::new();
    assert_eq!(bus.topic::<u8>("").unwrap_err(), BusError::EmptyName);
    assert_eq!(Topic::<u8>::new("").unwrap_err(), BusError::EmptyName);
    let x = bus.topic::<u8>("x").unwrap();
    let err = bus.topic::<String>("x").unwrap_err();
    assert_eq!(
        err,
        BusError::TypeMismatch {
            name: "x".into(),
            existing: "u8",
            requested: "alloc::string::String",
        }
    );
    assert_eq!(
        err.to_string(),
        "topic `x` carries `u8`, not `alloc::string::String`"
    );
    assert_eq!(bus.topic_names(), ["x"]);
    drop(x);
    assert!(bus.topic_names().is_empty(), "nobody holds it: gone");
    assert!(bus.topic::<String>("x").is_ok(), "the name is free again");
}

#[tokio::test]
async fn closed_topics_hand_events_back_and_refuse_subscribers() {
    let bus = EventBus::new();
    let topic = bus.topic::<String>("t").unwrap();
    let mut sub = topic
        .subscriber()
        .policy(Policy::Block)
        .buffer(1)
        .subscribe()
        .unwrap();
    topic.publish("one".to_string()).await.unwrap();
    // A publisher waiting for room is released by the close, with its event.
    let waiting = {
        let t = topic.clone();
        tokio::spawn(async move { t.publish("two".to_string()).await })
    };
    tokio::task::yield_now().await;
    assert!(topic.close());
    assert!(!topic.close(), "closing twice is harmless");
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(*err.into_inner(), "two");

    let err = topic.publish("three".to_string()).await.unwrap_err();
    assert!(matches!(&err, PublishError::Closed(_)));
    assert_eq!(err.to_string(), "event not published: the topic is closed");
    assert_eq!(*err.into_inner(), "three");
    let err = topic
        .try_publish(Event::new("four".to_string()))
        .unwrap_err();
    assert_eq!(*err.into_inner(), "four");

    assert_eq!(
        topic.subscribe().unwrap_err(),
        SubscribeError::Closed("t".into())
    );
    assert_eq!(sub.recv().await.as_deref().map(String::as_str), Some("one"));
    assert!(sub.recv().await.is_none());
    assert!(bus.stats()[0].closed);
}

#[tokio::test]
async fn no_subscribers_hands_the_event_back() {
    let topic = Topic::<u8>::new("t").unwrap();
    let err = topic.publish(9).await.unwrap_err();
    assert!(matches!(&err, PublishError::NoSubscribers(_)));
    assert_eq!(*err.into_inner(), 9);
    assert_eq!(topic.stats().undelivered, 1);
}

#[test]
fn stats_serialize() {
    let bus = EventBus::new();
    let t = bus.topic::<u8>("t").unwrap();
    let _s = t.subscriber().name("audit").subscribe().unwrap();
    t.try_publish(1).unwrap();
    let json = serde_json::to_value(bus.stats()).unwrap();
    assert_eq!(json[0]["name"], "t");
    assert_eq!(json[0]["published"], 1);
    assert_eq!(json[0]["subscribers"][0]["name"], "audit");
    assert_eq!(json[0]["subscribers"][0]["len"], 1);
}
