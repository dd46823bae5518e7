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

/// A TCP proxy in front of a server that can stall the connections it has
/// (keep them open, forward nothing: a half-open connection after a failover,
/// as a client sees it) while forwarding new ones.
pub struct Proxy {
    pub port: u16,
    stall_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stall_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (stall, counter) = (Arc::clone(&stall_below), Arc::clone(&next));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let generation = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let stall = Arc::clone(&stall);
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0_u8; 16 * 1024];
                        loop {
                            let Ok(n) = from.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            // Stalled: read and drop, never answer, never close.
                            if generation < stall.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            stall_below,
            next,
            task,
        }
    }

    /// Stalls every connection made so far; later ones are forwarded.
    pub fn stall_existing(&self) {
        use std::sync::atomic::Ordering;
        self.stall_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
