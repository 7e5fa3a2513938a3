//! Limits the configuration sets for the long-lived streams (the tenant
//! event feed and the tenant export).

use std::time::Duration;

/// How patient a feed is with its consumer (`[integrations]` in the
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// How long the feed waits for a consumer that reads nothing before it
    /// cuts the stream off (the consumer resumes from its token).
    pub stall: Duration,
    /// How far the head may run ahead of a live consumer before it is told
    /// that it fell behind.
    pub behind_positions: u64,
    /// How long a live feed waits after a commit before it reads (zero for
    /// the gRPC feed; webhook workers batch the commits of a few ms).
    pub coalesce: Duration,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self { stall: Duration::from_secs(60), behind_positions: 10_000, coalesce: Duration::ZERO }
    }
}
