//! [`ConfigErrors`]: every problem of a configuration, reported at once.

use std::fmt;

use heijunka_core::ConfigError;

/// Every problem found in a configuration, each a [`ConfigError`] naming the full
/// path of its field (`concurrency.breaker.failure_threshold`), in the order of
/// the tree. Never empty.
///
/// Its message lists them one per line:
///
/// ```
/// use heijunka::config::Config;
///
/// let text = "[concurrency.breaker]\nfailure_threshold = 1.5\nhalf_open_max = 0";
/// let errors = Config::from_toml_str(text)?.validate().unwrap_err();
/// let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
/// assert_eq!(
///     fields,
///     ["concurrency.breaker.failure_threshold", "concurrency.breaker.half_open_max"]
/// );
/// assert_eq!(errors.to_string().lines().count(), 2);
/// # Ok::<(), heijunka::config::ConfigErrors>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Adds `more` after the errors held.
    pub(crate) fn extend(&mut self, more: impl IntoIterator<Item = ConfigError>) {
        self.errors.extend(more);
    }

    /// The errors from a list; `None` if it is empty.
    pub fn from_vec(errors: Vec<ConfigError>) -> Option<Self> {
        if errors.is_empty() {
            None
        } else {
            Some(Self { errors })
        }
    }

    /// The errors, in the order of the tree.
    pub fn as_slice(&self) -> &[ConfigError] {
        &self.errors
    }

    /// An iterator over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// The first error.
    pub fn first(&self) -> &ConfigError {
        &self.errors[0]
    }

    /// The error about `field` (a full path), if there is one.
    pub fn get(&self, field: &str) -> Option<&ConfigError> {
        self.errors.iter().find(|e| e.field() == field)
    }

    /// The errors as a list.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self { errors: vec![e] }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Collects errors under paths.
#[derive(Default)]
pub(super) struct Collector {
    errors: Vec<ConfigError>,
}

impl Collector {
    /// Records `result`'s error, if any, under `path`.
    pub(super) fn at<T>(&mut self, path: &str, result: Result<T, ConfigError>) {
        if let Err(e) = result {
            self.errors.push(e.within(path));
        }
    }

    /// Records an error as is.
    pub(super) fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    /// `Ok(())` if nothing was recorded.
    pub(super) fn finish(self) -> Result<(), ConfigErrors> {
        ConfigErrors::from_vec(self.errors).map_or(Ok(()), Err)
    }
}

/// A value shown as written (a `ConfigError` value that is already text).
pub(super) struct Raw<'a>(pub(super) &'a str);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
