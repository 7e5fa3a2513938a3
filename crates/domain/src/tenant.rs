//! Tenant: a platform customer, created by a platform admin, with settings
//! for its Pypes and Sessions; active until cancelled.

use uuid::Uuid;

use crate::common::{Aggregate, Ctx, FieldClass, Rejection, Timers, check_text};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TenantSettings {
    /// Default Session timers for the tenant's Pypes.
    pub timers: Timers,
    /// Days a closed Session's content is kept (0 = no limit).
    pub retention_days: u32,
    /// Where the tenant's data must stay, e.g. "eu".
    pub region: String,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self { timers: Timers::DEFAULT, retention_days: 0, region: "eu".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantCommand {
    /// Creates the tenant with its first API key (id, SHA-256 of the
    /// secret), in one append: a tenant never exists without a way in.
    Create {
        tenant: Uuid,
        name: String,
        settings: TenantSettings,
        first_key: (Uuid, [u8; 32]),
    },
    UpdateSettings {
        settings: TenantSettings,
    },
    /// Records a new API key by the SHA-256 of its secret (the secret itself
    /// is shown to the caller once and kept nowhere).
    IssueApiKey {
        key_id: Uuid,
        secret_sha256: [u8; 32],
    },
    RevokeApiKey {
        key_id: Uuid,
    },
    Cancel,
    /// Offboarding, after the grace period: the tenant's KEK is destroyed
    /// (`key_fingerprints` name what went). Only once cancelled; idempotent.
    RecordKeysShredded {
        key_fingerprints: Vec<String>,
    },
    /// The signed offboarding certificate. Idempotent.
    Certify {
        certificate: String,
        signature: String,
    },
    /// Registers a webhook endpoint (the URL was checked against the
    /// destination policy by the caller; this checks its shape and the
    /// tenant's limit).
    CreateWebhook {
        webhook: Webhook,
    },
    /// A new signing secret; the current one stays valid until
    /// `previous_until_micros` (both sign meanwhile).
    RotateWebhookSecret {
        id: Uuid,
        secret: Vec<u8>,
        previous_until_micros: i64,
    },
    /// Delivery stops until resumed: after 72 hours of failures.
    PauseWebhook {
        id: Uuid,
        reason: String,
    },
    ResumeWebhook {
        id: Uuid,
    },
    DeleteWebhook {
        id: Uuid,
    },
}

/// A webhook endpoint as registered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    /// Integration event types delivered (empty: all).
    pub types: Vec<String>,
    /// Only this Pype's events (with its Sessions'), if set.
    pub pype: Option<Uuid>,
    /// The signing secret (sealed in the log under the tenant's key).
    #[serde(skip)]
    pub secret: Vec<u8>,
    /// The previous secret and until when it still signs (µs).
    #[serde(skip)]
    pub previous: Option<(Vec<u8>, i64)>,
    pub created_micros: i64,
    /// Why delivery is paused (`None`: it is not).
    pub paused: Option<(String, i64)>,
}

/// A tenant has at most this many webhook endpoints.
pub const MAX_WEBHOOKS: usize = 20;
/// A webhook filter names at most this many event types.
pub const MAX_WEBHOOK_TYPES: usize = 64;

/// Serialize: for operators' tools (`pypes replay`), never a stored format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TenantEvent {
    Created {
        tenant: Uuid,
        name: String,
        settings: TenantSettings,
        at_micros: i64,
    },
    SettingsUpdated {
        settings: TenantSettings,
    },
    ApiKeyIssued {
        key_id: Uuid,
        secret_sha256: [u8; 32],
        at_micros: i64,
    },
    ApiKeyRevoked {
        key_id: Uuid,
        at_micros: i64,
    },
    Cancelled {
        at_micros: i64,
    },
    KeysShredded {
        key_fingerprints: Vec<String>,
        at_micros: i64,
    },
    OffboardingCertified {
        certificate: String,
        signature: String,
    },
    WebhookCreated {
        webhook: Webhook,
    },
    WebhookSecretRotated {
        id: Uuid,
        #[serde(skip)]
        secret: Vec<u8>,
        previous_until_micros: i64,
        at_micros: i64,
    },
    WebhookPaused {
        id: Uuid,
        reason: String,
        at_micros: i64,
    },
    WebhookResumed {
        id: Uuid,
        at_micros: i64,
    },
    WebhookDeleted {
        id: Uuid,
        at_micros: i64,
    },
}

