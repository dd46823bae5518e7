//! Breaker-level outcome classification: which errors, and which successful
//! results, count as failures, successes or nothing, set once in the builder
//! (resilience4j's `recordExceptions` / `ignoreExceptions` / `recordResult`
//! predicates) instead of at every call site.

use std::any::Any;
use std::sync::Arc;

use crate::Verdict;

/// A user's classifier for one type, erased: `None` for a value of another type.
type Erased = Arc<dyn Fn(&dyn Any) -> Option<Verdict> + Send + Sync>;

/// The classifiers of a breaker's configuration.
#[derive(Clone, Default)]
pub(crate) struct Classifiers {
    errors: Option<Erased>,
    results: Option<Erased>,
}

fn erase<V: 'static>(classify: impl Fn(&V) -> Verdict + Send + Sync + 'static) -> Erased {
    Arc::new(move |value: &dyn Any| value.downcast_ref::<V>().map(&classify))
}

impl Classifiers {
    pub(crate) fn set_errors<E: 'static>(
        &mut self,
        classify: impl Fn(&E) -> Verdict + Send + Sync + 'static,
    ) {
        self.errors = Some(erase(classify));
    }

    pub(crate) fn set_results<T: 'static>(
        &mut self,
        classify: impl Fn(&T) -> Verdict + Send + Sync + 'static,
    ) {
        self.results = Some(erase(classify));
    }

    /// How an error counts: the error classifier's verdict for an `E` it was set
    /// for, otherwise a failure.
    #[inline]
    pub(crate) fn error<E: 'static>(&self, error: &E) -> Verdict {
        match &self.errors {
            None => Verdict::Failure,
            Some(classify) => classify(error).unwrap_or(Verdict::Failure),
        }
    }

    /// How a successful result counts: the result classifier's verdict for a `T` it
    /// was set for, otherwise a success.
    #[inline]
    pub(crate) fn result<T: 'static>(&self, value: &T) -> Verdict {
        match &self.results {
            None => Verdict::Success,
            Some(classify) => classify(value).unwrap_or(Verdict::Success),
        }
    }
}

impl std::fmt::Debug for Classifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifiers")
            .field("errors", &self.errors.is_some())
            .field("results", &self.results.is_some())
            .finish()
    }
}
