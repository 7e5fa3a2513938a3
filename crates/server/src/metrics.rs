//! Prometheus metrics: gRPC requests by method and code, their latency
//! histogram, and the actors' counters (appends, conflicts, live actors,
//! timer firings), rendered as text for `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

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
    "SetPassword",
    "SetRetention",
    "ShareLocation",
    "StartSession",
    "UploadMedia",
    "WatchSession",
    "WithdrawConsent",
];

/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// One RPC's counters: atomics only, so the request path takes no lock.
#[derive(Default)]
struct Method {
    codes: [AtomicU64; CODES],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// One RPC's counters as read for rendering.
struct Counts {
    codes: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
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
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                m.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        m.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        m.count.fetch_add(1, Ordering::Relaxed);
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
            .filter(|(_, m)| m.count.load(Ordering::Relaxed) > 0)
            .map(|(name, m)| {
                let codes = (0..CODES)
                    .map(|i| {
                        (crate::client::code_name(tonic::Code::from(i as i32)), m.codes[i].load(Ordering::Relaxed))
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let counts = Counts {
                    codes,
                    buckets: std::array::from_fn(|i| m.buckets[i].load(Ordering::Relaxed)),
                    sum: m.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    count: m.count.load(Ordering::Relaxed),
                };
                (name, counts)
            })
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
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(out, "pypes_grpc_request_seconds_bucket{{method=\"{name}\",le=\"{b}\"}} {}", m.buckets[i]);
            }
            let _ = writeln!(out, "pypes_grpc_request_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {}", m.count);
            let _ = writeln!(out, "pypes_grpc_request_seconds_sum{{method=\"{name}\"}} {}", m.sum);
            let _ = writeln!(out, "pypes_grpc_request_seconds_count{{method=\"{name}\"}} {}", m.count);
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
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP pypes_live_actors Actors live in this node.\n# TYPE pypes_live_actors gauge\npypes_live_actors {live}"
        );
        out
    }
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
