//! What the application needs of webhook delivery, apart from how it is
//! done (the `delivery` module): the settings, an endpoint's status, and the
//! calls that keep the workers in step with the tenant's endpoints. The
//! `App` holds a [`WebhookDirectory`]; a node that does not deliver (or a
//! test without delivery) holds [`Disabled`].

use std::time::Duration;

use ::webhooks::backoff;
use ::webhooks::deliver::Limits;
use ::webhooks::target::Policy;
use domain::tenant::Tenant;
use uuid::Uuid;

use crate::error::AppError;

/// Entries the shared reader keeps, by default.
pub const RING_ENTRIES: usize = 32_768;

/// How webhooks are delivered (`[integrations]` in the configuration).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Whether this node delivers (one node of a cluster should).
    pub deliver: bool,
    pub policy: Policy,
    pub limits: Limits,
    /// The first retry's delay (doubling from there to an hour).
    pub first_retry: Duration,
    /// Attempts in flight at once per endpoint (across Sessions).
    pub max_in_flight: usize,
    /// Events queued per endpoint before its feed waits.
    pub max_queued: usize,
    /// Integration events the node's shared reader keeps for its
    /// endpoints' workers ([`RING_ENTRIES`] by default); a worker further
    /// behind reads its own feed.
    pub ring_entries: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            deliver: true,
            policy: Policy::default(),
            limits: Limits::default(),
            first_retry: backoff::FIRST,
            max_in_flight: 8,
            max_queued: 1000,
            ring_entries: RING_ENTRIES,
        }
    }
}

/// How an endpoint's delivery goes, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// Whether this node delivers to the endpoint.
    pub delivering_here: bool,
    /// Events delivered (2xx) since this node started.
    pub delivered: u64,
    /// Attempts that failed since this node started.
    pub failed_attempts: u64,
    /// Events queued or in flight.
    pub queued: u64,
    /// Every event of the endpoint's feed at or below it was delivered.
    pub checkpoint: Option<u64>,
    pub last_attempt_micros: i64,
    /// The last attempt's HTTP status (0: no answer).
    pub last_status: u16,
    /// The last failed attempt's reason (empty: the last attempt succeeded).
    pub last_error: String,
    pub last_latency_micros: i64,
    pub last_delivered_micros: i64,
    /// Since when the oldest undelivered event fails (0: it does not).
    pub failing_since_micros: i64,
    /// When the next attempt is due (0: nothing waits).
    pub next_attempt_micros: i64,
    /// A redelivery in progress: events sent so far.
    pub redelivered: u64,
}

/// The workers of this node's webhook delivery.
pub trait WebhookDirectory: Send + Sync {
    fn settings(&self) -> &WebhookSettings;
    /// How delivery to the endpoint goes on this node.
    fn status(&self, id: Uuid) -> DeliveryStatus;
    /// Starts, updates or stops the workers of `tenant_id` to match `tenant`.
    fn reconcile(&self, tenant_id: Uuid, tenant: &Tenant);
    /// Whether a redelivery of the endpoint can start on this node (its
    /// worker runs here).
    fn can_redeliver(&self, id: Uuid) -> Result<(), AppError>;
    /// A redelivery of the endpoint was recorded in the log: its worker
    /// reads it and starts it (superseding one that runs).
    fn redeliver(&self, id: Uuid);
}

/// No delivery on this node: settings only.
pub struct Disabled(pub WebhookSettings);

impl WebhookDirectory for Disabled {
    fn settings(&self) -> &WebhookSettings {
        &self.0
    }
    fn status(&self, _: Uuid) -> DeliveryStatus {
        DeliveryStatus::default()
    }
    fn reconcile(&self, _: Uuid, _: &Tenant) {}
    fn can_redeliver(&self, _: Uuid) -> Result<(), AppError> {
        Err(AppError::Unavailable("this node does not deliver webhooks (integrations.deliver_webhooks)".into()))
    }
    fn redeliver(&self, _: Uuid) {}
}
