//! Response classification: which outcomes count as failures for the breaker and
//! an adaptive limit.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

pub use crate::policy::Classification;

/// Decides how a response or an error counts, for the breaker and an adaptive
/// limit alike ([`PolicyLayer::classifier`](crate::tower::PolicyLayer::classifier),
/// [`BreakerLayer::classifier`](crate::tower::BreakerLayer::classifier)).
///
/// A response is first seen at its headers: [`classify_response`] answers there,
/// or returns `None` to wait for the end of the body, where
/// [`classify_end`] sees the trailers (gRPC puts its status there). An error of
/// the inner service, or of the body, goes to [`classify_error`]. A time-out is
/// always a failure and a body dropped before its end (the client went away) is
/// ignored unless the headers had already said failure; classifiers do not
/// decide those.
///
/// ```
/// use heijunka::tower::{Classification, Classify};
/// use http::{HeaderMap, StatusCode};
///
/// /// 5xx and 429 are failures; 404 says nothing about the service's health.
/// struct Mine;
///
/// impl Classify for Mine {
///     fn classify_response(&self, status: StatusCode, _: &HeaderMap) -> Option<Classification> {
///         Some(match status.as_u16() {
///             500..=599 | 429 => Classification::Failure,
///             404 => Classification::Ignore,
///             _ => Classification::Success,
///         })
///     }
/// }
///
/// let c = Mine;
/// assert_eq!(c.classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()), Some(Classification::Failure));
/// ```
///
/// [`classify_response`]: Classify::classify_response
/// [`classify_end`]: Classify::classify_end
/// [`classify_error`]: Classify::classify_error
pub trait Classify: Send + Sync + 'static {
    /// The outcome known from the status and headers, or `None` to decide at the
    /// end of the body ([`classify_end`](Self::classify_end)).
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Classification>;

    /// The outcome of a response whose headers did not decide, once its body
    /// has ended: `trailers` are the body's trailers, if it had any. Default:
    /// [`Success`](Classification::Success).
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Classification {
        let _ = trailers;
        Classification::Success
    }

    /// The outcome of an error from the inner service or the body. Default:
    /// [`Failure`](Classification::Failure).
    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Classification {
        let _ = error;
        Classification::Failure
    }
}

impl<C: Classify + ?Sized> Classify for Arc<C> {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Classification> {
        (**self).classify_response(status, headers)
    }

    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Classification {
        (**self).classify_end(trailers)
    }

    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Classification {
        (**self).classify_error(error)
    }
}

/// The default classifier: a `5xx` status is a failure, anything else (`4xx`
/// included: the client's mistake, not the service's) a success. More statuses
/// can be made failures ([`failure_status`](Self::failure_status)) or ignored
/// ([`ignore_status`](Self::ignore_status)).
///
/// ```
/// use heijunka::tower::{Classification, Classify, HttpClassifier};
/// use http::{HeaderMap, StatusCode};
///
/// let h = HeaderMap::new();
/// let default = HttpClassifier::new();
/// assert_eq!(default.classify_response(StatusCode::BAD_GATEWAY, &h), Some(Classification::Failure));
/// assert_eq!(default.classify_response(StatusCode::NOT_FOUND, &h), Some(Classification::Success));
///
/// let outbound = HttpClassifier::new()
///     .failure_status(StatusCode::TOO_MANY_REQUESTS)
///     .ignore_status(StatusCode::NOT_IMPLEMENTED);
/// assert_eq!(outbound.classify_response(StatusCode::TOO_MANY_REQUESTS, &h), Some(Classification::Failure));
/// assert_eq!(outbound.classify_response(StatusCode::NOT_IMPLEMENTED, &h), Some(Classification::Ignore));
/// ```
#[derive(Clone, Debug, Default)]
pub struct HttpClassifier {
    failures: Vec<StatusCode>,
    ignored: Vec<StatusCode>,
}

impl HttpClassifier {
    /// `5xx` failures, everything else success.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `status` as a failure too (for example 429 from a dependency).
    pub fn failure_status(mut self, status: StatusCode) -> Self {
        self.ignored.retain(|s| *s != status);
        self.failures.push(status);
        self
    }

