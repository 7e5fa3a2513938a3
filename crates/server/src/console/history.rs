//! The last hour of this node's metrics, sampled every `sample_secs`, for
//! the console's overview charts: request rate and p99 by method, fsync
//! p99, live actors, the log's head and size, each projection's lag and
//! readiness. A sample is the difference of the cumulative counters since
//! the one before; the ring holds `3600 / sample_secs` of them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventlog::stats::HistogramSnapshot;

use crate::metrics::ApiMetrics;

/// What the history samples (the counters `/metrics` shows).
#[derive(Clone)]
pub struct Sources {
    pub ready: tokio::sync::watch::Receiver<bool>,
    pub metrics: Arc<ApiMetrics>,
    pub registry: Arc<actors::Registry>,
    pub views: Arc<app::views::Views>,
    pub log: Arc<dyn eventlog::EventLog>,
    /// The file log's directory (its size is charted); none for databases.
    pub log_dir: Option<std::path::PathBuf>,
}

/// Methods shown one by one on the request charts (the busiest in the hour).
const TOP_METHODS: usize = 6;

/// One point of every chart.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Unix seconds.
    pub t: i64,
    pub ready: bool,
    /// Requests per second over the interval, all methods.
    pub rate: f64,
    /// p99 latency (ms) over the interval, all methods (`None`: no request).
    pub p99_ms: Option<f64>,
    /// Per method: (rate, p99 ms) over the interval.
    pub methods: HashMap<&'static str, (f64, Option<f64>)>,
    pub fsync_p99_ms: Option<f64>,
    pub fsyncs_per_sec: f64,
    pub live_actors: u64,
    pub head: u64,
    pub log_bytes: Option<u64>,
    /// Projection → lag in log positions.
    pub lag: BTreeMap<&'static str, u64>,
}

/// The ring of samples and what the next difference is taken against.
pub struct History {
    pub interval: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    samples: VecDeque<Sample>,
    last: Option<(Instant, HashMap<&'static str, HistogramSnapshot>, Option<HistogramSnapshot>)>,
}

/// The smallest bound at or under which 99 % of `n` observations fall,
/// from cumulative bucket differences (ms); past the last bound, the last
/// bound (the chart says "at least").
fn p99_ms(now: &HistogramSnapshot, before: Option<&HistogramSnapshot>) -> (u64, Option<f64>) {
    let base = |i: usize| before.map_or(0, |b| b.cumulative.get(i).copied().unwrap_or(0));
    let n = now.count.saturating_sub(before.map_or(0, |b| b.count));
    if n == 0 {
        return (0, None);
    }
    let target = n - n / 100;
    for (i, bound) in now.bounds.iter().enumerate() {
        let below = now.cumulative.get(i).copied().unwrap_or(0).saturating_sub(base(i));
        if below >= target {
            return (n, Some(bound * 1000.0));
        }
    }
    (n, now.bounds.last().map(|b| b * 1000.0))
}

impl History {
    pub fn new(sample_secs: u64) -> Arc<Self> {
        Arc::new(Self { interval: Duration::from_secs(sample_secs.max(1)), inner: Mutex::default() })
    }

