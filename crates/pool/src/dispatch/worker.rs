//! One dispatcher worker: takes messages from its queue and runs them one at a
//! time, catching panics, until the queue closes or the dispatcher stops it.

use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use heijunka_core::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::reply::ReplySender;
use super::stats::Outcome;
use super::{Entry, HandlerError, Shared};
use crate::error::panic_message;

/// An accepted message: its handler (cloned out of the map at dispatch), the
/// request and where the reply goes.
pub(super) struct Job<Req, Resp, Err> {
    pub(super) entry: Arc<Entry<Req, Resp, Err>>,
    pub(super) request: Req,
    pub(super) reply: ReplySender<Resp, Err>,
}

/// What a worker's queue carries: a message, or a wake-up at shutdown.
pub(super) enum Msg<Req, Resp, Err> {
    Job(Job<Req, Resp, Err>),
    Wake,
}

impl<Req, Resp, Err> Msg<Req, Resp, Err> {
    /// The request of a message handed back by the queue; dispatches only
    /// send jobs.
    pub(super) fn into_request(self) -> Req {
        match self {
            Self::Job(job) => job.request,
            Self::Wake => unreachable!("dispatch sends only jobs; wake-ups are sent by shutdown"),
        }
    }
}

/// A worker's queue, and whether a message is running: if the worker's task is
/// dropped (its runtime going away), what was queued or running leaves the
/// metrics' gauges as cancelled.
struct Queue<Req, Resp, Err> {
    rx: mpsc::Receiver<Msg<Req, Resp, Err>>,
    shared: Arc<Shared>,
    running: bool,
}

impl<Req, Resp, Err> Drop for Queue<Req, Resp, Err> {
    fn drop(&mut self) {
        let m = &self.shared.metrics;
        if self.running {
            m.running.decrement(1.0);
            m.cancelled.increment(1);
        }
        // Empty after a normal end: a stopped worker drains its queue first.
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Job(_) = msg {
                m.queued.decrement(1.0);
                m.cancelled.increment(1);
            }
        }
    }
}

pub(super) async fn run<Req, Resp, Err>(
    index: usize,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg<Req, Resp, Err>>,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    Err: Send + 'static,
{
    let m = &shared.metrics;
    let mut queue = Queue {
        rx,
        shared: Arc::clone(&shared),
        running: false,
    };
    let rx = &mut queue.rx;
    loop {
        let Some(msg) = rx.recv().await else {
            // Every dispatcher handle is gone and the queue is empty.
            return;
        };
        // SeqCst: pairs with the store in `run_shutdown`, made before the wake-up
        // is sent.
        if shared.stopping.load(Ordering::SeqCst) {
            if let Msg::Job(job) = msg {
                m.queued.decrement(1.0);
                abandon(index, &shared, job.reply);
            }
            break;
        }
        let Msg::Job(Job {
            entry,
            request,
            reply,
        }) = msg
        else {
            continue;
        };
        m.queued.decrement(1.0);
        m.running.increment(1.0);
        queue.running = true;
        let start = Instant::now();
        let caught = async {
            let mut future = match catch_unwind(AssertUnwindSafe(|| (entry.call)(request))) {
                Ok(f) => f,
                Err(payload) => return Err(panic_message(&*payload)),
            };
            poll_fn(
                |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                    Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
                },
            )
            .await
        };
        let mut caught = pin!(caught);
        // Most handlers finish in their first poll; only a pending one races the
        // stop signal (registering with it costs a lock).
        let first = poll_fn(|cx| Poll::Ready(caught.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => tokio::select! {
                biased;
                r = &mut caught => r,
                () = shared.stop.cancelled() => {
                    m.running.decrement(1.0);
                    queue.running = false;
                    abandon(index, &shared, reply);
                    break;
                }
            },
        };
        let took = start.elapsed();
        m.running.decrement(1.0);
        queue.running = false;
        m.task_seconds.record_duration(took);
        let (outcome, result) = match result {
            Ok(Ok(v)) => {
                m.completed.increment(1);
                (Outcome::Ok, Ok(v))
            }
            Ok(Err(e)) => {
                // The handler ran to its end: its error is its value.
                m.completed.increment(1);
                (Outcome::Error, Err(HandlerError::Failed(e)))
            }
            Err(message) => {
                tracing::warn!(handler.panic = %message, "dispatcher handler panicked");
                m.panicked.increment(1);
                (Outcome::Panic, Err(HandlerError::Panicked { message }))
            }
        };
        entry.counters.record(index, outcome, took);
        // Counted and finished before the reply goes out, so a caller that has
        // its reply sees the message done in `stats()` (as a `WorkerPool` task
        // counts its outcome before publishing its result).
        // Relaxed: statistics.
        shared.processed[index].fetch_add(1, Ordering::Relaxed);
        shared.finish(index);
        // The caller may have dropped its reply; the message still counts.
        let _ = reply.send(result);
    }
    // Stopped: what is left in the queue is abandoned.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Job(job) = msg {
            m.queued.decrement(1.0);
            abandon(index, &shared, job.reply);
        }
    }
}

fn abandon<Resp, Err>(index: usize, shared: &Shared, reply: ReplySender<Resp, Err>) {
    let _ = reply.send(Err(HandlerError::Abandoned));
    // Relaxed: a statistic.
    shared.abandoned.fetch_add(1, Ordering::Relaxed);
    shared.metrics.cancelled.increment(1);
    shared.finish(index);
}
