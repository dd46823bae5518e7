//! [`McpHttpLayer`]: the tower layer around rmcp's streamable-HTTP service that
//! makes a client disconnect cancel the tool call, and turns new sessions away
//! before rmcp builds them when the server is full or shutting down.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use crate::McpGuard;
use crate::error::Refusal;

/// The most of a session-less `POST`'s body read, while sessions are refused, to
/// tell an `initialize` (refused) from a stateless request (passed on, read part
/// first); an `initialize` is far smaller.
const MAX_PEEK_BYTES: usize = 64 * 1024;

/// Fires when the HTTP response that carries a request's answer is dropped
/// before it ends: the client went away. [`McpHttpLayer`] puts one in each HTTP
/// request's extensions; rmcp hands the request's [`http::request::Parts`] to the
/// handler, where the guard finds it and cancels the call.
#[derive(Clone, Debug, Default)]
pub struct ClientGone(CancellationToken);

impl ClientGone {
    /// Whether the response was dropped.
    pub fn is_gone(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Waits until the response is dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only waits.
    pub async fn gone(&self) {
        self.0.cancelled().await;
    }
}

/// A tower layer for rmcp's `StreamableHttpService`, from
/// [`McpGuard::http_layer`]:
///
/// - each request carries a [`ClientGone`] that fires when its response stream is
///   dropped (the client disconnected), so the guard cancels the running tool
///   call at once instead of letting it run to the end (rmcp's stateful sessions
///   keep running a call whose client went away; rust-sdk issue 857);
/// - a `POST` that would open a new session (no `Mcp-Session-Id`) is answered
///   `503 Service Unavailable` with a JSON-RPC error (the guard's
///   [`REFUSED`](crate::codes::REFUSED), `data.reason` `sessions_full` or
///   `shutting_down`, and `Retry-After` when trying later can succeed) while the
///   server holds its maximum of sessions or is shutting down, before rmcp spends
///   a session on it.
#[derive(Clone, Debug)]
pub struct McpHttpLayer {
    guard: McpGuard,
}

impl McpHttpLayer {
    pub(crate) fn new(guard: McpGuard) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for McpHttpLayer {
    type Service = McpHttpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        McpHttpService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`McpHttpLayer`] makes.
#[derive(Clone, Debug)]
pub struct McpHttpService<S> {
    inner: S,
    guard: McpGuard,
}

/// The request body the wrapped service sees: the client's, or (when the layer
/// read some of it to tell an `initialize` from a stateless request) what it read
/// followed by the rest.
pub type LayerBody<B> = Either<B, Prefixed<Pin<Box<B>>>>;

impl<S, B, RB> Service<Request<B>> for McpHttpService<S>
where
    S: Service<Request<LayerBody<B>>, Response = Response<RB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    RB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<GuardedBody<RB>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A POST without a session may be an `initialize`; only then, and only
        // while sessions are refused, is its body read here.
        let opens_session =
            req.method() == Method::POST && !req.headers().contains_key("mcp-session-id");
        let refusal = if opens_session {
            self.guard.session_refusal()
        } else {
            None
        };
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let mut req = match refusal {
                None => req.map(Either::Left),
                // The request names another method (SEP-2243's header): no need
                // to read it.
                Some(_)
                    if req
                        .headers()
                        .get("mcp-method")
                        .is_some_and(|m| m.as_bytes() != b"initialize") =>
                {
                    req.map(Either::Left)
                }
                Some(refusal) => {
                    let (parts, body) = req.into_parts();
                    let mut body = Box::pin(body);
                    // Up to MAX_PEEK_BYTES: an `initialize` is far smaller, so a
                    // larger body is passed on, what was read followed by the rest.
                    let mut read = Vec::new();
                    let ended = loop {
                        if read.len() > MAX_PEEK_BYTES {
                            break false;
                        }
                        match body.frame().await {
                            None => break true,
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    read.extend_from_slice(&data);
                                }
                            }
                            Some(Err(_)) => {
                                // The client broke off its upload: nothing to answer.
                                guard.count_bad_request();
                                let mut response = Response::new(GuardedBody::full(String::new()));
                                *response.status_mut() = StatusCode::BAD_REQUEST;
                                return Ok(response);
                            }
                        }
                    };
                    let read = Bytes::from(read);
                    if ended {
                        let message = serde_json::from_slice::<serde_json::Value>(&read).ok();
                        let method = message.as_ref().and_then(|m| m.get("method"));
                        if method.and_then(serde_json::Value::as_str) == Some("initialize") {
                            let id = message
                                .as_ref()
                                .and_then(|m| m.get("id").cloned())
                                .unwrap_or(serde_json::Value::Null);
                            return Ok(refused(&guard, refusal, id));
                        }
                    }
                    // Not a new session (a stateless request): on to rmcp.
                    let rest = (!ended).then_some(body);
                    Request::from_parts(parts, Either::Right(Prefixed::new(read, rest)))
                }
            };
            let gone = ClientGone::default();
            req.extensions_mut().insert(gone.clone());
            // A client that goes away before the response starts (the server
            // drops this future) is gone too.
            let before_response = gone.0.clone().drop_guard();
            let response = inner.call(req).await?;
            before_response.disarm();
            if response.status().is_client_error() {
                guard.count_bad_request();
            }
            Ok(response.map(|body| GuardedBody::inner(body, gone.0)))
        })
    }
}

