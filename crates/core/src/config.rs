//! The configuration error every builder returns.

use std::borrow::Cow;
use std::fmt;

/// A configuration value was rejected: names the field, the rule it broke and the
/// value it had.
///
/// Its message reads `<field> <rule>, got <value>`, for example
/// `failure_rate_threshold must be in (0, 1], got 1.5`. Builders in every heijunka
/// crate return it; the [`validate`](crate::validate) helpers build it for the
/// common rules. When a configuration is nested (one block per breaker in a config
/// file), [`within`](ConfigError::within) prefixes the path so the message points at
/// the right place: `breakers.payments.failure_rate_threshold ...`.
///
/// ```
/// use heijunka_core::ConfigError;
///
/// let err = ConfigError::new("workers", 0, "must be at least 1");
/// assert_eq!(err.to_string(), "workers must be at least 1, got 0");
/// assert_eq!(err.field(), "workers");
/// assert_eq!(err.value(), "0");
///
/// let nested = err.within("pool.blocking");
/// assert_eq!(nested.field(), "pool.blocking.workers");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{field} {rule}, got {value}")]
pub struct ConfigError {
    field: Cow<'static, str>,
    rule: Cow<'static, str>,
    value: String,
}

impl ConfigError {
    /// A new error: `field` broke `rule` (phrased to follow the field name, such as
    /// `"must be at least 1"`) with `value`.
    pub fn new(
        field: impl Into<Cow<'static, str>>,
        value: impl fmt::Debug,
        rule: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
            value: format!("{value:?}"),
        }
    }

    /// The field's name (a dotted path when nested).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule the value broke, such as `must be in (0, 1]`.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The rejected value, as written with `Debug`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Prefixes the field with `path` and a dot.
    #[must_use]
    pub fn within(mut self, path: impl AsRef<str>) -> Self {
        let path = path.as_ref();
        if !path.is_empty() {
            self.field = Cow::Owned(format!("{path}.{}", self.field));
        }
        self
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigError")
            .field("field", &self.field)
            .field("rule", &self.rule)
            .field("value", &self.value)
            .finish()
    }
}
