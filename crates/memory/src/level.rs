//! Pressure levels from a usage ratio, with hysteresis.

use heijunka_core::{ConfigError, PressureLevel, validate};
use serde::Serialize;

/// The default ratio of the limit at which pressure becomes elevated: 80 %, the
/// seeds' degradation table ("memory 80 %: evict caches aggressively").
pub const DEFAULT_ELEVATED_THRESHOLD: f64 = 0.80;
/// The default ratio at which pressure becomes critical: 90 % ("memory 90 %: reject
/// large requests").
pub const DEFAULT_CRITICAL_THRESHOLD: f64 = 0.90;
/// The default hysteresis: a level is left only once the ratio has fallen 5 points
/// of the limit below the threshold that raised it.
pub const DEFAULT_HYSTERESIS: f64 = 0.05;

/// The thresholds that turn a usage ratio (used / limit) into a [`PressureLevel`].
///
/// A level rises as soon as the ratio reaches its threshold, and falls only once the
/// ratio is below that threshold less the hysteresis, so a value hovering at a
/// threshold does not flap.
///
/// ```
/// use heijunka_core::PressureLevel::*;
/// use heijunka_memory::Thresholds;
///
/// let t = Thresholds::new(0.80, 0.90, 0.05)?;
/// assert_eq!(t.next(Normal, 0.80), Elevated);   // rises at the threshold
/// assert_eq!(t.next(Elevated, 0.78), Elevated); // 0.78 is inside the band
/// assert_eq!(t.next(Elevated, 0.74), Normal);   // below 0.80 - 0.05
/// assert_eq!(t.next(Normal, 0.95), Critical);   // can skip a level
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    elevated: f64,
    critical: f64,
    hysteresis: f64,
}

impl Thresholds {
    /// Checks and builds thresholds: both in `(0, 1]`, `elevated <= critical`, and
    /// `hysteresis` in `[0, elevated)` (so the normal level can be reached again).
    pub fn new(elevated: f64, critical: f64, hysteresis: f64) -> Result<Self, ConfigError> {
        validate::ratio("elevated_threshold", elevated)?;
        validate::ratio("critical_threshold", critical)?;
        validate::ordered(
            "elevated_threshold",
            elevated,
            "critical_threshold",
            critical,
        )?;
        if !(hysteresis >= 0.0 && hysteresis < elevated) {
            return Err(ConfigError::new(
                "hysteresis",
                hysteresis,
                format!("must be in [0, elevated_threshold) = [0, {elevated:?})"),
            ));
        }
        Ok(Self {
            elevated,
            critical,
            hysteresis,
        })
    }

    /// The ratio at which pressure becomes elevated.
    pub fn elevated(&self) -> f64 {
        self.elevated
    }

    /// The ratio at which pressure becomes critical.
    pub fn critical(&self) -> f64 {
        self.critical
    }

    /// How far below a threshold the ratio must fall to leave its level.
    pub fn hysteresis(&self) -> f64 {
        self.hysteresis
    }

    /// The level after observing `ratio` at level `current`. A NaN ratio keeps the
    /// current level.
    pub fn next(&self, current: PressureLevel, ratio: f64) -> PressureLevel {
        if ratio.is_nan() {
            return current;
        }
        let rising = self.band(ratio, 0.0);
        if rising > current {
            return rising;
        }
        current.min(self.band(ratio, self.hysteresis))
    }

    fn band(&self, ratio: f64, minus: f64) -> PressureLevel {
        if ratio >= self.critical - minus {
            PressureLevel::Critical
        } else if ratio >= self.elevated - minus {
            PressureLevel::Elevated
        } else {
            PressureLevel::Normal
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            elevated: DEFAULT_ELEVATED_THRESHOLD,
            critical: DEFAULT_CRITICAL_THRESHOLD,
            hysteresis: DEFAULT_HYSTERESIS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PressureLevel::*;

    #[test]
    fn bad_thresholds_name_field_and_value() {
        let cases = [
            (
                0.0,
                0.9,
                0.05,
                "elevated_threshold must be in (0, 1], got 0.0",
            ),
            (
                0.8,
                1.5,
                0.05,
                "critical_threshold must be in (0, 1], got 1.5",
            ),
            (
                0.95,
                0.9,
                0.05,
                "elevated_threshold must not exceed critical_threshold (0.9), got 0.95",
            ),
            (
                0.8,
                0.9,
                0.8,
                "hysteresis must be in [0, elevated_threshold) = [0, 0.8), got 0.8",
            ),
            (
                0.8,
                0.9,
                -0.1,
                "hysteresis must be in [0, elevated_threshold) = [0, 0.8), got -0.1",
            ),
        ];
        for (e, c, h, msg) in cases {
            assert_eq!(Thresholds::new(e, c, h).unwrap_err().to_string(), msg);
        }
        assert!(Thresholds::new(f64::NAN, 0.9, 0.0).is_err());
        assert!(Thresholds::new(0.8, 0.9, f64::NAN).is_err());
        assert!(Thresholds::new(1.0, 1.0, 0.0).is_ok());
    }

    #[test]
    fn defaults_are_the_seed_table() {
        let t = Thresholds::default();
        assert_eq!(
            (t.elevated(), t.critical(), t.hysteresis()),
            (0.8, 0.9, 0.05)
        );
        assert_eq!(Thresholds::new(0.8, 0.9, 0.05).unwrap(), t);
    }

    #[test]
    fn rises_at_thresholds_falls_below_the_band() {
        let t = Thresholds::default();
        assert_eq!(t.next(Normal, 0.7999), Normal);
        assert_eq!(t.next(Normal, 0.80), Elevated);
        assert_eq!(t.next(Elevated, 0.90), Critical);
        assert_eq!(t.next(Critical, 0.86), Critical);
        assert_eq!(t.next(Critical, 0.8499), Elevated);
        assert_eq!(t.next(Critical, 0.10), Normal);
        assert_eq!(t.next(Elevated, 0.7501), Elevated);
        assert_eq!(t.next(Elevated, 0.7499), Normal);
        assert_eq!(t.next(Normal, 3.0), Critical);
        assert_eq!(t.next(Critical, f64::NAN), Critical);
        assert_eq!(t.next(Normal, f64::INFINITY), Critical);
    }

    #[test]
    fn a_value_hovering_at_a_threshold_does_not_flap() {
        let t = Thresholds::default();
        let mut level = Normal;
        let mut changes = 0;
        for i in 0..1_000 {
            // ±2 points around 80 %.
            let ratio = 0.80 + if i % 2 == 0 { 0.02 } else { -0.02 };
            let next = t.next(level, ratio);
            changes += usize::from(next != level);
            level = next;
        }
        assert_eq!((changes, level), (1, Elevated));

        // Without hysteresis the same input flaps on every sample.
        let t0 = Thresholds::new(0.8, 0.9, 0.0).unwrap();
        let mut level = Normal;
        let mut changes = 0;
        for i in 0..1_000 {
            let ratio = 0.80 + if i % 2 == 0 { 0.02 } else { -0.02 };
            let next = t0.next(level, ratio);
            changes += usize::from(next != level);
            level = next;
        }
        assert_eq!(changes, 1_000);
    }
}