/// Tenant names and settings are business data, not personal data.
pub const FIELDS: &[(&str, &str, FieldClass)] = &[
    ("Created", "name", FieldClass::Clear),
    ("Created", "settings", FieldClass::Clear),
    ("ApiKeyIssued", "secret_sha256", FieldClass::Clear),
    ("WebhookCreated", "webhook_secret", FieldClass::TenantSecret),
    ("WebhookSecretRotated", "webhook_secret", FieldClass::TenantSecret),
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenant {
    pub id: Option<Uuid>,
    pub name: String,
    pub settings: TenantSettings,
    /// Live API keys: id → SHA-256 of the secret.
    pub api_keys: std::collections::BTreeMap<Uuid, [u8; 32]>,
    pub cancelled: bool,
    pub cancelled_micros: i64,
    /// Offboarding: when the KEK was shredded, and what went.
    pub shredded: Option<(i64, Vec<String>)>,
    pub certificate: Option<(String, String)>,
    /// Webhook endpoints: id → endpoint.
    pub webhooks: std::collections::BTreeMap<Uuid, Webhook>,
}

fn check_settings(s: &TenantSettings) -> Result<(), Rejection> {
    s.timers.validate("settings.timers")?;
    if s.retention_days > 3650 {
        return Err(Rejection::invalid("settings.retention_days", "at most 3650 days"));
    }
    check_text("settings.region", &s.region, 32, true)?;
    if !s.region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(Rejection::invalid("settings.region", "lowercase letters, digits and '-' only"));
    }
    Ok(())
}

impl Aggregate for Tenant {
    type Command = TenantCommand;
    type Event = TenantEvent;

