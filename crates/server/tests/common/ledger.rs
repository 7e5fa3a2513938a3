//! Writers that post under faults and the check of what they were told
//! against what a Session holds (the failover and partition tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proto::api as pb;
use tonic::Code;
use tonic::transport::Channel;

use super::authed;

/// A call that takes longer than this is a hang.
pub const CALL_LIMIT: Duration = Duration::from_secs(25);

/// What one writer was told.
#[derive(Default)]
pub struct Seen {
    /// (body, seq) of each acknowledged post, in the order of the acks.
    pub acked: Vec<(String, u64)>,
    /// Bodies whose post failed (outcome unknown).
    pub failed: Vec<String>,
    /// Acknowledgements once `after` was set (the fault was over).
    pub acked_after: usize,
    /// Failed calls by code.
    pub codes: HashMap<Code, usize>,
    /// UNAVAILABLE answers without the `grpc-retry-pushback-ms` hint.
    pub without_hint: usize,
}

/// One writer: posts to one Session, one call at a time, a new body each
/// time (a failed call is not retried: its outcome is unknown), until
/// `stop`.
pub struct Writer {
    pub name: String,
    pub client: pb::session_service_client::SessionServiceClient<Channel>,
    pub key: String,
    pub session: String,
    pub sender: String,
    pub stop: Arc<AtomicBool>,
    /// Set once the fault is over.
    pub after: Arc<AtomicBool>,
    /// Counts this writer's acknowledgements, when given.
    pub acks: Option<Arc<AtomicUsize>>,
    /// Counts the writers that had a post acknowledged after the fault.
    pub back: Arc<AtomicUsize>,
}

/// Waits until `n` writers had a post acknowledged after the fault (their
/// `back`), at most `within`; how long that took.
pub async fn wait_all_back(back: &AtomicUsize, n: usize, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    while back.load(Ordering::Relaxed) < n {
        assert!(
            started.elapsed() < within,
            "{} of {n} writers had a post acknowledged {within:?} after the fault ended",
            back.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

impl Writer {
    pub async fn run(mut self) -> Seen {
        let mut seen = Seen::default();
        let mut i = 0;
        while !self.stop.load(Ordering::Relaxed) {
            i += 1;
            let body = format!("{}-m{i}", self.name);
            let request = pb::PostMessageRequest {
                session_id: self.session.clone(),
                sender_id: self.sender.clone(),
                body: body.clone(),
                ..Default::default()
            };
            let after = self.after.load(Ordering::Relaxed);
            match tokio::time::timeout(CALL_LIMIT, self.client.post_message(authed(&self.key, request))).await {
                Err(_) => panic!("writer {}: a post hung for {CALL_LIMIT:?}", self.name),
                Ok(Ok(r)) => {
                    seen.acked.push((body, r.into_inner().seq));
                    if after && seen.acked_after == 0 {
                        self.back.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.acked_after += usize::from(after);
                    if let Some(acks) = &self.acks {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Err(status)) => {
                    *seen.codes.entry(status.code()).or_default() += 1;
                    if status.code() == Code::Unavailable && status.metadata().get("grpc-retry-pushback-ms").is_none() {
                        seen.without_hint += 1;
                    }
                    seen.failed.push(body);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        seen
    }
}

/// A Session's messages against what its writers were told: numbers
/// dense; every acknowledged message there once, at the number it was
/// acknowledged with, in each writer's order; every failed one at most
/// once; nothing nobody posted.
pub fn check_session(label: &str, messages: &[pb::Message], writers: &[&Seen]) {
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>(), "{label}: message numbers are dense");
    let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in messages {
        at.entry(m.body.as_str()).or_default().push(m.seq);
    }
    let mut known = 0;
    for seen in writers {
        let mut last = 0;
        for (body, seq) in &seen.acked {
            assert_eq!(at.get(body.as_str()), Some(&vec![*seq]), "{label}: acknowledged {body} once as #{seq}");
            assert!(*seq > last, "{label}: {body} acknowledged out of order");
            last = *seq;
        }
        for body in &seen.failed {
            assert!(at.get(body.as_str()).is_none_or(|v| v.len() == 1), "{label}: {body} twice");
        }
        known += seen.acked.len() + seen.failed.iter().filter(|b| at.contains_key(b.as_str())).count();
    }
    assert_eq!(messages.len(), known, "{label}: a message nobody posted");
}