    /// Counts `status` as neither success nor failure (checked before the `5xx`
    /// rule, so a 501 can be ignored).
    pub fn ignore_status(mut self, status: StatusCode) -> Self {
        self.failures.retain(|s| *s != status);
        self.ignored.push(status);
        self
    }
}

impl Classify for HttpClassifier {
    fn classify_response(&self, status: StatusCode, _: &HeaderMap) -> Option<Classification> {
        Some(if self.ignored.contains(&status) {
            Classification::Ignore
        } else if status.is_server_error() || self.failures.contains(&status) {
            Classification::Failure
        } else {
            Classification::Success
        })
    }
}

/// gRPC status codes, as `grpc-status` carries them.
mod code {
    pub(super) const OK: u8 = 0;
    pub(super) const CANCELLED: u8 = 1;
    pub(super) const UNKNOWN: u8 = 2;
    pub(super) const DEADLINE_EXCEEDED: u8 = 4;
    pub(super) const RESOURCE_EXHAUSTED: u8 = 8;
    pub(super) const INTERNAL: u8 = 13;
    pub(super) const UNAVAILABLE: u8 = 14;
    pub(super) const DATA_LOSS: u8 = 15;
}

/// A classifier for gRPC: reads `grpc-status` from the headers (a trailers-only
/// response) or, failing that, from the trailers at the end of the body.
///
/// By default `UNKNOWN` (2), `DEADLINE_EXCEEDED` (4), `RESOURCE_EXHAUSTED` (8),
/// `INTERNAL` (13), `UNAVAILABLE` (14) and `DATA_LOSS` (15) are failures: the
/// server or its dependencies could not do the work. `CANCELLED` (1) is ignored
/// (the caller gave up). The other codes (`NOT_FOUND`, `INVALID_ARGUMENT`,
/// `PERMISSION_DENIED`, …) are answers about the request, so successes. A body
/// that ends with no `grpc-status` at all breaks the protocol: a failure. An
/// HTTP status other than 200 is classified as [`HttpClassifier`] does.
///
/// ```
/// use heijunka::tower::{Classification, Classify, GrpcClassifier};
/// use http::{HeaderMap, HeaderValue, StatusCode};
///
/// let grpc = GrpcClassifier::new();
/// // Headers without a status: wait for the trailers.
/// assert_eq!(grpc.classify_response(StatusCode::OK, &HeaderMap::new()), None);
/// let mut trailers = HeaderMap::new();
/// trailers.insert("grpc-status", HeaderValue::from_static("14")); // UNAVAILABLE
/// assert_eq!(grpc.classify_end(Some(&trailers)), Classification::Failure);
/// trailers.insert("grpc-status", HeaderValue::from_static("5")); // NOT_FOUND
/// assert_eq!(grpc.classify_end(Some(&trailers)), Classification::Success);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct GrpcClassifier {
    /// Bit `c` set: code `c` is a failure.
    failures: u32,
    /// Bit `c` set: code `c` is ignored.
    ignored: u32,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        let bit = |c: u8| 1u32 << c;
        Self {
            failures: bit(code::UNKNOWN)
                | bit(code::DEADLINE_EXCEEDED)
                | bit(code::RESOURCE_EXHAUSTED)
                | bit(code::INTERNAL)
                | bit(code::UNAVAILABLE)
                | bit(code::DATA_LOSS),
            ignored: bit(code::CANCELLED),
        }
    }
}

impl GrpcClassifier {
    /// The default failure codes (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts gRPC status `code` (0–16) as a failure; `OK` (0) and codes past
    /// 16 are left as they are.
    pub fn failure_code(mut self, code: u8) -> Self {
        if (1..=16).contains(&code) {
            self.failures |= 1 << code;
            self.ignored &= !(1 << code);
        }
        self
    }

    /// Counts gRPC status `code` (0–16) as a success; `OK` (0) and codes past 16
    /// are left as they are.
    pub fn success_code(mut self, code: u8) -> Self {
        if (1..=16).contains(&code) {
            self.failures &= !(1 << code);
            self.ignored &= !(1 << code);
        }
        self
    }

    fn classify_code(&self, code: u8) -> Classification {
        if code == code::OK {
            Classification::Success
        } else if code > 31 {
            // Not a gRPC code at all: the peer is broken.
            Classification::Failure
        } else if self.ignored & (1 << code) != 0 {
            Classification::Ignore
        } else if self.failures & (1 << code) != 0 {
            Classification::Failure
        } else {
            Classification::Success
        }
    }

