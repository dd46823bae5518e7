//! Two replicas of one service sharing one Redis: the rate limit holds for the
//! fleet, not per process, and survives Redis going away.
//!
//! ```text
//! cargo xtask demo --redis           # or:
//! cargo run -p heijunka --features redis,tower,config --example replicas
//! ```
//!
//! The parent starts a private `redis-server` (or uses `--redis URL`), then two
//! replica processes of this binary (`--role replica`), each an axum server
//! behind a `PolicyLayer` built from the same config:
//!
//! ```toml
//! [concurrency.redis]
//! url = "redis://127.0.0.1:<port>/"
//! expected_replicas = 2          # failing open, each keeps half the rate
//! [concurrency.rate_limit]
//! per_second = 200.0
//! burst = 20
//! backend = "redis"              # one bucket for the fleet
//! ```
//!
//! It drives both replicas well above the rate in three phases (Redis up, Redis
//! killed, Redis back) and prints what each replica admitted. With in-process
//! limits two replicas would admit 400/s; sharing one Redis they admit 200/s,
//! and while Redis is down each enforces its half (the fail-open policy), so
//! the fleet still admits about 200/s. `--quick` shortens the phases and exits
//! non-zero if a phase is off the global rate by more than 10 %.
//!
//! To run the replicas yourself against your own Redis:
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! cargo run -p heijunka --features redis,tower,config --example replicas -- \
//!     --role replica --redis redis://127.0.0.1:6379/ --id a --port 3001 &
//! cargo run -p heijunka --features redis,tower,config --example replicas -- \
//!     --role replica --redis redis://127.0.0.1:6379/ --id b --port 3002 &
//! # then load both, e.g. oha -z 10s -q 300 http://127.0.0.1:3001/ (and :3002)
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use heijunka::config::Config;
use heijunka::redis::testing::RedisServer;
use heijunka::tower::{PolicyLayer, handle_error};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const RATE: f64 = 200.0;
const BURST: u64 = 20;
const USAGE: &str =
    "usage: replicas [--quick] [--redis URL] | --role replica --redis URL --id ID [--port P]";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    if value_of("--role").as_deref() == Some("replica") {
        let url = value_of("--redis").ok_or("--role replica needs --redis URL")?;
        let id = value_of("--id").ok_or("--role replica needs --id")?;
        let port = value_of("--port").map_or(Ok(0), |p| p.parse::<u16>())?;
        return rt.block_on(replica(&url, &id, port));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let ok = rt.block_on(parent(quick, value_of("--redis")))?;
    if ok {
        Ok(())
    } else {
        Err("a phase was off the global rate by more than 10 %".into())
    }
}

/// One replica: the config above, served until killed.
async fn replica(url: &str, id: &str, port: u16) -> Result<(), BoxError> {
    let config = Config::from_toml_str(&format!(
        r#"
[concurrency.redis]
url = "{url}"
replica_id = "{id}"
expected_replicas = 2
call_timeout = "50ms"
name = "demo"

[concurrency.rate_limit]
per_second = {RATE:.1}
burst = {BURST}
backend = "redis"
"#
    ))?;
    let stack = config.build()?;
    let redis = stack
        .redis
        .clone()
        .ok_or("the stack has no Redis backend")?;
    let limiter = stack
        .redis_rate_limiter
        .clone()
        .ok_or("no shared limiter")?;
    let app = Router::new()
        .route(
            "/",
            get(|| async { "ok" }).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(PolicyLayer::new(stack.policy.clone())),
            ),
        )
        .route(
            "/stats",
            get(move || {
                let (redis, limiter) = (redis.clone(), limiter.clone());
                async move {
                    let s = limiter.stats();
                    let b = redis.stats();
                    format!(
                        "{{\"admitted\":{},\"refused\":{},\"round_trips\":{},\"fallback\":{},\"degraded\":{}}}",
                        s.admitted, s.refused, s.round_trips, s.fallback_decisions, b.degraded
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // The line the parent waits for.
    println!("LISTENING {}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}

struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_replica(url: &str, id: &str) -> Result<Replica, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--role", "replica", "--redis", url, "--id", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("LISTENING ")
        .ok_or_else(|| format!("replica {id} said {line:?}"))?
        .parse()?;
    Ok(Replica { child, port })
}

type HttpClient =
    Client<hyper_util::client::legacy::connect::HttpConnector, Empty<hyper::body::Bytes>>;

/// Drives both replicas with `workers` closed-loop clients each for `span`;
/// returns the admitted count per replica.
async fn load(client: &HttpClient, ports: [u16; 2], span: Duration) -> [u64; 2] {
    let admitted = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        for _ in 0..8 {
            let (client, admitted) = (client.clone(), Arc::clone(&admitted[i]));
            let uri: http::Uri = format!("http://127.0.0.1:{port}/").parse().expect("uri");
            tasks.spawn(async move {
                while start.elapsed() < span {
                    let req = http::Request::get(uri.clone())
                        .body(Empty::new())
                        .expect("request");
                    match client.request(req).await {
                        Ok(r) => {
                            let ok = r.status().is_success();
                            let _ = r.into_body().collect().await;
                            if ok {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Refused: a short pause, as a client honouring
                                // backpressure would (the load stays far above
                                // the rate).
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    [
        admitted[0].load(Ordering::Relaxed),
        admitted[1].load(Ordering::Relaxed),
    ]
}

async fn parent(quick: bool, external: Option<String>) -> Result<bool, BoxError> {
    let span = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(6)
    };
    let mut own = match external {
        Some(_) => None,
        None => Some(RedisServer::start()?),
    };
    let url = match (&external, &own) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!(),
    };
    println!("redis at {url}; two replicas, one shared rate of {RATE}/s (burst {BURST})\n");
    let (a, b) = (spawn_replica(&url, "a")?, spawn_replica(&url, "b")?);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let ports = [a.port, b.port];
    let mut ok = true;
    println!("| phase | replica a ok/s | replica b ok/s | fleet ok/s | the global rate |");
    println!("| --- | --- | --- | --- | --- |");
    let mut phase = |name: &str, got: [u64; 2], burst: u64| {
        let secs = span.as_secs_f64();
        let fleet = (got[0] + got[1]).saturating_sub(burst) as f64 / secs;
        println!(
            "| {name} | {:.0} | {:.0} | **{fleet:.0}** | {RATE:.0} |",
            got[0] as f64 / secs,
            got[1] as f64 / secs
        );
        if (fleet - RATE).abs() / RATE > 0.10 {
            ok = false;
        }
    };
    let up = load(&client, ports, span).await;
    phase("Redis up", up, BURST);
    if let Some(server) = own.as_mut() {
        server.kill();
        // Each replica's local limiter starts full (half the burst each).
        let down = load(&client, ports, span).await;
        phase("Redis killed (fail open, half each)", down, BURST);
        server.restart()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let back = load(&client, ports, span).await;
        phase("Redis back", back, BURST);
    }
    println!(
        "\nWith in-process limits the two replicas would admit {:.0}/s together.",
        2.0 * RATE
    );
    Ok(ok)
}
