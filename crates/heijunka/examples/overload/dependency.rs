//! The simulated dependency, an HTTP server of its own (`--role dependency`).
//!
//! 10 workers taking 20 ms per call (500 calls per second); calls queue (FIFO) for
//! a worker, the service time grows up to 2x with the calls in the system beyond
//! the workers (thrashing), calls queued longer than 2 s fail with 503, and during
//! an outage every call hangs 1.5 s and fails with 500. `GET /call` is one call;
//! `GET /control?outage=1` (or `=0`) toggles the outage. Each call runs as a task
//! of its own: a caller that gives up (closes its connection) does not take the
//! call back, as with a real remote service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use tokio::sync::Semaphore;

use crate::BoxError;
use crate::scenario::{DEP_OUTAGE_HANG, DEP_QUEUE_TIMEOUT, DEP_SERVICE, DEP_WORKERS};

#[derive(Clone)]
struct Dependency {
    workers: Arc<Semaphore>,
    in_system: Arc<AtomicUsize>,
    outage: Arc<AtomicBool>,
}

impl Dependency {
    fn new() -> Self {
        Self {
            workers: Arc::new(Semaphore::new(DEP_WORKERS)),
            in_system: Arc::new(AtomicUsize::new(0)),
            outage: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn work(&self) -> StatusCode {
        // Relaxed: a flag read once per call; no other memory depends on it.
        if self.outage.load(Ordering::Relaxed) {
            tokio::time::sleep(DEP_OUTAGE_HANG).await;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        // Relaxed: a statistic (the thrashing factor), not a synchronisation point.
        let n = self.in_system.fetch_add(1, Ordering::Relaxed) + 1;
        let status = match tokio::time::timeout(DEP_QUEUE_TIMEOUT, self.workers.acquire()).await {
            Ok(Ok(_worker)) => {
                let excess = n.saturating_sub(DEP_WORKERS) as f64;
                let slowdown = (1.0 + 0.5 * excess / DEP_WORKERS as f64).min(2.0);
                tokio::time::sleep(DEP_SERVICE.mul_f64(slowdown)).await;
                StatusCode::OK
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        // Relaxed: pairs with the fetch_add above only as a counter.
        self.in_system.fetch_sub(1, Ordering::Relaxed);
        status
    }
}

async fn call(State(dep): State<Dependency>) -> StatusCode {
    // A task of its own: it runs to its end even if the caller goes away.
    tokio::spawn(async move { dep.work().await })
        .await
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn control(State(dep): State<Dependency>, uri: Uri) -> StatusCode {
    let on = match uri.query() {
        Some("outage=1") => true,
        Some("outage=0") => false,
        _ => return StatusCode::BAD_REQUEST,
    };
    // Relaxed: see `work`.
    dep.outage.store(on, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// The dependency's router.
pub(crate) fn router() -> Router {
    Router::new()
        .route("/call", get(call))
        .route("/control", get(control))
        .with_state(Dependency::new())
}

/// Serves the dependency on `listener` until the process is killed.
pub(crate) async fn serve(listener: tokio::net::TcpListener) -> Result<(), BoxError> {
    axum::serve(listener, router()).await?;
    Ok(())
}

/// `--role dependency`: prints the listening line, serves until killed.
pub(crate) fn main(port: u16) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        crate::announce(&listener)?;
        serve(listener).await
    })?;
    // Never reached in practice: the parent kills this process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
