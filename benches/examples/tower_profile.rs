//! A fixed number of requests through one of the tower stacks of
//! `policy/tower_policy_stack` and `policy/tower_concurrency`, on a current-thread
//! runtime, for instruction counts under callgrind (stable on a noisy machine,
//! where wall times are not):
//!
//! ```text
//! cargo build --profile bench -p heijunka-benches --example tower_profile
//! valgrind --tool=callgrind target/release/examples/tower_profile heijunka-limit 100000
//! ```
//!
//! Run it with `N` and `2 N` requests: the difference of the totals divided by `N`
//! is the cost of one request, set-up excluded.
//!
//! Stacks: `bare`, `bare-empty`, `heijunka-limit`, `heijunka-limit-empty`,
//! `tower-limit`, `bulkhead`, `heijunka-policy`, `heijunka-policy-no-shutdown`,
//! `tower-resilience`.

use heijunka::shutdown::Shutdown;
use heijunka_benches::http_stacks::{
    Handler, drive, heijunka_limit, heijunka_policy, hello, hello_empty, policy,
    resilience_bulkhead, resilience_stack, tower_limit,
};
use tower::Layer;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: tower_profile STACK ITERATIONS";
    let stack = args.next().expect(usage);
    let iters: u64 = args.next().expect(usage).parse().expect(usage);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let shutdown = Shutdown::new();
    rt.block_on(async {
        match stack.as_str() {
            "bare" => drive(&mut tower::service_fn(hello as Handler), iters).await,
            "bare-empty" => drive(&mut tower::service_fn(hello_empty as Handler), iters).await,
            "heijunka-limit" => drive(&mut heijunka_limit(hello), iters).await,
            "heijunka-limit-empty" => drive(&mut heijunka_limit(hello_empty), iters).await,
            "tower-limit" => drive(&mut tower_limit(hello), iters).await,
            "bulkhead" => {
                drive(
                    &mut resilience_bulkhead().layer(tower::service_fn(hello as Handler)),
                    iters,
                )
                .await;
            }
            "heijunka-policy" => drive(&mut heijunka_policy(&shutdown, hello), iters).await,
            "heijunka-policy-no-shutdown" => {
                let layer = heijunka::tower::PolicyLayer::new(policy());
                drive(&mut layer.layer(tower::service_fn(hello as Handler)), iters).await;
            }
            "tower-resilience" => drive(&mut resilience_stack(hello), iters).await,
            other => panic!("unknown stack `{other}`; {usage}"),
        }
    });
}