    /// `grpc-status` parsed: `Some(Ok(code))`, `Some(Err(()))` for an unreadable
    /// value, `None` when absent.
    fn code(headers: &HeaderMap) -> Option<Result<u8, ()>> {
        headers.get("grpc-status").map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u8>().ok())
                .ok_or(())
        })
    }
}

impl Classify for GrpcClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Classification> {
        if status != StatusCode::OK {
            return HttpClassifier::new().classify_response(status, headers);
        }
        match Self::code(headers) {
            Some(Ok(code)) => Some(self.classify_code(code)),
            Some(Err(())) => Some(Classification::Failure),
            None => None,
        }
    }

    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Classification {
        match trailers.and_then(Self::code) {
            Some(Ok(code)) => self.classify_code(code),
            Some(Err(())) | None => Classification::Failure,
        }
    }
}

/// A classifier from a closure over the status and headers (deciding at the
/// headers; errors are failures).
///
/// ```
/// use heijunka::tower::{Classification, Classify, classify_fn};
/// use http::{HeaderMap, StatusCode};
///
/// let c = classify_fn(|status, _headers| {
///     if status == StatusCode::SERVICE_UNAVAILABLE { Classification::Failure } else { Classification::Success }
/// });
/// assert_eq!(c.classify_response(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()), Some(Classification::Success));
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> Classification + Send + Sync + 'static,
{
    ClassifyFn(f)
}

/// The classifier [`classify_fn`] makes.
#[derive(Clone)]
pub struct ClassifyFn<F>(F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F> Classify for ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> Classification + Send + Sync + 'static,
{
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Classification> {
        Some((self.0)(status, headers))
    }
}

/// A shared classifier, as the layers hold it.
pub(crate) type SharedClassifier = Arc<dyn Classify>;

/// The default classifier, shared.
pub(crate) fn default_classifier() -> SharedClassifier {
    static DEFAULT: std::sync::OnceLock<SharedClassifier> = std::sync::OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| Arc::new(HttpClassifier::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_status(code: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(code));
        h
    }

    #[test]
    fn http_defaults_5xx_fail_4xx_do_not() {
        let c = HttpClassifier::new();
        let h = HeaderMap::new();
        for (status, want) in [
            (200, Classification::Success),
            (204, Classification::Success),
            (301, Classification::Success),
            (400, Classification::Success),
            (404, Classification::Success),
            (429, Classification::Success),
            (500, Classification::Failure),
            (503, Classification::Failure),
            (599, Classification::Failure),
        ] {
            let s = StatusCode::from_u16(status).unwrap();
            assert_eq!(c.classify_response(s, &h), Some(want), "{status}");
        }
    }

    #[test]
    fn grpc_codes_in_headers_and_trailers() {
        let g = GrpcClassifier::new();
        // Per the gRPC status code table: server-side and transient failures count.
        for (code, want) in [
            ("0", Classification::Success),
            ("1", Classification::Ignore),
            ("2", Classification::Failure),
            ("3", Classification::Success),
            ("4", Classification::Failure),
            ("5", Classification::Success),
            ("7", Classification::Success),
            ("8", Classification::Failure),
            ("12", Classification::Success),
            ("13", Classification::Failure),
            ("14", Classification::Failure),
            ("15", Classification::Failure),
            ("16", Classification::Success),
            ("banana", Classification::Failure),
        ] {
            let h = with_status(code);
            assert_eq!(
                g.classify_response(StatusCode::OK, &h),
                Some(want),
                "headers {code}"
            );
            assert_eq!(g.classify_end(Some(&h)), want, "trailers {code}");
        }
        assert_eq!(g.classify_response(StatusCode::OK, &HeaderMap::new()), None);
        assert_eq!(
            g.classify_end(None),
            Classification::Failure,
            "no status at all"
        );
        assert_eq!(
            g.classify_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            Some(Classification::Failure)
        );
        let g = g.success_code(14).failure_code(5);
        assert_eq!(
            g.classify_end(Some(&with_status("14"))),
            Classification::Success
        );
        assert_eq!(
            g.classify_end(Some(&with_status("5"))),
            Classification::Failure
        );
    }
}
