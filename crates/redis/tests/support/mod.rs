//! Shared by the Redis tests: a private server, backends on it, and Redis's own
//! figures (an observer independent of the code under test).

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use heijunka_redis::RedisBackend;
use heijunka_redis::testing::RedisServer;

/// A private `redis-server`, or a clear failure: these tests never skip.
pub fn server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("the Redis tests need redis-server: {e}"))
}

/// A backend on `server` with a 100 ms call time-out (loopback under a loaded
/// 2-core CI machine) and its own replica id.
pub fn backend(server: &RedisServer, replica: &str) -> RedisBackend {
    RedisBackend::builder(server.url())
        .call_timeout(Duration::from_millis(100))
        .replica_id(replica)
        .build()
        .expect("backend")
}

/// A backend with its own call time-out (tests that count admissions over a
/// span give Redis a generous one, so a slow answer on a loaded machine is not
/// taken for an outage).
pub fn backend_with(server: &RedisServer, replica: &str, timeout: Duration) -> RedisBackend {
    RedisBackend::builder(server.url())
        .call_timeout(timeout)
        .replica_id(replica)
        .build()
        .expect("backend")
}

/// A plain connection for looking at Redis directly.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// How many times Redis ran `command` (from `INFO commandstats`), counted by
/// the server.
pub async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Polls `f` once: `Some` with its output if it finished, `None` if pending.
pub async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
