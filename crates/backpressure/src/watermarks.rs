//! [`Watermarks`]: the warn and reject marks of a bounded buffer, in slots, and
//! the pressure level a length is at. Shared by [`BoundedQueue`](crate::BoundedQueue)
//! and the event bus's subscriber buffers, so both read ratios the same way.

use heijunka_core::{ConfigError, PressureLevel, validate};

/// The warn and reject marks of a buffer of `capacity` slots, from fill ratios
/// in (0, 1]: a ratio `r` marks `ceil(r * capacity)` slots, at least 1.
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
}

impl Watermarks {
    /// Marks for `capacity` slots at the fill ratios `warn_at` and `reject_at`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: a `capacity` of 0, a ratio outside
    /// (0, 1], or `warn_at` above `reject_at`.
    pub fn new(capacity: usize, warn_at: f64, reject_at: f64) -> Result<Self, ConfigError> {
        validate::at_least("capacity", capacity, 1)?;
        validate::ratio("warn_at", warn_at)?;
        validate::ratio("reject_at", reject_at)?;
        validate::ordered("warn_at", warn_at, "reject_at", reject_at)?;
        let slots = |ratio: f64| ((ratio * capacity as f64).ceil() as usize).clamp(1, capacity);
        Ok(Self {
            capacity,
            warn_slots: slots(warn_at),
            reject_slots: slots(reject_at),
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
    fn bad_settings_name_the_field() {
        let msg = |r: Result<Watermarks, ConfigError>| r.unwrap_err().to_string();
        assert!(msg(Watermarks::new(0, 0.8, 0.9)).contains("capacity"));
        assert!(msg(Watermarks::new(4, 0.0, 0.9)).contains("warn_at"));
        assert!(msg(Watermarks::new(4, 0.8, 1.5)).contains("reject_at"));
    }
}
