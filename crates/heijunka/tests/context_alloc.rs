//! With `alloc-tracking` and the counting allocator installed, a request context
//! counts the bytes its futures and pool closures allocate.
#![cfg(feature = "alloc-tracking")]

use heijunka::context::RequestContext;
use heijunka::memory::CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::system();

#[tokio::test]
async fn a_request_counts_what_it_allocates() {
    let ctx = RequestContext::new();
    let before = ctx.allocated_bytes();
    assert_eq!(before, 0);
    let len = ctx
        .scope(async {
            tokio::task::yield_now().await;
            let v = vec![1_u8; 100_000];
            tokio::task::yield_now().await;
            v.len()
        })
        .await;
    assert_eq!(len, 100_000);
    let after_scope = ctx.allocated_bytes();
    assert!(after_scope >= 100_000, "counted {after_scope}");

    // A closure wrapped for a pool thread counts too.
    let job = ctx.wrap(|| vec![0_u64; 10_000].len());
    assert_eq!(std::thread::spawn(job).join().unwrap(), 10_000);
    assert!(ctx.allocated_bytes() >= after_scope + 80_000);

    // Another request's allocations are not counted here.
    let other = RequestContext::new();
    other.scope(async { drop(vec![0_u8; 50_000]) }).await;
    assert!(other.allocated_bytes() >= 50_000);
    assert!(ctx.allocated_bytes() < after_scope + 80_000 + 50_000);
}

#[cfg(feature = "tower")]
#[tokio::test]
async fn a_handler_behind_the_policy_layer_is_counted() {
    use heijunka::policy::Policy;
    use heijunka::tower::PolicyLayer;
    use tower::{Layer, Service, ServiceExt, service_fn};

    let (tx, rx) = std::sync::mpsc::channel();
    let mut svc = PolicyLayer::new(Policy::builder().build().unwrap()).layer(service_fn(
        move |req: http::Request<()>| {
            let tx = tx.clone();
            async move {
                tokio::task::yield_now().await;
                let ctx = req.extensions().get::<RequestContext>().cloned().unwrap();
                let v = vec![7_u8; 200_000];
                tokio::task::yield_now().await;
                tx.send(ctx).unwrap();
                Ok::<_, std::convert::Infallible>(http::Response::new(format!("{}", v.len())))
            }
        },
    ));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    drop(response);
    let ctx = rx.recv().unwrap();
    assert!(
        ctx.allocated_bytes() >= 200_000,
        "the handler's allocations were not counted: {}",
        ctx.allocated_bytes()
    );
}
