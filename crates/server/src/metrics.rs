//! Prometheus metrics: gRPC requests by method and code, their latency
//! histogram, and the actors' counters (appends, conflicts, live actors,
//! timer firings), rendered as text for `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventlog::stats::{Histogram, HistogramSnapshot};

const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

/// Every RPC the server answers (a tidy test holds the adapters to this
/// list); anything else is counted as `other`.
pub const METHODS: &[&str] = &[
    "AddStaff",
    "AdvanceReadHorizon",
    "ArchivePype",
    "AssignMember",
    "CancelTenant",
    "CloseBreakGlass",
    "CloseSession",
    "CreateApiKey",
    "CreatePype",
    "CreateTenant",
    "DeactivateSubject",
    "DisableStaff",
    "DownloadMedia",
    "ExportSubject",
    "GetErasure",
    "GetOffboarding",
    "GetPype",
    "GetPypeOverview",
    "GetSession",
    "GetSessionView",
    "GetSubject",
    "GetTenant",
    "GrantConsent",
    "ImportSessions",
    "Introspect",
    "InviteSubject",
    "JoinSession",
    "LeaveSession",
    "LiftRestriction",
    "ListEndUsers",
    "ListMessages",
    "ListSessions",
    "ListStaff",
    "Login",
    "Logout",
    "OnboardSubject",
    "OpenBreakGlass",
    "PostMessage",
    "QueryAnalytics",
    "ReactivateSubject",
    "RectifySubject",
    "RegisterSubject",
    "RequestErasure",
    "RestrictProcessing",
    "RevokeApiKey",
    "RotateStaffKey",
    "ScopeAccess",
    "SetPassword",
    "SetRetention",
    "ShareLocation",
    "StartSession",
    "UploadMedia",
    "WatchSession",
    "SubscribeTenantEvents",
    "ExportTenant",
    "CreateWebhook",
    "GetWebhook",
    "ListWebhooks",
    "RotateWebhookSecret",
    "ResumeWebhook",
    "DeleteWebhook",
    "RedeliverWebhook",
    "WithdrawConsent",
    "BeginMove",
    "ReadMove",
    "WriteMove",
    "MoveDigest",
    "FinishMove",
    "AdoptMove",
];

/// Bytes of the files under `dir` (two levels: the log and its segments).
pub fn dir_bytes(dir: &std::path::Path, depth: u8) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some(if meta.is_dir() { if depth > 0 { dir_bytes(&e.path(), depth - 1) } else { 0 } } else { meta.len() })
        })
        .sum()
}

/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// One RPC's counters: atomics only, so the request path takes no lock.
struct Method {
    codes: [AtomicU64; CODES],
    latency: Histogram,
}

impl Default for Method {
    fn default() -> Self {
        Self { codes: Default::default(), latency: Histogram::new(BUCKETS) }
    }
}

/// One RPC's counters as read for rendering.
struct Counts {
    codes: BTreeMap<&'static str, u64>,
    latency: HistogramSnapshot,
}

pub struct ApiMetrics {
    /// Name → slot in `slots` (built once; read without a lock).
    index: HashMap<&'static str, usize>,
    /// One per name in [`METHODS`], then `other`.
    slots: Box<[Method]>,
    /// Damage found and settled in stored files, by store and what was done
    /// (at start only: a lock is fine).
    integrity: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            index: METHODS.iter().enumerate().map(|(i, m)| (*m, i)).collect(),
            slots: (0..=METHODS.len()).map(|_| Method::default()).collect(),
            integrity: Mutex::default(),
        }
    }
}

impl ApiMetrics {
    pub fn observe(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let m = &self.slots[self.index.get(method).copied().unwrap_or(METHODS.len())];
        m.codes[(code as usize).min(CODES - 1)].fetch_add(1, Ordering::Relaxed);
        m.latency.observe(took);
    }

    /// Counts damage found in a store (`keys`, `views`, `media`) and what
    /// was done about it (`repaired`, `torn_tail_cut`, `rebuilt`, ...).
    pub fn count_integrity(&self, store: &'static str, action: &'static str) {
        *self.integrity.lock().unwrap_or_else(|e| e.into_inner()).entry((store, action)).or_default() += 1;
    }

