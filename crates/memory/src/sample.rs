//! A sample: the figures read, the limit that applied and where it came from.

use heijunka_core::{Instant, PressureLevel};
use serde::Serialize;

use crate::cgroup::{CgroupMemory, CgroupVersion};
use crate::probe::ProbeReading;
use crate::psi::MemoryStall;

/// Which limit a sample measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitSource {
    /// A cgroup v2 `memory.max` (the sample's [`cgroup`](MemorySample::cgroup) says
    /// which directory).
    CgroupV2,
    /// A cgroup v1 `memory.limit_in_bytes`.
    CgroupV1,
    /// The limit given to
    /// [`MemoryMonitorBuilder::limit`](crate::MemoryMonitorBuilder::limit).
    Configured,
    /// The system's total memory: nothing smaller applies.
    System,
}

impl LimitSource {
    pub(crate) fn as_u8(self) -> u8 {
        match self {
            Self::CgroupV2 => 0,
            Self::CgroupV1 => 1,
            Self::Configured => 2,
            Self::System => 3,
        }
    }

    pub(crate) fn from_u8(byte: u8) -> Self {
        match byte {
            0 => Self::CgroupV2,
            1 => Self::CgroupV1,
            2 => Self::Configured,
            _ => Self::System,
        }
    }
}

/// The figures behind the current level, as [`MemoryMonitor::status`] reads them
/// without a lock.
///
/// [`MemoryMonitor::status`]: crate::MemoryMonitor::status
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MemoryStatus {
    /// The pressure level after this sample.
    pub level: PressureLevel,
    /// Bytes counted against the limit: the cgroup's working set when a cgroup
    /// limit applies, the process's resident set otherwise.
    pub used: u64,
    /// The limit that applied, in bytes.
    pub limit: u64,
    /// Where the limit came from.
    pub limit_source: LimitSource,
    /// The process's resident set, in bytes.
    pub rss: u64,
    /// The system's total memory, in bytes (0 when unknown).
    pub system_total: u64,
    /// The system's available memory, in bytes (0 when unknown).
    pub system_available: u64,
    /// The sample's number, counting from 1.
    pub sample: u64,
    /// When the sample was taken, on the monitor's clock.
    #[serde(skip)]
    pub sampled_at: Instant,
}

impl MemoryStatus {
    /// `used / limit` (above 1.0 when over the limit).
    pub fn ratio(&self) -> f64 {
        ratio(self.used, self.limit)
    }
}

/// One full sample: the [`MemoryStatus`] plus the cgroup detail.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MemorySample {
    /// The figures and the level.
    #[serde(flatten)]
    pub status: MemoryStatus,
    /// `used / limit`.
    pub ratio: f64,
    /// The binding cgroup limit found, and the directory that set it, whether or
    /// not it was the limit that applied.
    pub cgroup: Option<CgroupMemory>,
    /// Pressure stall information, where the kernel provides it.
    pub stall: Option<MemoryStall>,
}

/// `used / limit`, with a zero limit read as "no room at all".
pub(crate) fn ratio(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return f64::INFINITY;
    }
    // Precision: f64 holds byte counts exactly up to 8 PiB.
    used as f64 / limit as f64
}

