//! The pressure level shared by memory monitoring, queues and load shedding.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How close a resource is to its limit.
///
/// The seeds' degradation tables use three bands: normal operation, an elevated band
/// where optional work is shed (memory above 80 %, a queue above its warn mark), and
/// a critical band where new work is refused (memory above 90 %, a queue above its
/// reject mark). Levels are ordered, so `level >= PressureLevel::Elevated` reads as
/// "at least elevated".
///
/// ```
/// use heijunka_core::PressureLevel;
///
/// assert!(PressureLevel::Critical > PressureLevel::Elevated);
/// assert_eq!(PressureLevel::from_u8(PressureLevel::Elevated.as_u8()), Some(PressureLevel::Elevated));
/// assert_eq!(PressureLevel::Critical.to_string(), "critical");
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PressureLevel {
    /// Below every threshold: admit everything.
    #[default]
    Normal = 0,
    /// Above the first threshold: shed optional or large work, warn operators.
    Elevated = 1,
    /// Above the last threshold: refuse new work until pressure falls.
    Critical = 2,
}

impl PressureLevel {
    /// The level as a byte, for storing in an atomic.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The level stored by [`as_u8`](Self::as_u8); `None` for any other byte.
    #[inline]
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Normal),
            1 => Some(Self::Elevated),
            2 => Some(Self::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Elevated => "elevated",
            Self::Critical => "critical",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        for level in [
            PressureLevel::Normal,
            PressureLevel::Elevated,
            PressureLevel::Critical,
        ] {
            assert_eq!(PressureLevel::from_u8(level.as_u8()), Some(level));
        }
        for byte in 3..=u8::MAX {
            assert_eq!(PressureLevel::from_u8(byte), None);
        }
    }

    #[test]
    fn serialises_as_snake_case() {
        assert_eq!(
            serde_json::to_string(&PressureLevel::Elevated).unwrap(),
            "\"elevated\""
        );
        assert_eq!(
            serde_json::from_str::<PressureLevel>("\"critical\"").unwrap(),
            PressureLevel::Critical
        );
    }
}
