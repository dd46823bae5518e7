//! [`Event<E>`]: the shared envelope every subscriber receives.

use std::any::Any;
use std::fmt;
use std::ops::Deref;

use heijunka_core::Bitwise;
use heijunka_recycler::Shared;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use crate::ReplyError;

/// One published event: a routing version, a critical flag, and the payload behind
/// a shared handle. Cloning an `Event` bumps a reference count; it never clones
/// the payload, so one event fans out to any number of subscribers.
///
/// The payload is either a plain value ([`Event::new`], one `Arc` allocation) or a
/// pooled value from a [`heijunka_recycler::Recycler`] ([`Event::pooled`]), which
/// goes back to its pool, reset, when the last clone is dropped (the topic's
/// ring keeps one until its slot is reused, or until every subscriber has passed
/// it and one of them reclaims it): a steady stream of pooled events allocates
/// nothing.
///
/// ```
/// use heijunka_event_bus::Event;
///
/// let event = Event::new("flip").with_version(7).critical();
/// assert_eq!(*event, "flip");
/// assert_eq!(event.version(), 7);
/// assert!(event.is_critical());
/// let copy = event.clone(); // a refcount bump
/// assert_eq!(Event::handles(&copy), 2);
/// ```
pub struct Event<E: Send + Sync + 'static> {
    payload: Payload<E>,
    version: u64,
    reply: Option<Arc<ReplySlot>>,
}

/// The payload, and the critical flag, kept in each variant so that it fills
/// the padding after the enum's tag: an `Event<u64>` is 32 bytes, two to a
/// cache line, where a separate flag made it 40 (and the copy function that
/// inline values used to carry, 48).
enum Payload<E: Send + Sync + 'static> {
    Plain(Arc<E>, bool),
    Pooled(Shared<E>, bool),
    /// A small `Copy` value kept in the envelope; `Bitwise` lets
    /// `Event<E>: Clone` copy it without `E: Clone`.
    Inline(Bitwise<E>, bool),
}

impl<E: Send + Sync + 'static> Payload<E> {
    fn critical_mut(&mut self) -> &mut bool {
        match self {
            Self::Plain(_, c) | Self::Pooled(_, c) | Self::Inline(_, c) => c,
        }
    }
}

/// Where a request's reply goes: the `oneshot::Sender<R>` of the waiting
/// requester, type-erased, taken by the first reply.
pub(crate) struct ReplySlot {
    sender: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<E: Send + Sync + 'static> Event<E> {
    /// An event holding `value` (one `Arc` allocation), version 0, not critical.
    pub fn new(value: E) -> Self {
        Self {
            payload: Payload::Plain(Arc::new(value), false),
            version: 0,
            reply: None,
        }
    }

    /// An event holding a pooled value: no allocation, and the value goes back to
    /// its recycler when the last clone of the event drops.
    ///
    /// ```
    /// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
    /// use heijunka_event_bus::Event;
    /// use heijunka_recycler::Recycler;
    ///
    /// let pool = Recycler::new(16, || Vec::<u8>::with_capacity(64))?;
    /// let mut body = pool.get();
    /// body.extend_from_slice(b"price=42");
    /// let event = Event::pooled(body.into_shared());
    /// let copies = [event.clone(), event.clone()];
    /// drop(event);
    /// drop(copies);
    /// assert_eq!(pool.stats().returns, 1); // back once, after the last clone
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    pub fn pooled(value: Shared<E>) -> Self {
        Self {
            payload: Payload::Pooled(value, false),
            version: 0,
            reply: None,
        }
    }

    /// An event holding a small `Copy` value in the envelope itself: no
    /// allocation and no shared refcount; each subscriber receives a copy of
    /// the bytes. For values of a few words (ids, prices, counters), copying is
    /// cheaper than sharing; larger payloads belong in [`new`](Self::new) or
    /// [`pooled`](Self::pooled).
    ///
    /// ```
    /// use heijunka_event_bus::Event;
    ///
    /// let tick = Event::inline(4242_u64).with_version(2);
    /// let copy = tick.clone();
    /// assert_eq!((*copy, copy.version()), (4242, 2));
    /// assert_eq!(Event::handles(&tick), 1); // nothing shared
    /// ```
    pub fn inline(value: E) -> Self
    where
        E: Copy,
    {
        Self {
            payload: Payload::Inline(Bitwise::new(value), false),
            version: 0,
            reply: None,
        }
    }

    /// Sets the routing version (default 0). Subscribers with a higher
    /// [minimum version](crate::SubscriberBuilder::min_version) skip the event
    /// unless it is [critical](Self::critical).
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Marks the event critical: it passes every subscriber's version filter (the
    /// seeds' topology-flip rule: a flip must reach consumers still on the old
    /// version).
    #[must_use]
    pub fn critical(mut self) -> Self {
        *self.payload.critical_mut() = true;
        self
    }

    /// The routing version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the event passes every version filter.
    pub fn is_critical(&self) -> bool {
        match self.payload {
            Payload::Plain(_, c) | Payload::Pooled(_, c) | Payload::Inline(_, c) => c,
        }
    }

    /// Whether dropping this handle can release something: a shared payload
    /// (plain or pooled) or a request's reply slot. Inline events without a
    /// reply release nothing.
    pub(crate) fn holds_resources(&self) -> bool {
        !matches!(self.payload, Payload::Inline(..)) || self.reply.is_some()
    }

