//! Webhook endpoints as the API manages them: registration (the URL
//! checked against the destination policy, the filter against the
//! integration event types, a secret made here and shown once), status,
//! secret rotation (the old secret keeps signing for an overlap), resume,
//! delete and redelivery of a time range. The endpoints are part of the
//! tenant's stream (`WebhookCreated`, ...); the delivery itself is
//! [`crate::delivery`].

use std::net::IpAddr;
use std::time::Duration;

use ::webhooks::target::{TargetError, check_address, check_url};
use domain::tenant::{Tenant, TenantCommand, Webhook};
use uuid::Uuid;

use crate::auth::Credentials;
use crate::webhook_port::DeliveryStatus;
use crate::{App, AppError, parse_id};

/// How long a rotated-out secret still signs when the caller names no
/// overlap, and the longest overlap.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest time range one redelivery covers.
pub const MAX_REDELIVERY: Duration = Duration::from_secs(31 * 24 * 3600);

/// An endpoint as the API shows it: the registration and how delivery goes.
pub struct WebhookView {
    pub webhook: Webhook,
    pub status: DeliveryStatus,
}

/// What to register.
pub struct NewWebhook {
    pub url: String,
    pub description: String,
    pub types: Vec<String>,
    pub pype_id: String,
}

/// A new secret: `whsec_` and 64 hex digits; the HMAC key is this text's
/// bytes (what the receiver has).
fn new_secret() -> Result<String, AppError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| AppError::Internal(format!("no randomness for a webhook secret: {e}")))?;
    Ok(format!("whsec_{}", hex::encode(b)))
}

/// The caller's error for a refused destination.
fn target_error(e: TargetError) -> AppError {
    AppError::invalid("url", e.to_string())
}

