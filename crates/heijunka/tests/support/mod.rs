//! Helpers shared by the facade's integration tests (`mod support;`).
#![allow(dead_code)] // each test file uses its own share

#[cfg(feature = "tower")]
#[allow(unused_imports)]
pub(crate) use self::bodies::*;

/// A current-thread runtime with paused time.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

/// The helpers that need the `tower` feature's dependencies.
#[cfg(feature = "tower")]
mod bodies {
    use std::convert::Infallible;
    use std::fmt::Debug;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::Bytes;
    use http_body::Frame;
    use tokio::sync::mpsc;
    use tower::{Service, ServiceExt};

    /// A response body fed through a channel: a frame per message, the end when the
    /// sender is dropped, pending in between.
    pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Frame<Bytes>>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }

    /// `req` through `svc` (ready, call, await): the response's body.
    pub(crate) async fn body_of<S, R, B>(svc: &mut S, req: R) -> B
    where
        S: Service<R, Response = http::Response<B>>,
        S::Error: Debug,
    {
        svc.ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .into_body()
    }
}
