//! The application layer between the API and the actors. The gRPC and
//! HTTP adapters in `server` convert a request, make one call in here and
//! convert the answer; everything the call means (who may make it, which
//! entities it touches, what is audited) is decided here, and every write
//! goes through the actors. Nothing here knows tonic, actix-web or the
//! API's protobuf types (a tidy test holds that).
//!
//! - the call: [`call`] (who is calling, which RPC, for the audit trail
//!   and the staff policy) and [`access`] (the caller's key, checked);
//! - services: [`tenants`], [`pypes`], [`sessions`], [`subjects`],
//!   [`logins`], [`staff_admin`], [`reads`], [`privacy`], [`media`];
//! - privacy processes, each driven by events and resumable from what it
//!   recorded: [`erasure`], [`retention`] (and offboarding),
//!   [`restriction`], [`consent`];
//! - [`error`]: one error type and the one table of codes.

pub mod access;
pub mod alert_rules;
pub mod alerts;
pub mod auth;
pub mod blobs;
pub mod call;
pub mod certificate;
pub mod consent;
pub mod console;
pub mod delivery;
pub mod end_user_auth;
pub mod erasure;
pub mod error;
pub mod export;
pub mod feed;
pub mod hooks;
pub mod import;
pub mod limits;
pub mod logins;
pub mod media;
pub mod moves;
pub mod privacy;
pub mod pypes;
pub mod reads;
pub mod regions;
pub mod restriction;
pub mod retention;
pub mod sessions;
pub mod staff;
pub mod staff_admin;
pub mod subjects;
pub mod tenant_export;
pub mod tenants;
pub mod unfinished;
pub mod views;
pub mod webhook;
pub mod webhook_hub;
pub mod webhook_json;
pub mod webhook_port;

use std::sync::Arc;

use actors::Registry;
use eventlog::{Clock, EventLog};
use keystore::Keyring;

pub use call::Call;
pub use error::{AppError, Code, parse_id};

/// Verified keys: (tenant, key id) → (SHA-256 of the secret, when verified).
pub type AuthCache = std::collections::HashMap<(uuid::Uuid, uuid::Uuid), ([u8; 32], std::time::Instant)>;

/// Everything a service needs; one per node, shared by every call.
pub struct App {
    pub(crate) auth_cache: std::sync::Mutex<AuthCache>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) keyring: Keyring,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) admin_sha256: [u8; 32],
    pub views: Arc<views::Views>,
    pub erasures: Arc<erasure::Erasures>,
    pub restrictions: Arc<restriction::Restrictions>,
    pub consents: Arc<consent::Consents>,
    pub(crate) analytics_k: u64,
    pub audit: audit::AuditLog,
    pub(crate) auth: Arc<end_user_auth::EndUserAuth>,
    pub(crate) staff: Arc<staff::Staff>,
    pub(crate) offboarding_grace_days: u32,
    pub media: Arc<blobs::Media>,
    pub(crate) feed_limits: limits::FeedLimits,
    pub(crate) deliveries: Arc<dyn webhook_port::WebhookDirectory>,
    /// The region this node serves and the global tenant directory (`None`:
    /// no regions configured, every tenant is this node's).
    pub(crate) regions: Option<Arc<regions::Regions>>,
    /// Signs the certificates a call issues (a tenant's move).
    pub(crate) signing: ed25519_dalek::SigningKey,
}

/// What [`App::new`] is made of (the wiring opens the stores and starts
/// the actors, the views and the audit writer).
pub struct Parts {
    pub registry: Arc<Registry>,
    pub log: Arc<dyn EventLog>,
    pub keyring: Keyring,
    pub clock: Arc<dyn Clock>,
    pub admin_sha256: [u8; 32],
    pub views: Arc<views::Views>,
    pub erasures: Arc<erasure::Erasures>,
    pub analytics_k: u64,
    pub audit: audit::AuditLog,
    pub auth: Arc<end_user_auth::EndUserAuth>,
    pub staff: Arc<staff::Staff>,
    pub offboarding_grace_days: u32,
    pub media: Arc<blobs::Media>,
    pub feed_limits: limits::FeedLimits,
    /// Webhook delivery (`delivery::Deliveries`, started after the App is
    /// made), or `webhook_port::Disabled` on a node that does not deliver.
    pub deliveries: Arc<dyn webhook_port::WebhookDirectory>,
    /// Data residency (docs/residency.md); `None` without regions.
    pub regions: Option<Arc<regions::Regions>>,
    /// The node's signing key (the log's), for the certificates calls issue.
    pub signing: ed25519_dalek::SigningKey,
}

impl App {
    /// The application over started parts, with its processes made (not
    /// yet resumed: see [`App::resume_processes`]).
    pub fn new(p: Parts) -> Arc<Self> {
        let restrictions =
            restriction::Restrictions::new(p.registry.clone(), p.log.clone(), p.views.clone(), p.regions.clone());
        if let Some(r) = &p.regions {
            p.erasures.set_regions(r.clone());
        }
        let consents = consent::Consents::new(p.log.clone(), p.keyring.clone());
        Arc::new(Self {
            deliveries: p.deliveries,
            auth_cache: Default::default(),
            registry: p.registry,
            log: p.log,
            keyring: p.keyring,
            clock: p.clock,
            admin_sha256: p.admin_sha256,
            views: p.views,
            erasures: p.erasures,
            restrictions,
            consents,
            analytics_k: p.analytics_k,
            audit: p.audit,
            auth: p.auth,
            staff: p.staff,
            offboarding_grace_days: p.offboarding_grace_days,
            media: p.media,
            feed_limits: p.feed_limits,
            regions: p.regions,
            signing: p.signing,
        })
    }

    /// Refuses a tenant of another region before anything of it is read
    /// or written (docs/residency.md).
    pub(crate) fn local(&self, tenant: uuid::Uuid) -> Result<(), AppError> {
        match &self.regions {
            Some(r) => r.require_local(tenant),
            None => Ok(()),
        }
    }

    /// Finds the privacy processes a previous run left open and drives
    /// them to the end (in the background); the erasure process also
    /// reports overdue requests from then on.
    pub fn resume_processes(&self) {
        let (log, erasures, restrictions) = (self.log.clone(), self.erasures.clone(), self.restrictions.clone());
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(200);
            let found = loop {
                match unfinished::scan(log.as_ref()).await {
                    Ok(found) => break found,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot scan the log for unfinished privacy processes; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
                    }
                }
            };
            tokio::spawn(restrictions.recover(found.restrictions));
            erasures.recover(found.erasures).await;
        });
        tokio::spawn(self.consents.clone().run());
    }

    /// The actors' counters (for `/metrics`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}
