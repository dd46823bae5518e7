//! The policy pipeline in twenty lines: the README's example.
//!
//! `cargo run -p heijunka --example policy`

use std::time::Duration;

use heijunka::backpressure::{ConcurrencyLimit, Gcra};
use heijunka::breaker::CircuitBreaker;
use heijunka::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // timeout → rate limit → load shed → concurrency limit → breaker → the call
    let policy = Policy::builder()
        .timeout(Duration::from_millis(200))
        .rate_limiter(Gcra::builder(100.0).burst(10).build()?)
        .concurrency_limit(ConcurrencyLimit::new(4)?)
        .breaker(CircuitBreaker::builder().name("inventory").build()?)
        .build()?;

    let mut served = 0;
    let mut refused = Vec::new();
    for i in 0..20 {
        let ctx = RequestContext::new(); // trace id, 30 s deadline, cancellation
        match policy
            .call(&ctx, |_ctx| async move { Ok::<_, std::io::Error>(i * 2) })
            .await
        {
            Ok(_) => served += 1,
            Err(e) => refused.push((e.stage(), e.rejection())), // which stage, and why
        }
    }
    println!("served {served}, refused {}", refused.len()); // about 10 and 10: the burst
    if let Some((stage, reason)) = refused.first() {
        println!("first refusal: {stage:?} {reason:?}"); // RateLimit, retry after ~10 ms
    }
    Ok(())
}
