//! The storm every run goes through, and the values each part uses.

use std::time::Duration;

/// One phase of the storm.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) secs: f64,
    pub(crate) rate: f64,
    pub(crate) outage: bool,
    pub(crate) sigterm: bool,
}

/// Everything the runs share. The dependency's figures are known to the
/// dependency process only; the server modes are configured without them.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) phases: Vec<Phase>,
    /// Width of a time-series bucket.
    pub(crate) bucket: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) max_in_flight: usize,
}

/// The server side's figures (the same for every run; nothing here is derived
/// from the dependency's capacity).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_millis(250);
/// tower's `ConcurrencyLimitLayer`: Little's law on the time-out budget, for a
/// service expected to take a few hundred requests per second: 400/s × 0.25 s.
pub(crate) const TOWER_CONCURRENCY: usize = 100;
/// The sweep's reference `tower-tuned`: tower's layers with the limit set from
/// knowledge no server has up front, the dependency's 10 workers plus a little
/// (what the previous demo gave its static limit). It shows what the static
/// figure must be for tower to do well, next to heijunka finding it alone.
pub(crate) const TOWER_TUNED_CONCURRENCY: usize = 12;
/// The server's grace period after SIGTERM.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// The simulated dependency (known to the dependency process only).
pub(crate) const DEP_WORKERS: usize = 10;
pub(crate) const DEP_SERVICE: Duration = Duration::from_millis(20);
pub(crate) const DEP_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const DEP_OUTAGE_HANG: Duration = Duration::from_millis(1500);

/// Offered rates of the goodput sweep, and the seconds each one runs.
pub(crate) fn sweep(quick: bool) -> (Vec<f64>, f64) {
    if quick {
        (vec![250.0, 1000.0, 2500.0], 1.5)
    } else {
        (vec![100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0], 3.0)
    }
}

impl Scenario {
    /// The storm: calm, burst, outage, recovery, shutdown.
    pub(crate) fn storm(quick: bool) -> Self {
        let (calm, burst) = if quick {
            (100.0, 1000.0)
        } else {
            (200.0, 2000.0)
        };
        let secs = |full: f64, short: f64| if quick { short } else { full };
        let phase = |name, secs, rate, outage, sigterm| Phase {
            name,
            secs,
            rate,
            outage,
            sigterm,
        };
        Self {
            phases: vec![
                phase("calm", secs(5.0, 1.0), calm, false, false),
                phase("burst", secs(6.0, 2.0), burst, false, false),
                phase("outage", secs(5.0, 1.2), calm, true, false),
                phase("recovery", secs(5.0, 1.2), calm, false, false),
                phase("shutdown", secs(1.0, 0.5), calm, false, true),
            ],
            bucket: if quick {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            },
            client_timeout: Duration::from_secs(1),
            max_in_flight: if quick { 500 } else { 800 },
        }
    }

    /// One steady phase at `rate` for the sweep.
    pub(crate) fn steady(rate: f64, secs: f64) -> Self {
        Self {
            phases: vec![Phase {
                name: "steady",
                secs,
                rate,
                outage: false,
                sigterm: false,
            }],
            bucket: Duration::from_millis(500),
            client_timeout: Duration::from_secs(1),
            max_in_flight: 800,
        }
    }

    pub(crate) fn total_secs(&self) -> f64 {
        self.phases.iter().map(|p| p.secs).sum()
    }

    /// Parses the `--scenario` argument: `quick`, `full` or `steady:RATE:SECS`.
    pub(crate) fn parse(arg: &str) -> Option<Self> {
        match arg {
            "quick" => Some(Self::storm(true)),
            "full" => Some(Self::storm(false)),
            _ => {
                let mut parts = arg.strip_prefix("steady:")?.split(':');
                let rate = parts.next()?.parse().ok()?;
                let secs = parts.next()?.parse().ok()?;
                Some(Self::steady(rate, secs))
            }
        }
    }
}
