//! `RecyclerRegistry`: one recycler per type, looked up by type.
#![cfg(not(loom))]

use heijunka_recycler::{Recycler, RecyclerRegistry};

#[derive(Debug, Default)]
struct Order {
    id: u64,
}

impl heijunka_recycler::Recycle for Order {
    fn reset(&mut self) {
        self.id = 0;
    }
}

#[test]
fn one_recycler_per_type_found_by_type() {
    let registry = RecyclerRegistry::new();
    assert!(registry.is_empty());
    let orders = Recycler::new(8, Order::default).unwrap();
    let orders_id = orders.id();
    registry.insert(orders).unwrap();
    registry
        .insert(Recycler::new(8, || Vec::<u8>::with_capacity(64)).unwrap())
        .unwrap();
    assert_eq!(registry.len(), 2);

    let found = registry.get::<Order>().expect("registered");
    assert_eq!(found.id(), orders_id, "the same pool, not a copy");
    {
        let mut o = found.get();
        o.id = 42;
    }
    // Another lookup sees the returned value.
    assert_eq!(registry.get::<Order>().unwrap().stats().idle, 1);
    assert!(registry.get::<String>().is_none());

    // A second recycler for a type is refused and handed back.
    let err = registry
        .insert(Recycler::new(2, Order::default).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    assert!(err.type_name().ends_with("Order"));
    let refused = err.into_inner();
    assert_ne!(refused.id(), orders_id);

    let stats = registry.stats();
    let names: Vec<_> = stats.recyclers.iter().map(|t| t.type_name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted: {names:?}");
    let order_stats = stats
        .recyclers
        .iter()
        .find(|t| t.type_name.ends_with("Order"))
        .unwrap();
    assert_eq!(order_stats.stats.returns, 1);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["recyclers"].as_array().unwrap().len(), 2);

    let removed = registry.remove::<Order>().unwrap();
    assert_eq!(removed.id(), orders_id);
    assert!(registry.get::<Order>().is_none());
    assert!(registry.remove::<Order>().is_none());
    drop(found.get()); // handles looked up before keep working
    assert!(format!("{registry:?}").contains("Vec<u8>"));
}

#[test]
fn get_or_insert_with_builds_once() {
    let registry = RecyclerRegistry::new();
    let mut built = 0;
    let a = registry.get_or_insert_with(|| {
        built += 1;
        Recycler::new(4, String::new).unwrap()
    });
    let b = registry.get_or_insert_with(|| {
        built += 1;
        Recycler::new(4, String::new).unwrap()
    });
    assert_eq!(built, 1);
    assert_eq!(a.id(), b.id());
}

#[test]
fn racing_registrations_agree_on_one_recycler() {
    let registry = RecyclerRegistry::new();
    let ids: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    registry
                        .get_or_insert_with(|| Recycler::new(4, Vec::<u32>::new).unwrap())
                        .id()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(registry.get::<Vec<u32>>().unwrap().id(), ids[0]);
}

#[test]
fn the_global_registry_is_one_instance() {
    struct OnlyHere;
    let g = RecyclerRegistry::global();
    let r = g.get_or_insert_with(|| Recycler::with_reset(|| OnlyHere, |_| {}).build().unwrap());
    assert_eq!(
        RecyclerRegistry::global().get::<OnlyHere>().unwrap().id(),
        r.id()
    );
}