    /// The RPCs answered so far, their counters read once (codes by name).
    fn snapshot(&self) -> Vec<(&'static str, Counts)> {
        let names = METHODS.iter().copied().chain(std::iter::once("other"));
        names
            .zip(self.slots.iter())
            .filter(|(_, m)| m.latency.count() > 0)
            .map(|(name, m)| {
                let codes = (0..CODES)
                    .map(|i| {
                        (crate::client::code_name(tonic::Code::from(i as i32)), m.codes[i].load(Ordering::Relaxed))
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let counts = Counts { codes, latency: m.latency.snapshot() };
                (name, counts)
            })
            .collect()
    }

    /// Each RPC answered so far with its latency histogram (the console's
    /// history takes differences of these).
    pub fn latency_by_method(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        let names = METHODS.iter().copied().chain(std::iter::once("other"));
        names
            .zip(self.slots.iter())
            .filter(|(_, m)| m.latency.count() > 0)
            .map(|(n, m)| (n, m.latency.snapshot()))
            .collect()
    }

    pub fn render(&self, actors: &actors::Metrics, live: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP pypes_integrity_events_total Damage found in stored files since start, by store and what was done.\n# TYPE pypes_integrity_events_total counter\n");
        for ((store, action), n) in self.integrity.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "pypes_integrity_events_total{{store=\"{store}\",action=\"{action}\"}} {n}");
        }
        let methods = self.snapshot();
        out.push_str("# HELP pypes_grpc_requests_total gRPC requests by method and status code.\n# TYPE pypes_grpc_requests_total counter\n");
        for (name, m) in methods.iter() {
            for (code, n) in &m.codes {
                let _ = writeln!(out, "pypes_grpc_requests_total{{method=\"{name}\",code=\"{code}\"}} {n}");
            }
        }
        out.push_str(
            "# HELP pypes_grpc_request_seconds gRPC request latency.\n# TYPE pypes_grpc_request_seconds histogram\n",
        );
        for (name, m) in methods.iter() {
            histogram(&mut out, "pypes_grpc_request_seconds", &format!("method=\"{name}\""), &m.latency);
        }
        let counters = [
            ("pypes_appends_total", "Appends acknowledged by the event log.", actors.appends.load(Ordering::Relaxed)),
            (
                "pypes_version_conflicts_total",
                "Appends retried after another writer moved the stream.",
                actors.conflicts.load(Ordering::Relaxed),
            ),
            (
                "pypes_timer_firings_total",
                "Session timers that went off.",
                actors.timer_firings.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            sample(&mut out, name, "counter", help, v);
        }
        let _ = writeln!(
            out,
            "# HELP pypes_live_actors Actors live in this node.\n# TYPE pypes_live_actors gauge\npypes_live_actors {live}"
        );
        out
    }
}

/// Linux reports process times in USER_HZ ticks, 100 a second on every
/// architecture Linux runs on (`man 5 proc`).
const USER_HZ: f64 = 100.0;

/// The process metrics Prometheus' client libraries export, read from
/// `/proc/self` (nothing where there is no `/proc`): CPU seconds, resident
/// and virtual memory, threads, open and allowed file descriptors, start
/// time.
pub fn process(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) in ")".
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, starttime 22; the
    // rest starts at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()));
    let max_fds = std::fs::read_to_string("/proc/self/limits").unwrap_or_default().lines().find_map(|l| {
        l.strip_prefix("Max open files").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok())
    });
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    let samples = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            field(14).zip(field(15)).map(|(u, s)| (u + s) / USER_HZ),
        ),
        ("process_resident_memory_bytes", "gauge", "Resident memory, bytes.", status_kb("VmRSS:").map(|k| k * 1024.0)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory, bytes.", status_kb("VmSize:").map(|k| k * 1024.0)),
        ("process_threads", "gauge", "OS threads.", status_kb("Threads:")),
        ("process_open_fds", "gauge", "Open file descriptors.", open_fds),
        ("process_max_fds", "gauge", "The limit on open file descriptors.", max_fds),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, seconds since the Unix epoch.",
            field(22).zip(boot).map(|(ticks, boot)| boot + ticks / USER_HZ),
        ),
    ];
    for (name, kind, help, value) in samples {
        if let Some(v) = value {
            sample(out, name, kind, help, v);
        }
    }
}

/// One unlabelled metric: its HELP and TYPE lines and its sample.
pub fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// The build: one sample valued 1 whose labels say what runs.
pub fn build_info(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP pypes_build_info The running build (value 1).\n# TYPE pypes_build_info gauge\n\
         pypes_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\",features=\"{}\"}} 1",
        crate::version::VERSION,
        crate::version::COMMIT,
        crate::version::PROFILE,
        crate::version::features()
    );
}

/// The sample lines of one histogram (`labels` without braces; may be
/// empty).
pub fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (b, n) in h.bounds.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_code_and_latency() {
        let m = ApiMetrics::default();
        m.observe("PostMessage", tonic::Code::Ok, Duration::from_micros(700));
        m.observe("PostMessage", tonic::Code::Ok, Duration::from_millis(30));
        m.observe("PostMessage", tonic::Code::NotFound, Duration::from_millis(2));
        m.observe("NoSuchRpc", tonic::Code::Unimplemented, Duration::from_millis(1));
        let text = m.render(&actors::Metrics::default(), 0);
        for line in [
            "pypes_grpc_requests_total{method=\"PostMessage\",code=\"OK\"} 2",
            "pypes_grpc_requests_total{method=\"PostMessage\",code=\"NOT_FOUND\"} 1",
            "pypes_grpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 1",
            "pypes_grpc_request_seconds_bucket{method=\"PostMessage\",le=\"0.001\"} 1",
            "pypes_grpc_request_seconds_bucket{method=\"PostMessage\",le=\"0.05\"} 3",
            "pypes_grpc_request_seconds_count{method=\"PostMessage\"} 3",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("method=\"GetTenant\""), "unanswered RPCs are not listed");
    }
}