    /// How many samples an hour holds.
    pub fn capacity(&self) -> usize {
        (3600 / self.interval.as_secs().max(1)) as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample of `state` now.
    pub fn sample(&self, state: &Sources) {
        let now = Instant::now();
        let by_method: HashMap<&'static str, HistogramSnapshot> =
            state.metrics.latency_by_method().into_iter().collect();
        let fsync = state.log.fsync_latency();
        let mut s = Sample {
            t: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
            ready: *state.ready.borrow(),
            live_actors: state.registry.live_actors() as u64,
            head: state.log.head(),
            log_bytes: state.log_dir.as_deref().map(|d| crate::metrics::dir_bytes(d, 2)),
            lag: state.views.runners.iter().map(|r| (r.name(), r.status().lag_positions)).collect(),
            ..Sample::default()
        };
        let mut inner = self.lock();
        if let Some((at, before, fsync_before)) = &inner.last {
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            // All methods together: the sum of each method's buckets.
            let mut all: Option<HistogramSnapshot> = None;
            let mut all_before: Option<HistogramSnapshot> = None;
            for (name, h) in &by_method {
                let prev = before.get(name);
                let (n, p99) = p99_ms(h, prev);
                if n > 0 {
                    s.methods.insert(name, (n as f64 / secs, p99));
                }
                add(&mut all, h);
                if let Some(p) = prev {
                    add(&mut all_before, p);
                }
            }
            if let Some(a) = &all {
                let (n, p99) = p99_ms(a, all_before.as_ref());
                s.rate = n as f64 / secs;
                s.p99_ms = p99;
            }
            if let Some(f) = &fsync {
                let (n, p99) = p99_ms(f, fsync_before.as_ref());
                s.fsync_p99_ms = p99;
                s.fsyncs_per_sec = n as f64 / secs;
            }
        }
        inner.last = Some((now, by_method, fsync));
        push(&mut inner.samples, s, self.capacity());
    }

    /// Samples held now.
    pub fn held(&self) -> usize {
        self.lock().samples.len()
    }

    /// The history as the overview's script reads it (JSON).
    pub fn json(&self) -> String {
        let inner = self.lock();
        let samples = &inner.samples;
        let mut totals: HashMap<&'static str, f64> = HashMap::new();
        for s in samples {
            for (m, (rate, _)) in &s.methods {
                *totals.entry(m).or_default() += rate;
            }
        }
        let mut top: Vec<_> = totals.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        top.truncate(TOP_METHODS);
        let num = |v: f64| if v.is_finite() { format!("{v:.3}") } else { "null".into() };
        let opt = |v: Option<f64>| v.map_or_else(|| "null".to_string(), num);
        let series = |f: &dyn Fn(&Sample) -> String| samples.iter().map(f).collect::<Vec<_>>().join(",");
        let mut out = String::new();
        let _ = write!(out, "{{\"interval_secs\":{},\"capacity\":{},", self.interval.as_secs(), self.capacity());
        let _ = write!(out, "\"t\":[{}],", series(&|s| s.t.to_string()));
        let _ = write!(out, "\"ready\":[{}],", series(&|s| u8::from(s.ready).to_string()));
        let _ = write!(out, "\"request_rate\":[{}],", series(&|s| num(s.rate)));
        let _ = write!(out, "\"p99_ms\":[{}],", series(&|s| opt(s.p99_ms)));
        out.push_str("\"methods\":{");
        for (i, (m, _)) in top.iter().enumerate() {
            let rate = series(&|s| s.methods.get(m).map_or("0".into(), |x| num(x.0)));
            let p99 = series(&|s| opt(s.methods.get(m).and_then(|x| x.1)));
            let _ = write!(out, "{}\"{m}\":{{\"rate\":[{rate}],\"p99_ms\":[{p99}]}}", if i > 0 { "," } else { "" });
        }
        out.push_str("},");
        let _ = write!(out, "\"fsync_p99_ms\":[{}],", series(&|s| opt(s.fsync_p99_ms)));
        let _ = write!(out, "\"fsyncs_per_sec\":[{}],", series(&|s| num(s.fsyncs_per_sec)));
        let _ = write!(out, "\"live_actors\":[{}],", series(&|s| s.live_actors.to_string()));
        let _ = write!(out, "\"log_head\":[{}],", series(&|s| s.head.to_string()));
        let _ = write!(out, "\"log_bytes\":[{}],", series(&|s| s.log_bytes.map_or("null".into(), |b| b.to_string())));
        out.push_str("\"lag\":{");
        let names: Vec<&'static str> = samples.back().map(|s| s.lag.keys().copied().collect()).unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            let lag = series(&|s| s.lag.get(name).map_or("null".into(), |l| l.to_string()));
            let _ = write!(out, "{}\"{name}\":[{lag}]", if i > 0 { "," } else { "" });
        }
        out.push_str("}}");
        out
    }

    /// The newest sample (the overview's figures).
    pub fn latest(&self) -> Option<Sample> {
        self.lock().samples.back().cloned()
    }
}

/// Appends a sample, dropping the oldest past `capacity` (an hour).
fn push(samples: &mut VecDeque<Sample>, s: Sample, capacity: usize) {
    while samples.len() >= capacity.max(1) {
        samples.pop_front();
    }
    samples.push_back(s);
}

/// Adds `h`'s buckets into `to` (same bounds: every RPC shares them).
fn add(to: &mut Option<HistogramSnapshot>, h: &HistogramSnapshot) {
    match to {
        None => *to = Some(h.clone()),
        Some(t) => {
            for (a, b) in t.cumulative.iter_mut().zip(&h.cumulative) {
                *a += b;
            }
            t.count += h.count;
            t.sum_seconds += h.sum_seconds;
        }
    }
}

/// Samples `state` every interval until the process ends.
pub fn spawn(history: Arc<History>, state: Sources) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(history.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            history.sample(&state);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(bounds: &'static [f64], per_bucket: &[u64]) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = per_bucket.iter().map(|n| {
            running += n;
            running
        });
        let cumulative: Vec<u64> = cumulative.collect();
        HistogramSnapshot { bounds, count: running, cumulative, sum_seconds: 0.0 }
    }

    #[test]
    fn p99_is_taken_over_the_interval_only() {
        const B: &[f64] = &[0.001, 0.01, 0.1];
        // Before: 1000 fast calls. Since: 100 calls, 2 of them slow.
        let before = snap(B, &[1000, 0, 0]);
        let now = snap(B, &[1098, 0, 2]);
        assert_eq!(p99_ms(&now, Some(&before)), (100, Some(100.0)));
        // 1 slow in 100: the 99th is still fast.
        let now = snap(B, &[1099, 0, 1]);
        assert_eq!(p99_ms(&now, Some(&before)), (100, Some(1.0)));
        assert_eq!(p99_ms(&before, Some(&before)), (0, None));
    }

    #[test]
    fn the_ring_keeps_an_hour() {
        let h = History::new(10);
        assert_eq!(h.capacity(), 360);
        assert_eq!(History::new(1).capacity(), 3600);
        let mut samples = VecDeque::new();
        for t in 0..400 {
            push(&mut samples, Sample { t, ..Sample::default() }, h.capacity());
        }
        assert_eq!(samples.len(), 360);
        assert_eq!(samples.front().map(|s| s.t), Some(40));
        assert_eq!(samples.back().map(|s| s.t), Some(399));
    }
}
