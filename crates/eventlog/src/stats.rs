//! A latency histogram of atomics (no lock on the measured path), read as
//! cumulative bucket counts for Prometheus-style rendering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for an fdatasync: from a fast NVMe flush to a
/// disk in trouble.
pub const FSYNC_BOUNDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Observations counted into fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative): the first bound an observation fits.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram as read once.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Cumulative: observations at or below each bound.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for ms in [0, 1, 5, 50, 500] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 3, 4], "0 and 1 ms at 1 ms; 5 at 10; 50 at 100; 500 above all");
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 0.556).abs() < 1e-9, "{}", s.sum_seconds);
    }
}

/// How much of a file log's index is in memory and how much was spilled to
/// its scratch file ([`crate::EventLog::index_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Segments of the log; those the writer has moved past (sealed); and
    /// how many of those have their index spilled.
    pub segments: u64,
    pub sealed_segments: u64,
    pub spilled_segments: u64,
    /// Frames of the log, and how many have their place in memory.
    pub frames: u64,
    pub frames_in_memory: u64,
    /// Stream versions whose place is in memory.
    pub versions_in_memory: u64,
    /// Bytes of the scratch file (disk space `du` does not see).
    pub scratch_bytes: u64,
}
