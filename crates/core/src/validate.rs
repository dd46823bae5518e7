//! Checks for the rules configuration values share, each returning the value or a
//! [`ConfigError`] that names the field.
//!
//! ```
//! use heijunka_core::{validate, ConfigError};
//! use std::time::Duration;
//!
//! fn build(workers: usize, threshold: f64, grace: Duration) -> Result<(), ConfigError> {
//!     validate::at_least("workers", workers, 1)?;
//!     validate::ratio("failure_rate_threshold", threshold)?;
//!     validate::non_zero_duration("grace_period", grace)?;
//!     Ok(())
//! }
//!
//! assert!(build(4, 0.5, Duration::from_secs(30)).is_ok());
//! let err = build(0, 0.5, Duration::from_secs(30)).unwrap_err();
//! assert_eq!(err.to_string(), "workers must be at least 1, got 0");
//! ```

use std::fmt;
use std::time::Duration;

use crate::ConfigError;

/// `value` must be at least `min`.
pub fn at_least<T>(field: &'static str, value: T, min: T) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Debug + fmt::Display,
{
    if value >= min {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            value,
            format!("must be at least {min}"),
        ))
    }
}

/// `value` must be at most `max`.
pub fn at_most<T>(field: &'static str, value: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Debug + fmt::Display,
{
    if value <= max {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            value,
            format!("must be at most {max}"),
        ))
    }
}

/// `value` must be a ratio in `(0, 1]` (a threshold, a watermark): not zero, not
/// negative, not above one, not NaN.
pub fn ratio(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(ConfigError::new(field, value, "must be in (0, 1]"))
    }
}

/// `value` must be a finite number greater than zero (a rate, a multiplier).
pub fn positive(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(ConfigError::new(
            field,
            value,
            "must be a finite number greater than 0",
        ))
    }
}

/// `value` must be a duration longer than zero.
pub fn non_zero_duration(field: &'static str, value: Duration) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(field, value, "must be longer than zero"))
    } else {
        Ok(value)
    }
}

/// `lower` (named `lower_field`) must not exceed `upper` (named `upper_field`). The
/// error names the lower field and says which field bounds it.
pub fn ordered<T>(
    lower_field: &'static str,
    lower: T,
    upper_field: &'static str,
    upper: T,
) -> Result<(), ConfigError>
where
    T: PartialOrd + fmt::Debug,
{
    if lower <= upper {
        Ok(())
    } else {
        Err(ConfigError::new(
            lower_field,
            lower,
            format!("must not exceed {upper_field} ({upper:?})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_accepts_only_the_half_open_unit_interval() {
        for ok in [f64::MIN_POSITIVE, 0.5, 1.0] {
            assert_eq!(ratio("r", ok), Ok(ok));
        }
        for bad in [
            0.0,
            -0.1,
            1.0000001,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let err = ratio("failure_rate_threshold", bad).unwrap_err();
            assert_eq!(err.field(), "failure_rate_threshold");
            assert_eq!(err.rule(), "must be in (0, 1]");
            assert_eq!(err.value(), format!("{bad:?}"));
        }
        assert_eq!(
            ratio("failure_rate_threshold", 1.5)
                .unwrap_err()
                .to_string(),
            "failure_rate_threshold must be in (0, 1], got 1.5"
        );
    }

    #[test]
    fn bounds_and_order() {
        assert_eq!(at_least("workers", 1_usize, 1), Ok(1));
        assert_eq!(
            at_least("workers", 0_usize, 1).unwrap_err().to_string(),
            "workers must be at least 1, got 0"
        );
        assert_eq!(at_most("weight", 5_u32, 5), Ok(5));
        assert_eq!(
            at_most("weight", 6_u32, 5).unwrap_err().to_string(),
            "weight must be at most 5, got 6"
        );
        assert!(ordered("warn_at", 0.8, "reject_at", 0.9).is_ok());
        assert_eq!(
            ordered("warn_at", 0.95, "reject_at", 0.9)
                .unwrap_err()
                .to_string(),
            "warn_at must not exceed reject_at (0.9), got 0.95"
        );
        assert_eq!(
            positive("rate", 0.0).unwrap_err().to_string(),
            "rate must be a finite number greater than 0, got 0.0"
        );
        assert!(positive("rate", f64::NAN).is_err());
        assert_eq!(positive("rate", 2.5), Ok(2.5));
    }

    #[test]
    fn durations() {
        assert_eq!(
            non_zero_duration("grace_period", Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "grace_period must be longer than zero, got 0ns"
        );
        assert!(non_zero_duration("grace_period", Duration::from_nanos(1)).is_ok());
    }

    #[test]
    fn nested_paths() {
        let err = ratio("failure_rate_threshold", 2.0)
            .unwrap_err()
            .within("payments")
            .within("breakers");
        assert_eq!(err.field(), "breakers.payments.failure_rate_threshold");
        assert_eq!(
            err.to_string(),
            "breakers.payments.failure_rate_threshold must be in (0, 1], got 2.0"
        );
        assert_eq!(err.clone().within("").field(), err.field());
    }
}
