//! Breaker-level outcome classification: which errors, and which successful
//! results, count as failures, successes or nothing, set once in the builder
//! (resilience4j's `recordExceptions` / `ignoreExceptions` / `recordResult`
//! predicates) instead of at every call site.
//!
//! Classifiers are keyed by the exact type they were registered for
//! (`TypeId`): registering one for a second type adds it, registering one for
//! the same type again replaces it. A value is classified by the first
//! classifier (in registration order) whose type is exactly the value's type;
//! there is no matching through a `Box<dyn Error>` or a trait object.

use std::any::{Any, TypeId};
use std::sync::Arc;

use crate::Verdict;

/// A user's classifier for one type, erased: `None` for a value of another type.
type Erased = Arc<dyn Fn(&dyn Any) -> Option<Verdict> + Send + Sync>;

/// The classifiers of a breaker's configuration, in registration order, at most
/// one per type.
#[derive(Clone, Default)]
pub(crate) struct Classifiers {
    errors: Vec<(TypeId, Erased)>,
    results: Vec<(TypeId, Erased)>,
}

fn erase<V: 'static>(classify: impl Fn(&V) -> Verdict + Send + Sync + 'static) -> Erased {
    Arc::new(move |value: &dyn Any| value.downcast_ref::<V>().map(&classify))
}

/// Adds `classify` for `V`, replacing an earlier one for the same type in place.
fn register<V: 'static>(
    list: &mut Vec<(TypeId, Erased)>,
    classify: impl Fn(&V) -> Verdict + Send + Sync + 'static,
) {
    let id = TypeId::of::<V>();
    let erased = erase(classify);
    match list.iter_mut().find(|(t, _)| *t == id) {
        Some(slot) => slot.1 = erased,
        None => list.push((id, erased)),
    }
}

/// The verdict of the first classifier in `list` for exactly `V`'s type.
#[inline]
fn first_match<V: 'static>(list: &[(TypeId, Erased)], value: &V) -> Option<Verdict> {
    if list.is_empty() {
        return None;
    }
    let id = TypeId::of::<V>();
    list.iter()
        .find(|(t, _)| *t == id)
        .and_then(|(_, classify)| classify(value))
}

impl Classifiers {
    pub(crate) fn add_errors<E: 'static>(
        &mut self,
        classify: impl Fn(&E) -> Verdict + Send + Sync + 'static,
    ) {
        register(&mut self.errors, classify);
    }

    pub(crate) fn add_results<T: 'static>(
        &mut self,
        classify: impl Fn(&T) -> Verdict + Send + Sync + 'static,
    ) {
        register(&mut self.results, classify);
    }

    /// How an error counts: the verdict of the classifier registered for exactly
    /// `E`, otherwise a failure.
    #[inline]
    pub(crate) fn error<E: 'static>(&self, error: &E) -> Verdict {
        first_match(&self.errors, error).unwrap_or(Verdict::Failure)
    }

    /// How a successful result counts: the verdict of the classifier registered
    /// for exactly `T`, otherwise a success.
    #[inline]
    pub(crate) fn result<T: 'static>(&self, value: &T) -> Verdict {
        first_match(&self.results, value).unwrap_or(Verdict::Success)
    }
}

impl std::fmt::Debug for Classifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifiers")
            .field("errors", &self.errors.len())
            .field("results", &self.results.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_registration_order_is_kept_when_replacing() {
        let mut c = Classifiers::default();
        c.add_errors(|_: &u8| Verdict::Ignore);
        c.add_errors(|_: &u16| Verdict::Success);
        c.add_errors(|_: &u8| Verdict::Success);
        assert_eq!(c.errors.len(), 2);
        assert_eq!(c.errors[0].0, TypeId::of::<u8>());
        assert_eq!(c.error(&1_u8), Verdict::Success);
        assert_eq!(c.error(&1_u16), Verdict::Success);
        assert_eq!(c.error(&1_u32), Verdict::Failure);
        assert_eq!(c.result(&1_u8), Verdict::Success);
    }
}
