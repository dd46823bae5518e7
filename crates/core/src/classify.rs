//! Per-type classifiers: how a value of a given type is judged, set once in a
//! builder instead of at every call site (the breaker's and the retry's
//! `classify_errors` / `classify_results`).

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// A user's classifier for one type, erased: `None` for a value of another type.
type Erased<V> = Arc<dyn Fn(&dyn Any) -> Option<V> + Send + Sync>;

/// Classifiers keyed by the exact type they were registered for (`TypeId`):
/// registering one for a second type adds it, registering one for the same type
/// again replaces it in place. A value is judged by the classifier registered for
/// exactly its type; there is no matching through a `Box<dyn Error>` or a trait
/// object.
///
/// ```
/// use heijunka_core::classify::ByType;
///
/// let mut by_type = ByType::<&'static str>::default();
/// by_type.register(|n: &u32| if *n > 10 { "big" } else { "small" });
/// assert_eq!(by_type.judge(&42_u32), Some("big"));
/// assert_eq!(by_type.judge(&42_u64), None, "no classifier for u64");
/// ```
pub struct ByType<V> {
    list: Vec<(TypeId, Erased<V>)>,
}

impl<V> Default for ByType<V> {
    fn default() -> Self {
        Self { list: Vec::new() }
    }
}

impl<V> Clone for ByType<V> {
    fn clone(&self) -> Self {
        Self {
            list: self.list.clone(),
        }
    }
}

impl<V: 'static> ByType<V> {
    /// Adds `classify` for `T`, replacing an earlier one for the same type in
    /// place (so the registration order of the others is kept).
    pub fn register<T: 'static>(&mut self, classify: impl Fn(&T) -> V + Send + Sync + 'static) {
        let id = TypeId::of::<T>();
        let erased: Erased<V> =
            Arc::new(move |value: &dyn Any| value.downcast_ref::<T>().map(&classify));
        match self.list.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = erased,
            None => self.list.push((id, erased)),
        }
    }

    /// The verdict of the classifier registered for exactly `T`'s type, if any.
    #[inline]
    pub fn judge<T: 'static>(&self, value: &T) -> Option<V> {
        if self.list.is_empty() {
            return None;
        }
        let id = TypeId::of::<T>();
        self.list
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, classify)| classify(value))
    }

    /// Whether no classifier is registered.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many types have a classifier.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The registered types' ids, in registration order.
    pub fn type_ids(&self) -> impl Iterator<Item = TypeId> + '_ {
        self.list.iter().map(|(t, _)| *t)
    }
}

impl<V> fmt::Debug for ByType<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByType")
            .field("types", &self.list.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_registration_order_is_kept_when_replacing() {
        let mut c = ByType::<u8>::default();
        c.register(|_: &u8| 1);
        c.register(|_: &u16| 2);
        c.register(|_: &u8| 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.type_ids().next(), Some(TypeId::of::<u8>()));
        assert_eq!(c.judge(&1_u8), Some(3));
        assert_eq!(c.judge(&1_u16), Some(2));
        assert_eq!(c.judge(&1_u32), None);
    }
}
