//! Prometheus metrics: gRPC requests by method and code, their latency
//! histogram, and the actors' counters (appends, conflicts, live actors,
//! timer firings), rendered as text for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

#[derive(Default)]
struct Method {
    codes: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct ApiMetrics {
    methods: Mutex<BTreeMap<&'static str, Method>>,
    /// Damage found and settled in stored files, by store and what was done.
    integrity: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl ApiMetrics {
    pub fn observe(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let m = methods.entry(method).or_default();
        *m.codes.entry(code_name(code)).or_default() += 1;
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                m.buckets[i] += 1;
            }
        }
        m.sum += secs;
        m.count += 1;
    }

    /// Counts damage found in a store (`keys`, `views`, `media`) and what
    /// was done about it (`repaired`, `torn_tail_cut`, `rebuilt`, ...).
    pub fn count_integrity(&self, store: &'static str, action: &'static str) {
        *self.integrity.lock().unwrap_or_else(|e| e.into_inner()).entry((store, action)).or_default() += 1;
    }

    pub fn render(&self, actors: &actors::Metrics, live: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP pypes_integrity_events_total Damage found in stored files since start, by store and what was done.\n# TYPE pypes_integrity_events_total counter\n");
        for ((store, action), n) in self.integrity.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "pypes_integrity_events_total{{store=\"{store}\",action=\"{action}\"}} {n}");
        }
        let methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
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

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
