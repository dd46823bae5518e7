//! Pressure Stall Information: how much of the recent past tasks spent waiting for
//! memory (reclaim, swap-in, refaults), from `/proc/pressure/memory` or a cgroup
//! v2 directory's `memory.pressure` (Linux 4.20 and later).
//!
//! Usage against a limit says how close the OOM killer is; stall time says how
//! much the memory shortage already costs: a cgroup at 85 % of its limit with
//! nothing reclaimable stalls long before it is killed. The kernel writes:
//!
//! ```text
//! some avg10=1.53 avg60=0.87 avg300=0.21 total=58761459
//! full avg10=0.00 avg60=0.13 avg300=0.96 total=8906263
//! ```
//!
//! `some` is the share of wall time (in percent) in which at least one task was
//! stalled on memory, `full` the share in which every non-idle task was, averaged
//! over 10, 60 and 300 seconds; `total` is the cumulative stall in microseconds.

use serde::Serialize;

/// One line of a PSI file: stall time as a percentage of wall time over three
/// windows, and the cumulative stall.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StallAverages {
    /// Percent of the last 10 seconds.
    pub avg10: f64,
    /// Percent of the last 60 seconds.
    pub avg60: f64,
    /// Percent of the last 300 seconds.
    pub avg300: f64,
    /// Cumulative stall time, in microseconds.
    pub total_us: u64,
}

impl StallAverages {
    /// Averages, for custom probes and tests (`total_us` 0).
    pub fn new(avg10: f64, avg60: f64, avg300: f64) -> Self {
        Self {
            avg10,
            avg60,
            avg300,
            total_us: 0,
        }
    }
}

/// Memory pressure stall information, as read from a PSI file.
///
/// ```
/// use heijunka_memory::MemoryStall;
///
/// let text = "some avg10=1.53 avg60=0.87 avg300=0.21 total=58761459\n\
///             full avg10=0.00 avg60=0.13 avg300=0.96 total=8906263\n";
/// let stall = MemoryStall::parse(text).unwrap();
/// assert_eq!(stall.some.avg10, 1.53);
/// assert_eq!(stall.full.unwrap().avg60, 0.13);
/// assert_eq!(MemoryStall::parse("garbage"), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MemoryStall {
    /// Time in which at least one task was stalled on memory.
    pub some: StallAverages,
    /// Time in which every non-idle task was stalled on memory (`None` where the
    /// file has no `full` line).
    pub full: Option<StallAverages>,
}

impl MemoryStall {
    /// A reading, for custom probes and tests.
    pub fn new(some: StallAverages, full: Option<StallAverages>) -> Self {
        Self { some, full }
    }

    /// Parses the text of a PSI file; `None` without a well-formed `some` line. A
    /// malformed `full` line is left out; unknown fields are ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let slot = match fields.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => continue,
            };
            *slot = parse_averages(fields);
        }
        Some(Self { some: some?, full })
    }
}

/// `avg10=… avg60=… avg300=… total=…`, in any order; every one required, each
/// average finite and in `[0, 100]`.
fn parse_averages<'a>(fields: impl Iterator<Item = &'a str>) -> Option<StallAverages> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let percent = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
        };
        match key {
            "avg10" => avg10 = Some(percent()?),
            "avg60" => avg60 = Some(percent()?),
            "avg300" => avg300 = Some(percent()?),
            "total" => total = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some(StallAverages {
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
        total_us: total?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_text_parses() {
        let text = "some avg10=12.50 avg60=3.00 avg300=0.50 total=1000\n\
                    full avg10=4.25 avg60=1.00 avg300=0.10 total=500\n";
        let stall = MemoryStall::parse(text).unwrap();
        assert_eq!(
            stall.some,
            StallAverages {
                avg10: 12.5,
                avg60: 3.0,
                avg300: 0.5,
                total_us: 1000
            }
        );
        assert_eq!(stall.full.unwrap().avg10, 4.25);
    }

    #[test]
    fn a_missing_full_line_or_a_bad_one_is_none() {
        let only_some = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(MemoryStall::parse(only_some).unwrap().full, None);
        let bad_full =
            "some avg10=1 avg60=1 avg300=1 total=1\nfull avg10=x avg60=0 avg300=0 total=0";
        assert_eq!(MemoryStall::parse(bad_full).unwrap().full, None);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for text in [
            "",
            "some",
            "some avg10=1.0",
            "some avg10=1 avg60=1 avg300=1",
            "some avg10=-1 avg60=1 avg300=1 total=1",
            "some avg10=101 avg60=1 avg300=1 total=1",
            "some avg10=NaN avg60=1 avg300=1 total=1",
            "some avg10=1 avg60=1 avg300=1 total=-5",
            "full avg10=1 avg60=1 avg300=1 total=1",
            "\u{0}\u{ff}==== =",
        ] {
            assert_eq!(MemoryStall::parse(text), None, "{text:?}");
        }
    }
}