/// The limit that binds and the bytes counted against it: of the cgroup limit
/// (against the cgroup's working set), the configured one (against the process's
/// resident set) and the system's memory, the one with the least headroom, the
/// largest `used / limit`. Against the system total the memory in use on the
/// machine counts (total less available) when no cgroup limit applies: that is
/// the fallback's measure, where nothing else sees the host filling up. Under a
/// cgroup limit (where `/proc/meminfo` usually shows the whole node's memory, which
/// the kubelet manages) and when available memory is unknown, the resident set
/// counts. Each of them would
/// end the process when full, whichever limit is the smallest. On a tie the cgroup
/// wins, then the configured limit.
pub(crate) fn resolve(
    reading: &ProbeReading,
    configured: Option<u64>,
) -> Option<(u64, u64, LimitSource)> {
    let mut best: Option<(u64, u64, LimitSource, f64)> = None;
    let mut consider = |limit: u64, used: u64, source: LimitSource| {
        let r = ratio(used, limit);
        if limit > 0 && best.is_none_or(|(_, _, _, b)| r > b) {
            best = Some((limit, used, source, r));
        }
    };
    if let Some(cg) = &reading.cgroup {
        let source = match cg.version {
            CgroupVersion::V2 => LimitSource::CgroupV2,
            CgroupVersion::V1 => LimitSource::CgroupV1,
        };
        consider(cg.limit, cg.usage.unwrap_or(reading.rss), source);
    }
    if let Some(limit) = configured {
        consider(limit, reading.rss, LimitSource::Configured);
    }
    let system_used = match (
        &reading.cgroup,
        reading.system_total,
        reading.system_available,
    ) {
        (None, total, available) if available > 0 && available <= total => total - available,
        _ => reading.rss,
    };
    consider(reading.system_total, system_used, LimitSource::System);
    best.map(|(limit, used, source, _)| (used, limit, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_headroom_wins_and_says_where_it_came_from() {
        let gib = 1_u64 << 30;
        // 1 GiB in use on a 16 GiB machine, all of it this process's.
        let plain = ProbeReading::new(gib, 16 * gib, 15 * gib);
        assert_eq!(
            resolve(&plain, None),
            Some((gib, 16 * gib, LimitSource::System))
        );
        assert_eq!(
            resolve(&plain, Some(2 * gib)),
            Some((gib, 2 * gib, LimitSource::Configured))
        );
        assert_eq!(
            resolve(&plain, Some(32 * gib)),
            Some((gib, 16 * gib, LimitSource::System))
        );

        // A cgroup limit counts the cgroup's working set, not the process's RSS.
        let contained = plain.clone().with_cgroup(
            CgroupMemory::new(CgroupVersion::V2, "/sys/fs/cgroup/pod", 4 * gib).with_usage(3 * gib),
        );
        assert_eq!(
            resolve(&contained, None),
            Some((3 * gib, 4 * gib, LimitSource::CgroupV2))
        );
        assert_eq!(
            resolve(&contained, Some(4 * gib)),
            Some((3 * gib, 4 * gib, LimitSource::CgroupV2)),
            "a tie goes to the cgroup"
        );
        assert_eq!(
            resolve(&contained, Some(gib + 1)),
            Some((gib, gib + 1, LimitSource::Configured))
        );

        // Without a usage figure the RSS stands in.
        let v1 = plain.clone().with_cgroup(CgroupMemory::new(
            CgroupVersion::V1,
            "/sys/fs/cgroup/memory",
            2 * gib,
        ));
        assert_eq!(
            resolve(&v1, None),
            Some((gib, 2 * gib, LimitSource::CgroupV1))
        );

        // The machine's memory in use counts, not the process's share of it; a
        // roomy cgroup or budget does not hide a full machine.
        let full_host = ProbeReading::new(gib, 16 * gib, gib);
        assert_eq!(
            resolve(&full_host, Some(8 * gib)),
            Some((15 * gib, 16 * gib, LimitSource::System))
        );
        // Unknown available memory: the resident set stands in.
        assert_eq!(
            resolve(&ProbeReading::new(gib, 16 * gib, 0), None),
            Some((gib, 16 * gib, LimitSource::System))
        );
        // Under a cgroup limit the node's memory in use does not count: the
        // process's resident set does.
        let contained_on_full_host = full_host
            .clone()
            .with_cgroup(CgroupMemory::new(CgroupVersion::V2, "/pod", 4 * gib).with_usage(gib));
        assert_eq!(
            resolve(&contained_on_full_host, None),
            Some((gib, 4 * gib, LimitSource::CgroupV2))
        );
        // A larger limit that is fuller binds.
        let shared_pod = plain.clone().with_cgroup(
            CgroupMemory::new(CgroupVersion::V2, "/pod", 4 * gib).with_usage(4 * gib - 1),
        );
        assert_eq!(
            resolve(&shared_pod, Some(2 * gib)),
            Some((4 * gib - 1, 4 * gib, LimitSource::CgroupV2))
        );

        // Nothing known: no limit.
        assert_eq!(resolve(&ProbeReading::new(gib, 0, 0), None), None);
    }

    #[test]
    fn ratio_of_a_zero_limit_is_infinite_not_a_panic() {
        assert_eq!(ratio(1, 0), f64::INFINITY);
        assert_eq!(ratio(0, 0), f64::INFINITY);
        assert_eq!(ratio(3, 4), 0.75);
    }

    #[test]
    fn limit_source_bytes_round_trip() {
        for s in [
            LimitSource::CgroupV2,
            LimitSource::CgroupV1,
            LimitSource::Configured,
            LimitSource::System,
        ] {
            assert_eq!(LimitSource::from_u8(s.as_u8()), s);
        }
    }
}