    /// Whether the payload is a pooled value.
    pub fn is_pooled(&self) -> bool {
        matches!(self.payload, Payload::Pooled(..))
    }

    /// How many handles share this payload (this one included; 1 for an
    /// [inline](Self::inline) value, which is copied, not shared).
    pub fn handles(this: &Self) -> usize {
        match &this.payload {
            Payload::Plain(a, _) => Arc::strong_count(a),
            Payload::Pooled(s, _) => Shared::handles(s),
            Payload::Inline(..) => 1,
        }
    }

    /// Whether the publisher awaits a reply ([`Topic::request`](crate::Topic::request))
    /// that no handler has sent yet.
    pub fn wants_reply(&self) -> bool {
        self.reply.as_ref().is_some_and(|slot| {
            slot.sender
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some()
        })
    }

    /// Answers a [`request`](crate::Topic::request): the first reply of the type the
    /// requester awaits wins.
    ///
    /// # Errors
    ///
    /// The value comes back in a [`ReplyError`]: the event is not a request, it
    /// was already answered, the requester gave up, or `R` is not the type it
    /// awaits.
    pub fn reply<R: Send + 'static>(&self, value: R) -> Result<(), ReplyError<R>> {
        let Some(slot) = &self.reply else {
            return Err(ReplyError::NotARequest(value));
        };
        let mut sender = slot
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(boxed) = sender.take() else {
            return Err(ReplyError::AlreadyAnswered(value));
        };
        match boxed.downcast::<oneshot::Sender<R>>() {
            Ok(tx) => {
                drop(sender);
                tx.send(value).map_err(ReplyError::RequesterGone)
            }
            Err(boxed) => {
                *sender = Some(boxed);
                Err(ReplyError::WrongType {
                    value,
                    sent: std::any::type_name::<R>(),
                })
            }
        }
    }

    /// Attaches a reply slot for a request awaiting an `R`.
    pub(crate) fn with_reply_to<R: Send + 'static>(mut self, tx: oneshot::Sender<R>) -> Self {
        self.reply = Some(Arc::new(ReplySlot {
            sender: Mutex::new(Some(Box::new(tx))),
        }));
        self
    }
}

impl<E: Send + Sync + 'static> From<E> for Event<E> {
    fn from(value: E) -> Self {
        Self::new(value)
    }
}

impl<E: Send + Sync + 'static> Deref for Event<E> {
    type Target = E;

    #[inline]
    fn deref(&self) -> &E {
        match &self.payload {
            Payload::Plain(a, _) => a,
            Payload::Pooled(s, _) => s,
            Payload::Inline(v, _) => v.get(),
        }
    }
}

impl<E: Send + Sync + 'static> Clone for Event<E> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            payload: match &self.payload {
                Payload::Plain(a, c) => Payload::Plain(Arc::clone(a), *c),
                Payload::Pooled(s, c) => Payload::Pooled(s.clone(), *c),
                Payload::Inline(v, c) => Payload::Inline(v.clone(), *c),
            },
            version: self.version,
            reply: self.reply.clone(),
        }
    }
}

impl<E: Send + Sync + fmt::Debug + 'static> fmt::Debug for Event<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("payload", &**self)
            .field("version", &self.version)
            .field("critical", &self.is_critical())
            .field("pooled", &self.is_pooled())
            .field("request", &self.reply.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reply_of_the_awaited_type_wins() {
        let (tx, mut rx) = oneshot::channel::<u32>();
        let event = Event::new("q").with_reply_to(tx);
        let copy = event.clone();
        assert!(event.wants_reply());
        // A wrong type leaves the slot for a right one.
        assert!(matches!(
            copy.reply("no"),
            Err(ReplyError::WrongType { value: "no", .. })
        ));
        assert!(copy.wants_reply());
        copy.reply(7_u32).unwrap();
        assert!(!event.wants_reply());
        assert!(matches!(
            event.reply(8_u32),
            Err(ReplyError::AlreadyAnswered(8))
        ));
        assert_eq!(rx.try_recv(), Ok(7));
    }

    #[test]
    fn dropping_every_clone_unanswered_closes_the_reply() {
        let (tx, mut rx) = oneshot::channel::<u32>();
        let event = Event::new(1_u8).with_reply_to(tx);
        let copies = [event.clone(), event.clone()];
        drop(event);
        assert!(
            rx.try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        drop(copies);
        assert_eq!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_small_inline_event_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Event<u64>>(), 32);
        let e = Event::inline(5_u64).with_version(9).critical();
        let copy = e.clone();
        assert_eq!((*copy, copy.version(), copy.is_critical()), (5, 9, true));
    }

    #[test]
    fn clones_share_the_payload_and_the_metadata() {
        let event = Event::new(String::from("x")).with_version(3).critical();
        let copy = event.clone();
        assert!(std::ptr::eq(&*event, &*copy), "one payload");
        assert_eq!(
            (copy.version(), copy.is_critical(), copy.is_pooled()),
            (3, true, false)
        );
        assert_eq!(Event::handles(&event), 2);
        assert!(format!("{copy:?}").contains("version: 3"));
    }
}
