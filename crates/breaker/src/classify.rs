//! Breaker-level outcome classification: which errors, and which successful
//! results, count as failures, successes or nothing, set once in the builder
//! (resilience4j's `recordExceptions` / `ignoreExceptions` / `recordResult`
//! predicates) instead of at every call site.
//!
//! Classifiers are keyed by the exact type they were registered for
//! ([`ByType`]): registering one for a second type adds it, registering one for
//! the same type again replaces it. There is no matching through a
//! `Box<dyn Error>` or a trait object.

use heijunka_core::classify::ByType;

use crate::Verdict;

/// The classifiers of a breaker's configuration, at most one per type.
#[derive(Clone, Default, Debug)]
pub(crate) struct Classifiers {
    errors: ByType<Verdict>,
    results: ByType<Verdict>,
}

impl Classifiers {
    pub(crate) fn add_errors<E: 'static>(
        &mut self,
        classify: impl Fn(&E) -> Verdict + Send + Sync + 'static,
    ) {
        self.errors.register(classify);
    }

    pub(crate) fn add_results<T: 'static>(
        &mut self,
        classify: impl Fn(&T) -> Verdict + Send + Sync + 'static,
    ) {
        self.results.register(classify);
    }

    /// How an error counts: the verdict of the classifier registered for exactly
    /// `E`, otherwise a failure.
    #[inline]
    pub(crate) fn error<E: 'static>(&self, error: &E) -> Verdict {
        self.errors.judge(error).unwrap_or(Verdict::Failure)
    }

    /// How a successful result counts: the verdict of the classifier registered
    /// for exactly `T`, otherwise a success.
    #[inline]
    pub(crate) fn result<T: 'static>(&self, value: &T) -> Verdict {
        self.results.judge(value).unwrap_or(Verdict::Success)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn unclassified_types_keep_the_defaults() {
        let mut c = Classifiers::default();
        c.add_errors(|_: &u8| Verdict::Ignore);
        c.add_errors(|_: &u16| Verdict::Success);
        c.add_errors(|_: &u8| Verdict::Success);
        assert_eq!(c.error(&1_u8), Verdict::Success);
        assert_eq!(c.error(&1_u16), Verdict::Success);
        assert_eq!(c.error(&1_u32), Verdict::Failure);
        assert_eq!(c.result(&1_u8), Verdict::Success);
    }
}
