//! The bus's errors: one small type per operation, events handed back.

use std::fmt;
use std::time::Duration;

use heijunka_core::ConfigError;

use crate::{Event, PublishReport};

/// Looking up a topic by name failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The topic name was empty.
    #[error("topic name must not be empty")]
    EmptyName,
    /// A topic setting is invalid (its capacity).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A topic of that name exists with another event type.
    #[error("topic `{name}` carries `{existing}`, not `{requested}`")]
    TypeMismatch {
        /// The topic's name.
        name: String,
        /// The event type the topic was created with.
        existing: &'static str,
        /// The event type asked for.
        requested: &'static str,
    },
}

/// Subscribing failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The subscriber's settings are invalid (a zero buffer, a bad watermark).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The topic is closed.
    #[error("topic `{0}` is closed")]
    Closed(String),
    /// A handler runtime needs a tokio runtime to run on, and none was current.
    #[error("a handler runtime must be started within a tokio runtime")]
    NoRuntime,
}

/// An event no subscriber took, handed back with the reason.
#[non_exhaustive]
pub enum PublishError<E: Send + Sync + 'static> {
    /// The topic is closed.
    Closed(Event<E>),
    /// The topic has no subscribers.
    NoSubscribers(Event<E>),
    /// Every subscriber skipped the event; the report says why, per subscriber.
    Undelivered {
        /// The event.
        event: Event<E>,
        /// Each subscriber and why it was skipped.
        report: PublishReport,
    },
}

impl<E: Send + Sync + 'static> PublishError<E> {
    /// The event that was not delivered.
    pub fn into_inner(self) -> Event<E> {
        match self {
            Self::Closed(e) | Self::NoSubscribers(e) | Self::Undelivered { event: e, .. } => e,
        }
    }

    /// The report, where subscribers were tried.
    pub fn report(&self) -> Option<&PublishReport> {
        match self {
            Self::Undelivered { report, .. } => Some(report),
            _ => None,
        }
    }
}

impl<E: Send + Sync + 'static> fmt::Debug for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(_) => f.write_str("Closed(..)"),
            Self::NoSubscribers(_) => f.write_str("NoSubscribers(..)"),
            Self::Undelivered { report, .. } => f
                .debug_struct("Undelivered")
                .field("report", report)
                .finish_non_exhaustive(),
        }
    }
}

impl<E: Send + Sync + 'static> fmt::Display for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(_) => f.write_str("event not published: the topic is closed"),
            Self::NoSubscribers(_) => f.write_str("event not published: no subscribers"),
            Self::Undelivered { report, .. } => write!(
                f,
                "event not delivered: all {} subscribers skipped it",
                report.skipped.len()
            ),
        }
    }
}

impl<E: Send + Sync + 'static> std::error::Error for PublishError<E> {}

/// A [`request`](crate::Topic::request) got no reply.
#[non_exhaustive]
pub enum RequestError<E: Send + Sync + 'static> {
    /// No reply within the timeout (publishing included).
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// Every subscriber dropped the request without replying.
    NoReply,
    /// The request was not delivered; the event comes back inside.
    NotDelivered(PublishError<E>),
}

impl<E: Send + Sync + 'static> fmt::Debug for RequestError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { after } => f.debug_struct("TimedOut").field("after", after).finish(),
            Self::NoReply => f.write_str("NoReply"),
            Self::NotDelivered(e) => f.debug_tuple("NotDelivered").field(e).finish(),
        }
    }
}

impl<E: Send + Sync + 'static> fmt::Display for RequestError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { after } => write!(f, "no reply within {after:?}"),
            Self::NoReply => f.write_str("every subscriber dropped the request without replying"),
            Self::NotDelivered(e) => write!(f, "request not delivered: {e}"),
        }
    }
}

impl<E: Send + Sync + 'static> std::error::Error for RequestError<E> {}

/// A reply was not sent; the value comes back inside.
#[non_exhaustive]
pub enum ReplyError<R> {
    /// The event was published, not requested.
    NotARequest(R),
    /// Another reply was sent first.
    AlreadyAnswered(R),
    /// The requester stopped waiting (timed out or dropped).
    RequesterGone(R),
    /// The requester awaits another type.
    WrongType {
        /// The value.
        value: R,
        /// The type sent.
        sent: &'static str,
    },
}

impl<R> ReplyError<R> {
    /// The reply that was not sent.
    pub fn into_inner(self) -> R {
        match self {
            Self::NotARequest(v)
            | Self::AlreadyAnswered(v)
            | Self::RequesterGone(v)
            | Self::WrongType { value: v, .. } => v,
        }
    }
}

impl<R> fmt::Debug for ReplyError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotARequest(_) => f.write_str("NotARequest(..)"),
            Self::AlreadyAnswered(_) => f.write_str("AlreadyAnswered(..)"),
            Self::RequesterGone(_) => f.write_str("RequesterGone(..)"),
            Self::WrongType { sent, .. } => f
                .debug_struct("WrongType")
                .field("sent", sent)
                .finish_non_exhaustive(),
        }
    }
}

impl<R> fmt::Display for ReplyError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotARequest(_) => f.write_str("reply not sent: the event is not a request"),
            Self::AlreadyAnswered(_) => f.write_str("reply not sent: already answered"),
            Self::RequesterGone(_) => f.write_str("reply not sent: the requester stopped waiting"),
            Self::WrongType { sent, .. } => {
                write!(f, "reply not sent: the requester does not await `{sent}`")
            }
        }
    }
}

impl<R> std::error::Error for ReplyError<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_payload() {
        let e = PublishError::Closed(Event::new("secret"));
        assert!(!format!("{e:?}").contains("secret"));
        let r = ReplyError::RequesterGone("secret");
        assert!(!format!("{r:?}").contains("secret"));
        assert_eq!(r.into_inner(), "secret");
    }

    #[test]
    fn messages_say_what_happened() {
        let e: RequestError<u8> = RequestError::TimedOut {
            after: Duration::from_millis(250),
        };
        assert_eq!(e.to_string(), "no reply within 250ms");
        let e = PublishError::NoSubscribers(Event::new(1_u8));
        assert_eq!(e.to_string(), "event not published: no subscribers");
        assert!(e.report().is_none());
    }
}
