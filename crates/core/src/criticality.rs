//! How much a request matters when there is not enough for everyone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// How much a request matters under overload, after the criticality levels of
/// Google's *Site Reliability Engineering* book (chapter 21, "Handling Overload"):
/// every stage of a heijunka stack reads the same tag, so sheddable work is shed
/// first and critical work last, and retries and hedges are not spent on
/// sheddable work while a dependency is struggling.
///
/// Ordered from least to most important, so `c >= Criticality::Default` reads as
/// "at least default". The default is [`Default`](Criticality::Default).
///
/// ```
/// use heijunka_core::Criticality;
///
/// assert!(Criticality::Critical > Criticality::Default);
/// assert_eq!("sheddable".parse::<Criticality>()?, Criticality::Sheddable);
/// // Header values are matched without regard to case; the book's
/// // CRITICAL_PLUS and SHEDDABLE_PLUS fold into the nearest level.
/// assert_eq!(Criticality::from_header_value("CRITICAL_PLUS")?, Criticality::Critical);
/// assert!("urgent".parse::<Criticality>().is_err());
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Criticality {
    /// Work whose loss is tolerable (prefetches, batch jobs, analytics): shed
    /// first, never retried or hedged under pressure.
    Sheddable = 0,
    /// Ordinary traffic.
    #[default]
    Default = 1,
    /// Work whose failure a user sees (a checkout, a login): shed last.
    Critical = 2,
}

impl Criticality {
    /// Every level, least important first.
    pub const ALL: [Criticality; 3] = [
        Criticality::Sheddable,
        Criticality::Default,
        Criticality::Critical,
    ];

    /// The header conventionally carrying it between services.
    pub const HEADER: &'static str = "x-request-criticality";

    /// A short lowercase name for logs, metrics labels and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::Default => "default",
            Criticality::Critical => "critical",
        }
    }

    /// The level as an index (0 sheddable, 1 default, 2 critical), for arrays
    /// of per-level counters.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses a header value: `critical`, `default` or `sheddable` in any case,
    /// plus the SRE book's `critical_plus` (read as critical) and
    /// `sheddable_plus` (read as default), with `-` or `_`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `criticality` and the value for anything else.
    pub fn from_header_value(value: &str) -> Result<Self, ConfigError> {
        let v = value.trim().to_ascii_lowercase().replace('-', "_");
        match v.as_str() {
            "critical" | "critical_plus" => Ok(Criticality::Critical),
            "default" | "sheddable_plus" => Ok(Criticality::Default),
            "sheddable" => Ok(Criticality::Sheddable),
            _ => Err(ConfigError::new(
                "criticality",
                format!("{value:?}"),
                "must be one of critical, default, sheddable",
            )),
        }
    }
}

impl FromStr for Criticality {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_header_value(s)
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Criticality::ALL {
            assert_eq!(c.as_str().parse::<Criticality>().unwrap(), c);
            assert_eq!(Criticality::ALL[c.index()], c);
        }
        let err = Criticality::from_header_value("").unwrap_err();
        assert_eq!(err.field(), "criticality");
        assert_eq!(
            Criticality::from_header_value(" Sheddable-Plus ").unwrap(),
            Criticality::Default
        );
    }
}