    fn decide(&self, command: &TenantCommand, ctx: &Ctx) -> Result<Vec<TenantEvent>, Rejection> {
        match command {
            TenantCommand::Create { tenant, name, settings, first_key } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { what: "tenant" });
                }
                check_text("name", name, 200, true)?;
                check_settings(settings)?;
                Ok(vec![
                    TenantEvent::Created {
                        tenant: *tenant,
                        name: name.trim().to_string(),
                        settings: settings.clone(),
                        at_micros: ctx.now_micros,
                    },
                    TenantEvent::ApiKeyIssued {
                        key_id: first_key.0,
                        secret_sha256: first_key.1,
                        at_micros: ctx.now_micros,
                    },
                ])
            }
            TenantCommand::UpdateSettings { settings } => {
                self.require_active()?;
                check_settings(settings)?;
                Ok(if *settings == self.settings {
                    vec![]
                } else {
                    vec![TenantEvent::SettingsUpdated { settings: settings.clone() }]
                })
            }
            TenantCommand::IssueApiKey { key_id, secret_sha256 } => {
                self.require_active()?;
                if self.api_keys.len() >= 20 {
                    return Err(Rejection::precondition("a tenant has at most 20 live API keys; revoke one first"));
                }
                if self.api_keys.contains_key(key_id) {
                    return Err(Rejection::AlreadyExists { what: "api key" });
                }
                Ok(vec![TenantEvent::ApiKeyIssued {
                    key_id: *key_id,
                    secret_sha256: *secret_sha256,
                    at_micros: ctx.now_micros,
                }])
            }
            TenantCommand::RevokeApiKey { key_id } => {
                self.require_active()?;
                if !self.api_keys.contains_key(key_id) {
                    return Err(Rejection::NotFound { what: "api key" });
                }
                Ok(vec![TenantEvent::ApiKeyRevoked { key_id: *key_id, at_micros: ctx.now_micros }])
            }
            TenantCommand::Cancel => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { what: "tenant" });
                }
                Ok(if self.cancelled { vec![] } else { vec![TenantEvent::Cancelled { at_micros: ctx.now_micros }] })
            }
            TenantCommand::RecordKeysShredded { key_fingerprints } => {
                if !self.cancelled {
                    return Err(Rejection::precondition("only a cancelled tenant's keys are shredded"));
                }
                Ok(if self.shredded.is_some() {
                    vec![]
                } else {
                    vec![TenantEvent::KeysShredded {
                        key_fingerprints: key_fingerprints.clone(),
                        at_micros: ctx.now_micros,
                    }]
                })
            }
            TenantCommand::CreateWebhook { webhook } => {
                self.require_active()?;
                if self.webhooks.len() >= MAX_WEBHOOKS {
                    return Err(Rejection::precondition(format!(
                        "a tenant has at most {MAX_WEBHOOKS} webhook endpoints; delete one first"
                    )));
                }
                if self.webhooks.contains_key(&webhook.id) {
                    return Err(Rejection::AlreadyExists { what: "webhook" });
                }
                check_text("url", &webhook.url, 2048, true)?;
                check_text("description", &webhook.description, 200, false)?;
                if webhook.types.len() > MAX_WEBHOOK_TYPES {
                    return Err(Rejection::invalid("types", format!("at most {MAX_WEBHOOK_TYPES} types")));
                }
                if webhook.secret.len() < 16 {
                    return Err(Rejection::invalid("secret", "at least 16 bytes"));
                }
                Ok(vec![TenantEvent::WebhookCreated {
                    webhook: Webhook {
                        created_micros: ctx.now_micros,
                        paused: None,
                        previous: None,
                        ..webhook.clone()
                    },
                }])
            }
            TenantCommand::RotateWebhookSecret { id, secret, previous_until_micros } => {
                self.require_active()?;
                self.webhook(*id)?;
                if secret.len() < 16 {
                    return Err(Rejection::invalid("secret", "at least 16 bytes"));
                }
                Ok(vec![TenantEvent::WebhookSecretRotated {
                    id: *id,
                    secret: secret.clone(),
                    previous_until_micros: *previous_until_micros,
                    at_micros: ctx.now_micros,
                }])
            }
            TenantCommand::PauseWebhook { id, reason } => {
                let w = self.webhook(*id)?;
                Ok(if w.paused.is_some() {
                    vec![]
                } else {
                    vec![TenantEvent::WebhookPaused { id: *id, reason: reason.clone(), at_micros: ctx.now_micros }]
                })
            }
            TenantCommand::ResumeWebhook { id } => {
                self.require_active()?;
                let w = self.webhook(*id)?;
                Ok(if w.paused.is_none() {
                    vec![]
                } else {
                    vec![TenantEvent::WebhookResumed { id: *id, at_micros: ctx.now_micros }]
                })
            }
            TenantCommand::DeleteWebhook { id } => {
                self.webhook(*id)?;
                Ok(vec![TenantEvent::WebhookDeleted { id: *id, at_micros: ctx.now_micros }])
            }
            TenantCommand::Certify { certificate, signature } => {
                if self.shredded.is_none() {
                    return Err(Rejection::precondition("the tenant's keys are not shredded yet"));
                }
                Ok(if self.certificate.is_some() {
                    vec![]
                } else {
                    vec![TenantEvent::OffboardingCertified {
                        certificate: certificate.clone(),
                        signature: signature.clone(),
                    }]
                })
            }
        }
    }

    fn evolve(&mut self, event: &TenantEvent) {
        match event {
            TenantEvent::Created { tenant, name, settings, .. } => {
                self.id = Some(*tenant);
                self.name = name.clone();
                self.settings = settings.clone();
            }
            TenantEvent::SettingsUpdated { settings } => self.settings = settings.clone(),
            TenantEvent::ApiKeyIssued { key_id, secret_sha256, .. } => {
                self.api_keys.insert(*key_id, *secret_sha256);
            }
            TenantEvent::ApiKeyRevoked { key_id, .. } => {
                self.api_keys.remove(key_id);
            }
            TenantEvent::Cancelled { at_micros } => {
                self.cancelled = true;
                self.cancelled_micros = *at_micros;
            }
            TenantEvent::KeysShredded { key_fingerprints, at_micros } => {
                self.shredded = Some((*at_micros, key_fingerprints.clone()));
            }
            TenantEvent::OffboardingCertified { certificate, signature } => {
                self.certificate = Some((certificate.clone(), signature.clone()));
            }
            TenantEvent::WebhookCreated { webhook } => {
                self.webhooks.insert(webhook.id, webhook.clone());
            }
            TenantEvent::WebhookSecretRotated { id, secret, previous_until_micros, .. } => {
                if let Some(w) = self.webhooks.get_mut(id) {
                    let old = std::mem::replace(&mut w.secret, secret.clone());
                    w.previous = Some((old, *previous_until_micros));
                }
            }
            TenantEvent::WebhookPaused { id, reason, at_micros } => {
                if let Some(w) = self.webhooks.get_mut(id) {
                    w.paused = Some((reason.clone(), *at_micros));
                }
            }
            TenantEvent::WebhookResumed { id, .. } => {
                if let Some(w) = self.webhooks.get_mut(id) {
                    w.paused = None;
                }
            }
            TenantEvent::WebhookDeleted { id, .. } => {
                self.webhooks.remove(id);
            }
        }
    }
}

impl Tenant {
    /// A registered webhook endpoint.
    pub fn webhook(&self, id: Uuid) -> Result<&Webhook, Rejection> {
        self.webhooks.get(&id).ok_or(Rejection::NotFound { what: "webhook" })
    }

    pub fn require_active(&self) -> Result<(), Rejection> {
        match (self.id, self.cancelled) {
            (None, _) => Err(Rejection::NotFound { what: "tenant" }),
            (Some(_), true) => Err(Rejection::precondition("the tenant is cancelled")),
            _ => Ok(()),
        }
    }
}
