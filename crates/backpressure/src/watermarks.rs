//! [`Watermarks`]: the warn and reject marks of a bounded buffer, in slots, and
//! the pressure level a length is at. Shared by [`BoundedQueue`](crate::BoundedQueue)
//! and the event bus's subscriber buffers, so both read ratios the same way.

use heijunka_core::{ConfigError, PressureLevel, validate};

/// The default hysteresis of watermark crossings: 5 % of capacity (the memory
/// monitor's default of 5 points, applied to a buffer's fill ratio). A buffer
/// hovering at a mark reports the crossing once; it counts as crossing again only
/// after its length has fallen below the mark less this margin.
pub const DEFAULT_WATERMARK_HYSTERESIS: f64 = 0.05;

/// The warn and reject marks of a buffer of `capacity` slots, from fill ratios
/// in (0, 1]: a ratio `r` marks `ceil(r * capacity)` slots, at least 1.
///
/// Levels follow the length exactly; the *hysteresis* only decides when reaching
/// a mark counts as a new crossing (to be logged and counted): after a crossing, a
/// mark of `m` slots is clear again once the length is below
/// [`clear_below(m)`](Self::clear_below), that is `m - ceil(h * capacity)` (at
/// least 1, so an empty buffer is always clear). With `h = 0` every fall below a
/// mark clears it, and a buffer hovering at the mark crosses it on every item.
///
/// ```
/// use heijunka_backpressure::Watermarks;
/// use heijunka_core::PressureLevel;
///
/// let marks = Watermarks::new(10, 0.8, 0.9)?;
/// assert_eq!((marks.warn_slots(), marks.reject_slots()), (8, 9));
/// assert_eq!(marks.level(7), PressureLevel::Normal);
/// assert_eq!(marks.level(8), PressureLevel::Elevated);
/// assert_eq!(marks.level(9), PressureLevel::Critical);
///
/// let err = Watermarks::new(10, 0.9, 0.8).unwrap_err();
/// assert!(err.to_string().contains("warn_at"));
/// # Ok::<(), heijunka_core::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    capacity: usize,
    warn_slots: usize,
    reject_slots: usize,
    margin_slots: usize,
}

impl Watermarks {
    /// Marks for `capacity` slots at the fill ratios `warn_at` and `reject_at`,
    /// with the [default hysteresis](DEFAULT_WATERMARK_HYSTERESIS).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a `capacity` of 0, a ratio outside
    /// (0, 1], or `warn_at` above `reject_at`.
    pub fn new(capacity: usize, warn_at: f64, reject_at: f64) -> Result<Self, ConfigError> {
        Self::with_hysteresis(capacity, warn_at, reject_at, DEFAULT_WATERMARK_HYSTERESIS)
    }

    /// Marks as [`new`](Self::new), with a `hysteresis` (a fill ratio) in
    /// `[0, warn_at)`, so that the warn mark can clear.
    ///
    /// ```
    /// use heijunka_backpressure::Watermarks;
    ///
    /// let marks = Watermarks::with_hysteresis(100, 0.8, 0.9, 0.1)?;
    /// assert_eq!(marks.clear_below(marks.warn_slots()), 70);
    /// assert_eq!(marks.clear_below(marks.reject_slots()), 80);
    /// let err = Watermarks::with_hysteresis(100, 0.8, 0.9, 0.8).unwrap_err();
    /// assert_eq!(err.field(), "hysteresis");
    /// # Ok::<(), heijunka_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and a `hysteresis` outside `[0, warn_at)` (or NaN).
    pub fn with_hysteresis(
        capacity: usize,
        warn_at: f64,
        reject_at: f64,
        hysteresis: f64,
    ) -> Result<Self, ConfigError> {
        validate::at_least("capacity", capacity, 1)?;
        validate::ratio("warn_at", warn_at)?;
        validate::ratio("reject_at", reject_at)?;
        validate::ordered("warn_at", warn_at, "reject_at", reject_at)?;
        if !(hysteresis >= 0.0 && hysteresis < warn_at) {
            return Err(ConfigError::new(
                "hysteresis",
                hysteresis,
                format!("must be in [0, warn_at) = [0, {warn_at:?})"),
            ));
        }
        let slots = |ratio: f64| ((ratio * capacity as f64).ceil() as usize).clamp(1, capacity);
        Ok(Self {
            capacity,
            warn_slots: slots(warn_at),
            reject_slots: slots(reject_at),
            // At most `warn_slots`: `hysteresis < warn_at`.
            margin_slots: (hysteresis * capacity as f64).ceil() as usize,
        })
    }