/// The `503` answering a refused new session: the JSON-RPC error with the
/// request's id, and `Retry-After` when waiting can help.
fn refused<RB>(
    guard: &McpGuard,
    refusal: Refusal,
    id: serde_json::Value,
) -> Response<GuardedBody<RB>> {
    let retry_after = refusal.reason.is_transient();
    let error = guard.refuse(refusal, None);
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": error });
    let mut response = Response::new(GuardedBody::full(body.to_string()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pin_project_lite::pin_project! {
    /// A request body the layer has read the start of: that start, then the rest
    /// of the client's body (if it had not ended).
    pub struct Prefixed<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: Option<B>,
    }
}

impl<B> Prefixed<B> {
    fn new(prefix: Bytes, rest: Option<B>) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }
}

impl<B> fmt::Debug for Prefixed<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix", &self.prefix.as_ref().map(Bytes::len))
            .field("rest", &self.rest.is_some())
            .finish()
    }
}

impl<B: Body<Data = Bytes>> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match this.rest.as_pin_mut() {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

pin_project_lite::pin_project! {
    /// A response body that fires its request's [`ClientGone`] when dropped before
    /// it ended (the connection closed mid-stream), or a refusal's body.
    pub struct GuardedBody<B> {
        #[pin]
        inner: Option<B>,
        full: Option<Bytes>,
        gone: Option<CancellationToken>,
    }

    impl<B> PinnedDrop for GuardedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Set while the body has not ended: taken when it ends, so a stream
            // that ended (the answer sent, or closed by the server) fires nothing.
            if let Some(gone) = this.project().gone.take() {
                gone.cancel();
            }
        }
    }
}

impl<B> fmt::Debug for GuardedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedBody")
            .field("refusal", &self.full.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> GuardedBody<B> {
    fn inner(body: B, gone: CancellationToken) -> Self {
        Self {
            inner: Some(body),
            full: None,
            gone: Some(gone),
        }
    }

    fn full(text: String) -> Self {
        Self {
            inner: None,
            full: Some(Bytes::from(text)),
            gone: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = match this.inner.as_mut().as_pin_mut() {
            Some(inner) => inner.poll_frame(cx),
            None => Poll::Ready(this.full.take().map(|b| Ok(Frame::data(b)))),
        };
        let ended = match &frame {
            Poll::Ready(None) => true,
            // hyper stops polling once the body says it has ended.
            Poll::Ready(Some(Ok(_))) => this
                .inner
                .as_ref()
                .get_ref()
                .as_ref()
                .is_none_or(Body::is_end_stream),
            _ => false,
        };
        if ended {
            // The client got all of it: dropping it now is no disconnect.
            *this.gone = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.full.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(self.full.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