impl App {
    /// Checks a URL for registration: its shape, and every address its
    /// host resolves to now (each attempt checks again at connect time).
    async fn check_endpoint(&self, url: &str) -> Result<(), AppError> {
        let policy = self.deliveries.settings().policy;
        let parsed = check_url(url, policy).map_err(target_error)?;
        let Some(host) = parsed.host_str() else { return Err(target_error(TargetError::NoHost)) };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return Ok(()); // check_url checked the literal address
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                target_error(TargetError::Unresolved { host: host.into(), reason: "no answer within 5 s".into() })
            })?
            .map_err(|e| target_error(TargetError::Unresolved { host: host.into(), reason: e.to_string() }))?;
        let mut any = false;
        for a in addrs {
            any = true;
            check_address(a.ip(), policy).map_err(target_error)?;
        }
        if !any {
            return Err(target_error(TargetError::Unresolved { host: host.into(), reason: "no addresses".into() }));
        }
        Ok(())
    }

    fn view(&self, webhook: Webhook) -> WebhookView {
        let status = self.deliveries.status(webhook.id);
        WebhookView { webhook, status }
    }

    async fn webhook_of(&self, tenant: Uuid, id: &str) -> Result<(Uuid, Webhook), AppError> {
        let id = parse_id("webhook_id", id)?;
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        let w = t.webhooks.get(&id).cloned().ok_or_else(|| AppError::not_found("webhook"))?;
        Ok((id, w))
    }

    /// Registers an endpoint; the view and the secret (shown only here).
    pub async fn create_webhook(&self, who: &Credentials, new: NewWebhook) -> Result<(WebhookView, String), AppError> {
        let tenant = self.tenant(who).await?;
        let url = new.url.trim().to_string();
        self.check_endpoint(&url).await?;
        crate::feed::stored_types("types", &new.types)?;
        let pype = self.optional_pype(tenant, &new.pype_id).await?;
        let secret = new_secret()?;
        let id = Uuid::now_v7();
        // Delivery starts after what is in the log now: recorded before the
        // endpoint exists, so its worker never starts from the beginning.
        let head = *self.log.watch_head().borrow();
        crate::delivery::save_checkpoint(self, id, head.checked_sub(1), None).await?;
        let webhook = Webhook {
            id,
            url,
            description: new.description,
            types: new.types,
            pype,
            secret: secret.clone().into_bytes(),
            previous: None,
            created_micros: 0,
            paused: None,
        };
        let t = self
            .registry
            .execute::<Tenant>(tenant, tenant, TenantCommand::CreateWebhook { webhook })
            .await?
            .into_state();
        let w = t.webhooks.get(&id).cloned().ok_or_else(|| AppError::Internal("the webhook vanished".into()))?;
        // Start delivering now rather than when the directory hears of it.
        self.deliveries.reconcile(tenant, &t);
        tracing::info!(%tenant, webhook = %id, "webhook registered");
        Ok((self.view(w), secret))
    }

    pub async fn get_webhook(&self, who: &Credentials, id: &str) -> Result<WebhookView, AppError> {
        let tenant = self.tenant(who).await?;
        let (_, w) = self.webhook_of(tenant, id).await?;
        Ok(self.view(w))
    }

    pub async fn list_webhooks(&self, who: &Credentials) -> Result<Vec<WebhookView>, AppError> {
        let tenant = self.tenant(who).await?;
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        Ok(t.webhooks.into_values().map(|w| self.view(w)).collect())
    }

    /// A new secret; the old one keeps signing for `overlap_secs` (0: a
    /// day). The view and the new secret (shown only here).
    pub async fn rotate_webhook_secret(
        &self,
        who: &Credentials,
        id: &str,
        overlap_secs: u64,
    ) -> Result<(WebhookView, String), AppError> {
        let tenant = self.tenant(who).await?;
        let (id, _) = self.webhook_of(tenant, id).await?;
        let overlap = match overlap_secs {
            0 => DEFAULT_OVERLAP,
            s if Duration::from_secs(s) > MAX_OVERLAP => {
                return Err(AppError::invalid(
                    "overlap_secs",
                    format!("{s} s; at most {} s (7 days)", MAX_OVERLAP.as_secs()),
                ));
            }
            s => Duration::from_secs(s),
        };
        let secret = new_secret()?;
        let previous_until_micros = self.clock.now_micros().saturating_add(overlap.as_micros() as i64);
        let cmd = TenantCommand::RotateWebhookSecret { id, secret: secret.clone().into_bytes(), previous_until_micros };
        let t = self.registry.execute::<Tenant>(tenant, tenant, cmd).await?.into_state();
        self.deliveries.reconcile(tenant, &t);
        let w = t.webhooks.get(&id).cloned().ok_or_else(|| AppError::not_found("webhook"))?;
        Ok((self.view(w), secret))
    }

    /// Resumes a paused endpoint: its queued events go at once.
    pub async fn resume_webhook(&self, who: &Credentials, id: &str) -> Result<WebhookView, AppError> {
        let tenant = self.tenant(who).await?;
        let (id, _) = self.webhook_of(tenant, id).await?;
        let t =
            self.registry.execute::<Tenant>(tenant, tenant, TenantCommand::ResumeWebhook { id }).await?.into_state();
        self.deliveries.reconcile(tenant, &t);
        let w = t.webhooks.get(&id).cloned().ok_or_else(|| AppError::not_found("webhook"))?;
        Ok(self.view(w))
    }

    pub async fn delete_webhook(&self, who: &Credentials, id: &str) -> Result<(), AppError> {
        let tenant = self.tenant(who).await?;
        let (id, _) = self.webhook_of(tenant, id).await?;
        let t =
            self.registry.execute::<Tenant>(tenant, tenant, TenantCommand::DeleteWebhook { id }).await?.into_state();
        self.deliveries.reconcile(tenant, &t);
        tracing::info!(%tenant, webhook = %id, "webhook deleted");
        Ok(())
    }

    /// Sends the endpoint's events recorded in `[from, to)` (µs) again,
    /// in log order, with their original ids; runs in the background.
    pub async fn redeliver_webhook(
        &self,
        who: &Credentials,
        id: &str,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<WebhookView, AppError> {
        let tenant = self.tenant(who).await?;
        let (id, w) = self.webhook_of(tenant, id).await?;
        if to_micros <= from_micros {
            return Err(AppError::invalid("to_micros", "must be after from_micros"));
        }
        if (to_micros - from_micros) as u128 > MAX_REDELIVERY.as_micros() {
            return Err(AppError::invalid("to_micros", "a redelivery covers at most 31 days; ask for several"));
        }
        if from_micros > self.clock.now_micros() {
            return Err(AppError::invalid("from_micros", "is in the future"));
        }
        self.deliveries.can_redeliver(id)?;
        // Recorded before the answer, so a restart goes on with it.
        let request = events::codec::WebhookRedeliveryState {
            from_micros,
            to_micros,
            after_position: None,
            sent: 0,
            done: false,
        };
        crate::delivery::save_redelivery(self, id, &request, eventlog::ExpectedVersion::Any).await?;
        self.deliveries.redeliver(id);
        tracing::info!(%tenant, webhook = %id, from_micros, to_micros, "webhook redelivery requested");
        Ok(self.view(w))
    }
}