    /// The buffer's capacity.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The length from which the buffer is [`Elevated`](PressureLevel::Elevated).
    #[inline]
    pub fn warn_slots(&self) -> usize {
        self.warn_slots
    }

    /// The length from which the buffer is [`Critical`](PressureLevel::Critical)
    /// and rejecting publishes refuse.
    #[inline]
    pub fn reject_slots(&self) -> usize {
        self.reject_slots
    }

    /// The hysteresis in slots: `ceil(hysteresis * capacity)`.
    #[inline]
    pub fn margin_slots(&self) -> usize {
        self.margin_slots
    }

    /// The length below which a crossing of the mark `mark_slots` is over, so that
    /// reaching the mark again is a new crossing: `mark_slots - margin_slots()`,
    /// at least 1.
    #[inline]
    pub fn clear_below(&self, mark_slots: usize) -> usize {
        mark_slots.saturating_sub(self.margin_slots).max(1)
    }

    /// The pressure level at `len` buffered items.
    #[inline]
    pub fn level(&self, len: usize) -> PressureLevel {
        if len >= self.reject_slots {
            PressureLevel::Critical
        } else if len >= self.warn_slots {
            PressureLevel::Elevated
        } else {
            PressureLevel::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_round_up_to_at_least_one_slot() {
        let tiny = Watermarks::new(3, 0.1, 0.5).unwrap();
        assert_eq!((tiny.warn_slots(), tiny.reject_slots()), (1, 2));
        let full = Watermarks::new(4, 1.0, 1.0).unwrap();
        assert_eq!((full.warn_slots(), full.reject_slots()), (4, 4));
        assert_eq!(full.level(3), PressureLevel::Normal);
        assert_eq!(full.level(4), PressureLevel::Critical);
    }

    #[test]
    fn the_margin_rounds_up_and_an_empty_buffer_is_always_clear() {
        let m = Watermarks::new(10, 0.8, 0.9).unwrap();
        assert_eq!(m.margin_slots(), 1, "5 % of 10 slots rounds up to 1");
        assert_eq!((m.clear_below(8), m.clear_below(9)), (7, 8));
        let m = Watermarks::new(100, 0.8, 0.9).unwrap();
        assert_eq!((m.clear_below(80), m.clear_below(90)), (75, 85));
        let none = Watermarks::with_hysteresis(10, 0.8, 0.9, 0.0).unwrap();
        assert_eq!(none.clear_below(8), 8, "no hysteresis: any fall clears");
        let wide = Watermarks::with_hysteresis(10, 0.3, 0.9, 0.29).unwrap();
        assert_eq!((wide.warn_slots(), wide.margin_slots()), (3, 3));
        assert_eq!(wide.clear_below(3), 1, "clear once empty");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let msg = |r: Result<Watermarks, ConfigError>| r.unwrap_err().to_string();
        assert!(msg(Watermarks::new(0, 0.8, 0.9)).contains("capacity"));
        assert!(msg(Watermarks::new(4, 0.0, 0.9)).contains("warn_at"));
        assert!(msg(Watermarks::new(4, 0.8, 1.5)).contains("reject_at"));
        let h = |h: f64| msg(Watermarks::with_hysteresis(4, 0.5, 0.9, h));
        assert_eq!(
            h(0.5),
            "hysteresis must be in [0, warn_at) = [0, 0.5), got 0.5"
        );
        assert!(h(-0.01).starts_with("hysteresis"));
        assert!(h(f64::NAN).starts_with("hysteresis"));
    }
}
