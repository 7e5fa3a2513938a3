//! Configuration: defaults, then a TOML file, then environment variables,
//! then flags (each overrides the one before). Unknown keys in the file are
//! refused by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// `host:port` (an IP address or a host name).
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    pub admin_key: Option<String>,
    #[serde(default)]
    pub actors: ActorsFile,
    #[serde(default)]
    pub keys: KeysFile,
    #[serde(default)]
    pub privacy: PrivacyFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub media: MediaFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub sql: SqlFile,
    /// What the client commands connect with (`pypes erase`, `export`, ...).
    #[serde(default)]
    pub client: ClientFile,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryFile,
    /// The tenant event feed and webhooks.
    #[serde(default)]
    pub integrations: IntegrationsFile,
    /// Rules watching privileged access, and where their alerts go.
    #[serde(default)]
    pub alerts: AlertsFile,
    /// The console (`/console`, docs/console.md).
    #[serde(default)]
    pub console: ConsoleFile,
    /// Data residency: `serve`, `directory`, and one table per region
    /// (`[regions.eu] data_dir = …`); docs/residency.md.
    pub regions: Option<toml::Table>,
}

/// `[regions]`, checked: the region this node serves, every region of the
/// deployment, and the global tenant directory.
#[derive(Debug, Clone)]
pub struct RegionsConfig {
    pub this: String,
    pub known: Vec<String>,
    pub directory: DirectorySpec,
}

/// Where the global tenant directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySpec {
    /// `regions.directory`: files in a directory every node shares.
    Files(PathBuf),
    /// `regions.directory_url`: a PostgreSQL database every node reaches.
    Postgres(String),
}

impl std::fmt::Display for DirectorySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectorySpec::Files(p) => write!(f, "{}", p.display()),
            DirectorySpec::Postgres(url) => write!(f, "{}", eventlog::redact_url(url)),
        }
    }
}

/// Reads `[regions]`; the served region's `data_dir` is the node's data
/// directory (a `--data-dir` or `data_dir` that names another is refused).
fn regions_config(table: &toml::Table, data_dir: &mut Option<PathBuf>) -> anyhow::Result<RegionsConfig> {
    let text = |key: &str| -> anyhow::Result<Option<String>> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => anyhow::bail!("regions.{key}: a string"),
        }
    };
    let this =
        text("serve")?.ok_or_else(|| anyhow::anyhow!("regions.serve: which region this node serves (e.g. \"eu\")"))?;
    let directory = match (text("directory")?, text("directory_url")?) {
        (Some(dir), None) => DirectorySpec::Files(PathBuf::from(dir)),
        (None, Some(url)) => DirectorySpec::Postgres(url),
        (Some(_), Some(_)) => {
            anyhow::bail!("regions.directory and regions.directory_url: give one global tenant directory, not two")
        }
        (None, None) => anyhow::bail!(
            "regions.directory: the global tenant directory (a directory shared by the nodes of every region), or \
             regions.directory_url (a PostgreSQL database they share)"
        ),
    };
    let mut known = Vec::new();
    let mut served_dir = None;
    for (name, value) in table {
        if name == "serve" || name == "directory" || name == "directory_url" {
            continue;
        }
        let toml::Value::Table(region) = value else {
            anyhow::bail!(
                "regions.{name}: unknown key; a region is a table ([regions.{name}] data_dir = …), besides serve and directory"
            );
        };
        if name.is_empty()
            || name.len() > 32
            || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            anyhow::bail!("regions.{name}: a region's name is 1 to 32 lower-case letters, digits or '-'");
        }
        for key in region.keys() {
            if key != "data_dir" {
                anyhow::bail!("regions.{name}.{key}: unknown key (a region has data_dir)");
            }
        }
        let dir = match region.get("data_dir") {
            Some(toml::Value::String(s)) => PathBuf::from(s),
            _ => anyhow::bail!("regions.{name}.data_dir: the region's data directory (a string)"),
        };
        if *name == this {
            served_dir = Some(dir);
        }
        known.push(name.clone());
    }
    let Some(served_dir) = served_dir else {
        anyhow::bail!("regions.serve = {this:?}, but there is no [regions.{this}] (regions: {})", known.join(", "));
    };
    match data_dir {
        Some(d) if *d != served_dir => anyhow::bail!(
            "the data directory {} is not region {this}'s ({}): a node's data directory is its region's",
            d.display(),
            served_dir.display()
        ),
        _ => *data_dir = Some(served_dir),
    }
    Ok(RegionsConfig { this, known, directory })
}

/// `[alerts]`: the rules over the audit trail (docs/incident-response.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// Whether this node follows the audit trail (default true).
    pub enabled: Option<bool>,
    /// Alert when a break-glass grant is opened (default true).
    pub break_glass_opened: Option<bool>,
    /// Alert when one staff member reads content of more than this many
    /// subjects within an hour (default 20; 0: off).
    pub content_subjects_per_hour: Option<u64>,
    /// Alert when one key is refused more than this many times within a
    /// minute (default 20; 0: off).
    pub refusals_per_minute: Option<u64>,
    /// Alert when a whole tenant is exported (default true).
    pub bulk_export: Option<bool>,
    /// Hours in which staff are expected to access a tenant.
    #[serde(default)]
    pub tenant_hours: Vec<TenantHoursFile>,
    /// Where alerts are posted (signed, retried, in order).
    #[serde(default)]
    pub webhooks: Vec<AlertHookFile>,
    /// The first retry's delay in ms (default 5000, 100 to 60000).
    pub first_retry_ms: Option<u64>,
    /// Alert webhooks at private addresses (default true: the operator's
    /// own SIEM).
    pub allow_private_addresses: Option<bool>,
    /// Alert webhooks at loopback addresses, plain http:// to them
    /// (default false).
    pub allow_loopback: Option<bool>,
    /// A PEM CA certificate trusted for alert webhooks besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// `[[alerts.tenant_hours]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantHoursFile {
    pub tenant: String,
    /// "mon-fri", "mon,wed", "all" (default "mon-fri").
    pub days: Option<String>,
    /// "08:00".
    pub from: String,
    /// "18:00" ("24:00": the end of the day).
    pub to: String,
    /// "+01:00", "-05:00", "Z" (default "Z").
    pub utc_offset: Option<String>,
}

/// `[[alerts.webhooks]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertHookFile {
    /// A short name: letters, digits, '-', '_' (its delivery checkpoint).
    pub name: String,
    pub url: String,
    /// A file holding the signing secret, or two (one per line) while
    /// rotating; each at least 16 bytes.
    pub secret_file: PathBuf,
}

/// `[integrations]`: how patient the tenant event feed is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationsFile {
    /// A feed whose consumer reads nothing for this long is cut off with
    /// RESOURCE_EXHAUSTED naming its resume token (default 60, 1 to 3600).
    pub feed_stall_secs: Option<u64>,
    /// A live feed this many positions behind the head is told it fell
    /// behind (default 10000, at least 1).
    pub feed_behind_positions: Option<u64>,
    /// Whether this node delivers webhooks (default true; in a cluster,
    /// exactly one node should).
    pub deliver_webhooks: Option<bool>,
    /// Webhook endpoints at private and other internal addresses (an
    /// endpoint inside the operator's network; default false).
    pub allow_private_addresses: Option<bool>,
    /// Webhook endpoints at loopback addresses, plain http:// to them
    /// (tests and development only; default false).
    pub allow_loopback: Option<bool>,
    /// The first retry's delay in ms (default 5000, 100 to 60000).
    pub webhook_first_retry_ms: Option<u64>,
    /// Attempts in flight at once per endpoint (default 8, 1 to 64).
    pub webhook_max_in_flight: Option<usize>,
    /// Events queued per endpoint before its feed waits (default 1000,
    /// 10 to 100000).
    pub webhook_max_queued: Option<usize>,
    /// Integration events the shared reader keeps for the endpoints'
    /// workers (default 32768, 16 to 1000000); a worker further behind
    /// reads its own feed until it catches up.
    pub webhook_ring_entries: Option<usize>,
    /// A PEM CA certificate trusted for endpoints besides the system's
    /// roots (an internal CA).
    pub webhook_ca_file: Option<PathBuf>,
}

/// `[telemetry]`: the log format and where traces go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// "text" (default) or "json".
    pub log_format: Option<crate::telemetry::LogFormat>,
    /// An OTLP/gRPC collector (`http://collector:4317`); none: no traces.
    pub otlp_endpoint: Option<String>,
    /// The CA certificate (PEM) of an `https` collector.
    pub otlp_ca_cert: Option<PathBuf>,
    /// The share of requests traced, 0 to 1 (default: every one, or
    /// what `OTEL_TRACES_SAMPLER` says).
    pub trace_sample_ratio: Option<f64>,
}

/// `[client]`: the server the client commands reach, and how.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// `https://host:port` (or `http://127.0.0.1:port`).
    pub url: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate.
    pub ca_cert: Option<PathBuf>,
    /// A file holding the platform admin key.
    pub admin_key_file: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and checks a configuration file (unknown keys refused by name).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        read_file(path)
    }
}

/// TLS for gRPC and HTTP: a PEM certificate chain and its PEM private key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    /// Largest upload in bytes.
    pub max_bytes: Option<u64>,
    /// Content types an upload may declare (lower case, no parameters).
    pub allowed_types: Option<Vec<String>>,
    /// A chunk must arrive within this many seconds of the last.
    pub upload_idle_secs: Option<u64>,
    /// How often incomplete uploads and unconfirmed blobs are swept.
    pub sweep_secs: Option<u64>,
    /// "file" (the data directory, the default) or "s3" (the `s3` build feature).
    pub store: Option<String>,
    #[serde(default)]
    pub s3: S3File,
    /// Per-tenant limits: `[[media.tenant]] id = "...", max_bytes = ...`.
    #[serde(default)]
    pub tenant: Vec<MediaTenantFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3File {
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub allow_http: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaTenantFile {
    pub id: String,
    pub max_bytes: Option<u64>,
    pub allowed_types: Option<Vec<String>>,
}

pub use app::media::{BlobStoreConfig, DEFAULT_MEDIA_MAX_BYTES, DEFAULT_MEDIA_TYPES, MediaConfig, MediaPolicy};
/// The most any config may allow: 4 GiB (4096 chunks of 1 MiB).
pub const MEDIA_MAX_BYTES_LIMIT: u64 = 4 << 30;

fn media_types(what: &str, types: Option<Vec<String>>, default: &[String]) -> anyhow::Result<Vec<String>> {
    let Some(types) = types else { return Ok(default.to_vec()) };
    for t in &types {
        let ok = t.len() <= 127
            && t.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$&-^_.+".contains(&c))
                };
                token(a) && token(b)
            });
        if !ok {
            anyhow::bail!("{what}: {t:?} is not a lower-case media type such as \"image/png\"");
        }
    }
    Ok(types)
}

fn media_max(what: &str, max: Option<u64>, default: u64) -> anyhow::Result<u64> {
    let max = max.unwrap_or(default);
    if !(1..=MEDIA_MAX_BYTES_LIMIT).contains(&max) {
        anyhow::bail!("{what}: {max}; 1 to {MEDIA_MAX_BYTES_LIMIT} (4 GiB)");
    }
    Ok(max)
}

fn media_config(file: MediaFile) -> anyhow::Result<MediaConfig> {
    let defaults: Vec<String> = DEFAULT_MEDIA_TYPES.iter().map(|t| t.to_string()).collect();
    let default = MediaPolicy {
        max_bytes: media_max("media.max_bytes", file.max_bytes, DEFAULT_MEDIA_MAX_BYTES)?,
        allowed_types: media_types("media.allowed_types", file.allowed_types, &defaults)?,
    };
    let mut tenants = std::collections::HashMap::new();
    for t in file.tenant {
        let id = uuid::Uuid::parse_str(&t.id)
            .map_err(|_| anyhow::anyhow!("media.tenant: id {:?} is not a tenant id (a UUID)", t.id))?;
        let policy = MediaPolicy {
            max_bytes: media_max("media.tenant.max_bytes", t.max_bytes, default.max_bytes)?,
            allowed_types: media_types("media.tenant.allowed_types", t.allowed_types, &default.allowed_types)?,
        };
        if tenants.insert(id, policy).is_some() {
            anyhow::bail!("media.tenant: tenant {id} is listed twice");
        }
    }
    let upload_idle_secs = file.upload_idle_secs.unwrap_or(60);
    if !(1..=3600).contains(&upload_idle_secs) {
        anyhow::bail!("media.upload_idle_secs: {upload_idle_secs}; 1 to 3600");
    }
    let sweep_secs = file.sweep_secs.unwrap_or(300);
    if !(1..=86_400).contains(&sweep_secs) {
        anyhow::bail!("media.sweep_secs: {sweep_secs}; 1 to 86400");
    }
    let store = match file.store.as_deref().unwrap_or("file") {
        "file" => BlobStoreConfig::File,
        "s3" => {
            let bucket =
                file.s3.bucket.filter(|b| !b.is_empty()).ok_or_else(|| {
                    anyhow::anyhow!("media.s3.bucket: the bucket is needed when media.store = \"s3\"")
                })?;
            BlobStoreConfig::S3 {
                bucket,
                endpoint: file.s3.endpoint.unwrap_or_default(),
                region: file.s3.region.unwrap_or_default(),
                prefix: file.s3.prefix.unwrap_or_default(),
                allow_http: file.s3.allow_http.unwrap_or(false),
            }
        }
        other => anyhow::bail!("media.store: {other:?}; \"file\" or \"s3\""),
    };
    Ok(MediaConfig { default, tenants, upload_idle_secs, sweep_secs, store })
}

fn feed_limits(file: &IntegrationsFile) -> anyhow::Result<app::feed::FeedLimits> {
    let default = app::feed::FeedLimits::default();
    let stall = file.feed_stall_secs.unwrap_or(default.stall.as_secs());
    if !(1..=3600).contains(&stall) {
        anyhow::bail!("integrations.feed_stall_secs: {stall}; 1 to 3600");
    }
    let behind_positions = file.feed_behind_positions.unwrap_or(default.behind_positions);
    if behind_positions == 0 {
        anyhow::bail!("integrations.feed_behind_positions: 0; at least 1");
    }
    Ok(app::feed::FeedLimits {
        stall: std::time::Duration::from_secs(stall),
        behind_positions,
        coalesce: std::time::Duration::ZERO,
    })
}

fn webhook_settings(file: &IntegrationsFile) -> anyhow::Result<(app::delivery::WebhookSettings, Option<Vec<u8>>)> {
    let d = app::delivery::WebhookSettings::default();
    let first = file.webhook_first_retry_ms.unwrap_or(d.first_retry.as_millis() as u64);
    if !(100..=60_000).contains(&first) {
        anyhow::bail!("integrations.webhook_first_retry_ms: {first}; 100 to 60000");
    }
    let max_in_flight = file.webhook_max_in_flight.unwrap_or(d.max_in_flight);
    if !(1..=64).contains(&max_in_flight) {
        anyhow::bail!("integrations.webhook_max_in_flight: {max_in_flight}; 1 to 64");
    }
    let max_queued = file.webhook_max_queued.unwrap_or(d.max_queued);
    if !(10..=100_000).contains(&max_queued) {
        anyhow::bail!("integrations.webhook_max_queued: {max_queued}; 10 to 100000");
    }
    let ring_entries = file.webhook_ring_entries.unwrap_or(d.ring_entries);
    if !(16..=1_000_000).contains(&ring_entries) {
        anyhow::bail!("integrations.webhook_ring_entries: {ring_entries}; 16 to 1000000");
    }
    let ca = match &file.webhook_ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("integrations.webhook_ca_file: {}", p.display()))?),
        None => None,
    };
    let settings = app::delivery::WebhookSettings {
        deliver: file.deliver_webhooks.unwrap_or(true),
        policy: webhooks::target::Policy {
            allow_private: file.allow_private_addresses.unwrap_or(false),
            allow_loopback: file.allow_loopback.unwrap_or(false),
        },
        limits: webhooks::deliver::Limits { idle_connections_per_host: max_in_flight, ..d.limits },
        first_retry: std::time::Duration::from_millis(first),
        max_in_flight,
        max_queued,
        ring_entries,
    };
    Ok((settings, ca))
}

fn alert_settings(
    file: &AlertsFile,
) -> anyhow::Result<(app::alerts::AlertSettings, webhooks::target::Policy, Option<Vec<u8>>)> {
    use app::alert_rules::{AlertRules, Hours};
    let d = AlertRules::default();
    let mut rules = AlertRules {
        break_glass_opened: file.break_glass_opened.unwrap_or(d.break_glass_opened),
        content_subjects_per_hour: file.content_subjects_per_hour.unwrap_or(d.content_subjects_per_hour),
        refusals_per_minute: file.refusals_per_minute.unwrap_or(d.refusals_per_minute),
        bulk_export: file.bulk_export.unwrap_or(d.bulk_export),
        tenant_hours: Default::default(),
    };
    for (i, h) in file.tenant_hours.iter().enumerate() {
        let tenant = uuid::Uuid::parse_str(h.tenant.trim()).map_err(|_| {
            anyhow::anyhow!("alerts.tenant_hours[{i}].tenant {:?} is not a tenant id (a UUID)", h.tenant)
        })?;
        let hours = Hours::parse(
            h.days.as_deref().unwrap_or("mon-fri"),
            &h.from,
            &h.to,
            h.utc_offset.as_deref().unwrap_or("Z"),
        )
        .map_err(|e| anyhow::anyhow!("alerts.tenant_hours[{i}] (tenant {tenant}): {e}"))?;
        if rules.tenant_hours.insert(tenant, hours).is_some() {
            anyhow::bail!("alerts.tenant_hours[{i}]: tenant {tenant} is listed twice");
        }
    }
    let first = file.first_retry_ms.unwrap_or(webhooks::backoff::FIRST.as_millis() as u64);
    if !(100..=60_000).contains(&first) {
        anyhow::bail!("alerts.first_retry_ms: {first}; 100 to 60000");
    }
    let policy = webhooks::target::Policy {
        allow_private: file.allow_private_addresses.unwrap_or(true),
        allow_loopback: file.allow_loopback.unwrap_or(false),
    };
    let mut hooks: Vec<app::alerts::AlertHook> = Vec::new();
    for (i, h) in file.webhooks.iter().enumerate() {
        let at = format!("alerts.webhooks[{i}] ({})", h.name);
        if h.name.is_empty()
            || h.name.len() > 64
            || !h.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!("{at}: name: 1 to 64 letters, digits, '-' or '_'");
        }
        if hooks.iter().any(|o| o.name == h.name) {
            anyhow::bail!("{at}: the name is used twice");
        }
        webhooks::target::check_url(&h.url, policy).map_err(|e| anyhow::anyhow!("{at}: url: {e}"))?;
        let text = std::fs::read_to_string(&h.secret_file)
            .with_context(|| format!("{at}: secret_file {}", h.secret_file.display()))?;
        let secrets: Vec<Vec<u8>> =
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec()).collect();
        if secrets.is_empty() || secrets.len() > 2 || secrets.iter().any(|s| s.len() < 16) {
            anyhow::bail!(
                "{at}: secret_file {} holds one secret (or two, one per line, while rotating) of at least 16 bytes",
                h.secret_file.display()
            );
        }
        hooks.push(app::alerts::AlertHook { name: h.name.clone(), url: h.url.clone(), secrets });
    }
    let ca = match &file.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("alerts.ca_file: {}", p.display()))?),
        None => None,
    };
    let settings = app::alerts::AlertSettings {
        enabled: file.enabled.unwrap_or(true),
        rules,
        hooks,
        first_retry: std::time::Duration::from_millis(first),
    };
    Ok((settings, policy, ca))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Listen without TLS off loopback, because a service mesh (a sidecar
    /// on the same host) terminates TLS in front of pypes. Logged as an
    /// error at every start and shown in /metrics (`pypes_tls_disabled`).
    #[serde(default)]
    pub plaintext_behind_mesh: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    /// Seconds between two points of the overview's charts (default 10;
    /// the charts hold an hour of them).
    pub sample_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// An end user's auth session ends after this long unused (default 1800).
    pub idle_secs: Option<i64>,
    /// ... and this long after login whatever the use (default 43200).
    pub lifetime_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyFile {
    /// Analytics cells with fewer Sessions are suppressed (default 5).
    pub analytics_k: Option<u64>,
    /// Age in days at which an open erasure request is reported (default 20).
    pub erasure_warn_days: Option<u32>,
    /// Seconds between runs of the retention and offboarding scheduler (default 600).
    pub sweep_secs: Option<u64>,
    /// Days between a tenant's cancellation and the shred of its KEK (default 30).
    pub offboarding_grace_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsFile {
    pub idle_secs: Option<u64>,
    pub max_actors: Option<usize>,
    pub arbiters: Option<usize>,
    /// A snapshot of a Session or subject every this many events (0: none).
    pub snapshot_every: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    pub rotation_days: Option<i64>,
    /// "file" (default) or "postgres" (the default when the log is on
    /// PostgreSQL).
    pub backend: Option<String>,
    /// The key store's database (default: `log.url` when both are on
    /// PostgreSQL).
    pub url: Option<String>,
    /// The root-key provider's epochs (default: `keys.url`). Put them on a
    /// cluster that is not backed up or WAL-archived (docs/backends.md).
    pub provider_url: Option<String>,
    /// With the file key store: the embedded provider's directory (default
    /// `<data_dir>/provider`). Keep it on another volume than the data,
    /// never in a backup, so a restored data directory finds the live
    /// epochs (docs/operations.md).
    pub provider_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFile {
    /// PostgreSQL database for the SQL read models (docs/sql.md); none
    /// when unset.
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// "file" (default), "postgres" or "kurrentdb".
    pub backend: Option<String>,
    /// The database: a PostgreSQL URL or libpq string, or a KurrentDB
    /// connection string (`esdb://` or `kurrentdb://`).
    pub url: Option<String>,
    /// The file log's witness: a directory on another volume that keeps a
    /// second copy of the signed head (docs/security.md).
    pub witness_dir: Option<PathBuf>,
    /// The file log's segment size in MiB (1 to 1024, default 256).
    pub segment_mib: Option<u64>,
}

/// Where the event log lives.
#[derive(Clone, PartialEq, Eq)]
pub enum LogBackend {
    /// The embedded file log in `<data>/log`, with the witness's copy of
    /// its signed head in `witness_dir` when one is configured.
    File {
        witness_dir: Option<PathBuf>,
        /// Bytes after which the writer starts a new segment (None: the
        /// file log's default, 256 MiB).
        segment_size: Option<u64>,
    },
    Postgres {
        url: String,
    },
    KurrentDb {
        url: String,
    },
}

/// Where the key store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum KeysBackend {
    /// The embedded store in `<data>/keys`, its provider's state in
    /// `provider_dir` (default `<data>/provider`).
    File { provider_dir: Option<PathBuf> },
    /// Key store and provider epochs in PostgreSQL, shared by every node.
    Postgres { url: String, provider_url: String },
}

impl std::fmt::Display for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::fmt::Display for KeysBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

// URLs may hold passwords: debug output shows them redacted.
impl std::fmt::Debug for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { witness_dir, segment_size } => {
                f.write_str("file")?;
                if let Some(w) = witness_dir {
                    write!(f, " (witness in {})", w.display())?;
                }
                match segment_size {
                    Some(size) => write!(f, " ({} MiB segments)", size >> 20),
                    None => Ok(()),
                }
            }
            Self::Postgres { url } => write!(f, "postgres ({})", eventlog::redact_url(url)),
            Self::KurrentDb { url } => write!(f, "kurrentdb ({})", eventlog::redact_url(url)),
        }
    }
}

impl std::fmt::Debug for KeysBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { provider_dir: None } => f.write_str("file"),
            Self::File { provider_dir: Some(p) } => write!(f, "file (provider in {})", p.display()),
            Self::Postgres { url, provider_url } if url == provider_url => {
                write!(f, "postgres ({})", eventlog::redact_url(url))
            }
            Self::Postgres { url, provider_url } => {
                write!(f, "postgres ({}; epochs in {})", eventlog::redact_url(url), eventlog::redact_url(provider_url))
            }
        }
    }
}

/// The backends from flags and environment, then the config file.
pub fn backends(args: &BackendArgs, log: LogFile, keys: &KeysFile) -> anyhow::Result<(LogBackend, KeysBackend)> {
    let url = |what: &str, given: Option<String>, example: &str| -> anyhow::Result<String> {
        given.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "{what}.url: needed for this backend (e.g. {example}); or set PYPES_{}_URL",
                what.to_uppercase()
            )
        })
    };
    let log_url = args.log_url.clone().or(log.url);
    let log_backend = match args.log_backend.clone().or(log.backend).as_deref().unwrap_or("file") {
        "file" => LogBackend::File {
            witness_dir: args.log_witness_dir.clone().or(log.witness_dir),
            segment_size: match args.log_segment_mib.or(log.segment_mib) {
                Some(mib @ 1..=1024) => Some(mib << 20),
                Some(other) => anyhow::bail!("log.segment_mib: {other}; a segment is 1 to 1024 MiB"),
                None => None,
            },
        },
        "postgres" => LogBackend::Postgres { url: url("log", log_url.clone(), "\"postgres://pypes@db/pypes\"")? },
        "kurrentdb" => LogBackend::KurrentDb { url: url("log", log_url.clone(), "\"esdb://db:2113?tls=false\"")? },
        other => anyhow::bail!("log.backend: {other:?}; \"file\", \"postgres\" or \"kurrentdb\""),
    };
    let keys_default = if matches!(log_backend, LogBackend::Postgres { .. }) { "postgres" } else { "file" };
    let keys_backend = match args.keys_backend.clone().or(keys.backend.clone()).as_deref().unwrap_or(keys_default) {
        "file" => KeysBackend::File { provider_dir: args.keys_provider_dir.clone().or(keys.provider_dir.clone()) },
        "postgres" => {
            let given = args.keys_url.clone().or(keys.url.clone());
            let fallback = matches!(log_backend, LogBackend::Postgres { .. }).then_some(log_url).flatten();
            let url = url("keys", given.or(fallback), "\"postgres://pypes@db/pypes\"")?;
            let provider_url = args
                .keys_provider_url
                .clone()
                .or(keys.provider_url.clone())
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| url.clone());
            KeysBackend::Postgres { url, provider_url }
        }
        "kurrentdb" => anyhow::bail!(
            "keys.backend: \"kurrentdb\" is not offered: an erasure must destroy a key at once, and an event \
             store deletes only by scavenging later; use \"file\" or \"postgres\""
        ),
        other => anyhow::bail!("keys.backend: {other:?}; \"file\" or \"postgres\""),
    };
    Ok((log_backend, keys_backend))
}

/// Where the log and the keys are (flags of `serve`, `replay` and `audit`;
/// each also read from the environment).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct BackendArgs {
    /// Event log backend: file (default), postgres or kurrentdb.
    #[arg(long, env = "PYPES_LOG_BACKEND")]
    pub log_backend: Option<String>,
    /// The event log's database URL (for postgres and kurrentdb).
    #[arg(long, env = "PYPES_LOG_URL", hide_env_values = true)]
    pub log_url: Option<String>,
    /// The file log's witness directory (on another volume): a second copy
    /// of the signed head, checked at open and by `audit verify`.
    #[arg(long, env = "PYPES_LOG_WITNESS_DIR")]
    pub log_witness_dir: Option<PathBuf>,
    /// The file log's segment size in MiB (1 to 1024; default 256). Only
    /// when the writer rolls: segments already written keep their size.
    #[arg(long, env = "PYPES_LOG_SEGMENT_MIB")]
    pub log_segment_mib: Option<u64>,
    /// Key store backend: file, or postgres (the default with a postgres log).
    #[arg(long, env = "PYPES_KEYS_BACKEND")]
    pub keys_backend: Option<String>,
    /// The key store's database URL (default: the log's, when both are postgres).
    #[arg(long, env = "PYPES_KEYS_URL", hide_env_values = true)]
    pub keys_url: Option<String>,
    /// Where the root-key provider's epochs live (default: the key store's
    /// database); a cluster without backups or WAL archiving.
    #[arg(long, env = "PYPES_KEYS_PROVIDER_URL", hide_env_values = true)]
    pub keys_provider_url: Option<String>,
    /// The file key store's provider directory (default <data-dir>/provider),
    /// kept out of the data directory's backups.
    #[arg(long, env = "PYPES_KEYS_PROVIDER_DIR")]
    pub keys_provider_dir: Option<PathBuf>,
}

/// The backends an offline tool (`replay`, `audit verify|trail`) reads:
/// the flags and environment `serve` takes, over the `[log]` and `[keys]`
/// sections of the same configuration file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ToolBackendArgs {
    /// TOML configuration file (its [log] and [keys] sections).
    #[arg(long, env = "PYPES_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub backends: BackendArgs,
}

impl ToolBackendArgs {
    /// The data directory: given (flag or `PYPES_DATA_DIR`), else the
    /// config file's `data_dir`, else `./data`.
    pub fn data_dir(&self, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        if let Some(d) = given {
            return Ok(d);
        }
        let from_file = match &self.config {
            Some(path) => read_file(path)?.data_dir,
            None => None,
        };
        Ok(from_file.unwrap_or_else(|| PathBuf::from("./data")))
    }

    pub fn resolve(&self) -> anyhow::Result<(LogBackend, KeysBackend)> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        backends(&self.backends, file.log, &file.keys)
    }
}

/// `pypes serve` flags (each also read from the environment).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "PYPES_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the event log, key store and (in development) root key live.
    #[arg(long, env = "PYPES_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, host:port with an IP address or a host name
    /// (port 0 picks a free port; the real one is printed).
    #[arg(long, env = "PYPES_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// HTTP listen address for /healthz, /readyz and /metrics (host:port).
    #[arg(long, env = "PYPES_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// The platform admin key (default: made once into <data>/admin.key).
    #[arg(long, env = "PYPES_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Seconds after which an unused actor stops.
    #[arg(long, env = "PYPES_ACTOR_IDLE_SECS")]
    pub actor_idle_secs: Option<u64>,
    /// Live actors per kind, at most.
    #[arg(long, env = "PYPES_MAX_ACTORS")]
    pub max_actors: Option<usize>,
    /// A snapshot of a Session or subject every this many events (0: none;
    /// default 256).
    #[arg(long, env = "PYPES_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// TLS certificate chain (PEM) for gRPC and HTTP; with --tls-key.
    #[arg(long, env = "PYPES_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "PYPES_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Listen without TLS on a non-loopback address because a service mesh
    /// terminates TLS in front of pypes (logged as an error at every start).
    #[arg(long, env = "PYPES_PLAINTEXT_BEHIND_MESH")]
    pub plaintext_behind_mesh: bool,
    /// Send traces to this OTLP/gRPC collector (http://collector:4317).
    #[arg(long, env = "PYPES_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The CA certificate (PEM) of an https OTLP collector.
    #[arg(long, env = "PYPES_OTLP_CA_CERT")]
    pub otlp_ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub backends: BackendArgs,
    /// PostgreSQL database to keep the SQL read models in (docs/sql.md).
    #[arg(long, env = "PYPES_SQL_URL", hide_env_values = true)]
    pub sql_url: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_key: Option<String>,
    pub actor_idle_secs: u64,
    pub max_actors: usize,
    pub arbiters: usize,
    pub snapshot_every: u64,
    pub rotation_days: i64,
    pub analytics_k: u64,
    pub erasure_warn_days: u32,
    pub sweep_secs: u64,
    pub offboarding_grace_days: u32,
    pub auth: app::end_user_auth::AuthConfig,
    /// Seconds between two samples of the console's metrics history.
    pub console_sample_secs: u64,
    /// (certificate chain, private key) PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub media: MediaConfig,
    pub log: LogBackend,
    pub keys: KeysBackend,
    /// The SQL read models' database, if any.
    pub sql_url: Option<String>,
    /// Plaintext off loopback, TLS terminated by a mesh in front.
    pub plaintext_behind_mesh: bool,
    /// The log format and the trace exporter.
    pub telemetry: crate::telemetry::Telemetry,
    /// The tenant event feed's limits.
    pub feed: app::feed::FeedLimits,
    /// Webhook delivery, and the extra CA (PEM) its client trusts.
    pub webhooks: (app::delivery::WebhookSettings, Option<Vec<u8>>),
    /// The access alerts, their webhooks' destination policy and extra CA.
    pub alerts: (app::alerts::AlertSettings, webhooks::target::Policy, Option<Vec<u8>>),
    /// Data residency (`None`: no regions, one data directory for all).
    pub regions: Option<RegionsConfig>,
}

impl Config {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let (log, keys) = backends(&args.backends, file.log, &file.keys)?;
        let mut data_dir = args.data_dir.clone().or(file.data_dir);
        let regions = match &file.regions {
            Some(t) => Some(regions_config(t, &mut data_dir)?),
            None => None,
        };
        let config = Config {
            regions,
            log,
            keys,
            sql_url: args.sql_url.clone().or(file.sql.url).filter(|u| !u.trim().is_empty()),
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            grpc_addr: listen_addr("grpc_addr", args.grpc_addr.clone().or(file.grpc_addr), 50051)?,
            http_addr: listen_addr("http_addr", args.http_addr.clone().or(file.http_addr), 8080)?,
            admin_key: args.admin_key.clone().or(file.admin_key),
            plaintext_behind_mesh: args.plaintext_behind_mesh || file.tls.plaintext_behind_mesh,
            telemetry: crate::telemetry::Telemetry {
                log_format: file.telemetry.log_format.unwrap_or_default(),
                otlp: match (
                    args.otlp_endpoint.clone().or(file.telemetry.otlp_endpoint).filter(|e| !e.trim().is_empty()),
                    args.otlp_ca_cert.clone().or(file.telemetry.otlp_ca_cert),
                ) {
                    (Some(endpoint), ca_cert) => Some(crate::telemetry::Otlp {
                        endpoint,
                        ca_cert,
                        sample_ratio: file.telemetry.trace_sample_ratio,
                    }),
                    (None, Some(_)) => anyhow::bail!(
                        "telemetry.otlp_ca_cert is set without telemetry.otlp_endpoint; give the collector's URL"
                    ),
                    (None, None) => None,
                },
            },
            actor_idle_secs: args.actor_idle_secs.or(file.actors.idle_secs).unwrap_or(300),
            max_actors: args.max_actors.or(file.actors.max_actors).unwrap_or(100_000),
            snapshot_every: args.snapshot_every.or(file.actors.snapshot_every).unwrap_or(256),
            arbiters: file
                .actors
                .arbiters
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            rotation_days: file.keys.rotation_days.unwrap_or(7),
            analytics_k: file.privacy.analytics_k.unwrap_or(projections::analytics::DEFAULT_K),
            erasure_warn_days: file.privacy.erasure_warn_days.unwrap_or(20),
            sweep_secs: file.privacy.sweep_secs.unwrap_or(600),
            console_sample_secs: file.console.sample_secs.unwrap_or(10),
            offboarding_grace_days: file.privacy.offboarding_grace_days.unwrap_or(30),
            tls: match (args.tls_cert.clone().or(file.tls.cert_file), args.tls_key.clone().or(file.tls.key_file)) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => anyhow::bail!("tls: a certificate without a key; give tls.key_file (or --tls-key)"),
                (None, Some(_)) => {
                    anyhow::bail!("tls: a key without a certificate; give tls.cert_file (or --tls-cert)")
                }
            },
            media: media_config(file.media)?,
            feed: feed_limits(&file.integrations)?,
            webhooks: webhook_settings(&file.integrations)?,
            alerts: alert_settings(&file.alerts)?,
            auth: app::end_user_auth::AuthConfig {
                idle_secs: file.auth.idle_secs.unwrap_or(30 * 60),
                lifetime_secs: file.auth.lifetime_secs.unwrap_or(12 * 3600),
            },
        };
        if config.tls.is_some() && config.plaintext_behind_mesh {
            anyhow::bail!(
                "tls.plaintext_behind_mesh is set with a TLS certificate: pick one (the mesh's TLS, or pypes' own)"
            );
        }
        if config.tls.is_none() && !config.plaintext_behind_mesh {
            for (name, addr) in [("grpc_addr", config.grpc_addr), ("http_addr", config.http_addr)] {
                if !addr.ip().is_loopback() {
                    anyhow::bail!(
                        "{name} {addr} is not a loopback address: without TLS pypes listens on loopback only; \
                         give tls.cert_file and tls.key_file (or --tls-cert and --tls-key), or listen on 127.0.0.1 \
                         (behind a service mesh that terminates TLS: tls.plaintext_behind_mesh)"
                    );
                }
            }
        }
        if !(1..=60).contains(&config.console_sample_secs) {
            anyhow::bail!("console.sample_secs: {}; 1 to 60", config.console_sample_secs);
        }
        if !(1..=86_400).contains(&config.sweep_secs) {
            anyhow::bail!("privacy.sweep_secs: {}; 1 to 86400", config.sweep_secs);
        }
        if config.offboarding_grace_days > 365 {
            anyhow::bail!("privacy.offboarding_grace_days: {}; at most 365", config.offboarding_grace_days);
        }
        if !(60..=86_400).contains(&config.auth.idle_secs) {
            anyhow::bail!("auth.idle_secs: {}; 60 to 86400", config.auth.idle_secs);
        }
        if !(config.auth.idle_secs..=30 * 86_400).contains(&config.auth.lifetime_secs) {
            anyhow::bail!(
                "auth.lifetime_secs: {}; from auth.idle_secs ({}) to 30 days",
                config.auth.lifetime_secs,
                config.auth.idle_secs
            );
        }
        if config.analytics_k < 2 {
            anyhow::bail!(
                "privacy.analytics_k: {}; at least 2 (a cell of one Session is one person)",
                config.analytics_k
            );
        }
        if !(1..30).contains(&config.erasure_warn_days) {
            anyhow::bail!("privacy.erasure_warn_days: {}; 1 to 29 (requests are due at 30)", config.erasure_warn_days);
        }
        if let Some(key) = &config.admin_key
            && key.len() < 32
        {
            anyhow::bail!("admin_key: {} characters; at least 32 (e.g. 64 hex digits)", key.len());
        }
        if config.actor_idle_secs == 0 || config.max_actors == 0 || config.arbiters == 0 {
            anyhow::bail!("actors: idle_secs, max_actors and arbiters must be above zero");
        }
        keystore::validate_rotation_period(config.rotation_days.saturating_mul(86_400))
            .map_err(|e| anyhow::anyhow!("keys.rotation_days: {e}"))?;
        Ok(config)
    }
}

/// `PYPES_*` variables pypes reads outside its flags (the root key and the
/// log signing key, docs/keys.md).
const OTHER_ENV: &[&str] = &["PYPES_ROOT_KEY", "PYPES_LOG_SIGNING_KEY"];

/// `PYPES_*` variables of pypes' own tests, benchmarks and CI; a server
/// started by them sees them and ignores them (the test hooks read the
/// last two only in builds with the `test-hooks` feature).
const HARNESS_ENV: &[&str] = &[
    "PYPES_BIN",
    "PYPES_BLESS",
    "PYPES_CRASH_RESTARTS",
    "PYPES_PG_BIN",
    "PYPES_REQUIRE_POSTGRES",
    "PYPES_REQUIRE_BROWSER",
    "PYPES_REQUIRE_ROOT",
    "PYPES_CHROMIUM",
    "PYPES_CRASH_AT",
    "PYPES_DEV_CLOCK_OFFSET_FILE",
];

/// Refuses a `PYPES_*` environment variable pypes does not know (a
/// misspelt `PYPES_GRPC_ADR` would otherwise be ignored and the default
/// used), naming the closest known one. `known` are the names the
/// command line reads; `PYPES_TEST_*` belong to the test harness.
pub fn check_environment(vars: impl IntoIterator<Item = String>, known: &[String]) -> anyhow::Result<()> {
    let all: Vec<&str> = known.iter().map(String::as_str).chain(OTHER_ENV.iter().copied()).collect();
    let mut unknown: Vec<String> = vars
        .into_iter()
        .filter(|v| v.starts_with("PYPES_") && !v.starts_with("PYPES_TEST_"))
        .filter(|v| !all.contains(&v.as_str()) && !HARNESS_ENV.contains(&v.as_str()))
        .collect();
    unknown.sort();
    let Some(first) = unknown.first() else { return Ok(()) };
    let closest = all.iter().min_by_key(|k| edit_distance(first, k)).copied().unwrap_or("PYPES_DATA_DIR");
    let more = if unknown.len() > 1 {
        format!(" (and {} more: {})", unknown.len() - 1, unknown[1..].join(", "))
    } else {
        String::new()
    };
    anyhow::bail!(
        "environment variable {first} is not a pypes setting{more}; did you mean {closest}? \
         Unset it or correct its name (`pypes serve --help` lists every variable)"
    )
}

/// Levenshtein distance (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A listen address from `host:port` (an IP address or a host name, the
/// first address it resolves to); default 127.0.0.1:`port`.
fn listen_addr(name: &str, text: Option<String>, port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let Some(text) = text else { return Ok(SocketAddr::from(([127, 0, 0, 1], port))) };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.contains("://") {
        anyhow::bail!("{name} {text:?}: a listen address is host:port, without a scheme (e.g. 0.0.0.0:{port})");
    }
    if text.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
        anyhow::bail!("{name} {text:?}: give host:port, e.g. 127.0.0.1:{port}");
    }
    // The config-file fuzz target (fuzz/) asks no resolver.
    if cfg!(fuzzing) {
        anyhow::bail!("{name} {text:?}: not resolved while fuzzing");
    }
    let mut addrs =
        text.to_socket_addrs().map_err(|e| anyhow::anyhow!("{name} {text:?}: the host name does not resolve ({e})"))?;
    addrs.next().ok_or_else(|| anyhow::anyhow!("{name} {text:?}: the host name resolves to no address"))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(config: &Path, backends: BackendArgs) -> anyhow::Result<Config> {
        Config::resolve(&ServeArgs { config: Some(config.to_path_buf()), backends, ..ServeArgs::default() })
    }

    /// The configuration deploy/k8s ships is one the server accepts, and
    /// it selects the PostgreSQL backends with the URLs from the Secret.
    #[test]
    fn deploy_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/pypes.toml");
        let urls = BackendArgs {
            log_url: Some("host=db password=pw dbname=pypes".into()),
            keys_provider_url: Some("host=epochs dbname=epochs".into()),
            ..BackendArgs::default()
        };
        let config = with(&path, urls).unwrap();
        assert!(matches!(&config.log, LogBackend::Postgres { url } if url.contains("host=db")));
        match &config.keys {
            KeysBackend::Postgres { url, provider_url } => {
                assert!(url.contains("host=db"), "the key store defaults to the log's database");
                assert!(provider_url.contains("host=epochs"));
            }
            other => panic!("{other:?}"),
        }
        assert!(config.tls.is_some(), "non-loopback nodes need TLS");
        assert!(!format!("{:?}", config.log).contains("pw"), "no password in debug output");
    }

    #[test]
    fn unknown_environment_variables_are_refused_with_the_closest_name() {
        let known = vec!["PYPES_GRPC_ADDR".to_string(), "PYPES_HTTP_ADDR".to_string(), "PYPES_DATA_DIR".to_string()];
        let e = check_environment(["PYPES_GRPC_ADR".to_string(), "HOME".into()], &known).unwrap_err().to_string();
        assert!(
            e.contains("PYPES_GRPC_ADR is not a pypes setting") && e.contains("did you mean PYPES_GRPC_ADDR"),
            "{e}"
        );
        for fine in ["PYPES_DATA_DIR", "PYPES_ROOT_KEY", "PYPES_TEST_BACKEND", "PYPES_REQUIRE_POSTGRES", "PATH"] {
            check_environment([fine.to_string()], &known).unwrap();
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn listen_addresses_take_host_names_and_name_what_is_wrong() {
        assert_eq!(listen_addr("grpc_addr", None, 50051).unwrap(), SocketAddr::from(([127, 0, 0, 1], 50051)));
        assert!(listen_addr("grpc_addr", Some("localhost:7".into()), 1).unwrap().ip().is_loopback());
        assert_eq!(listen_addr("grpc_addr", Some("[::1]:7".into()), 1).unwrap().port(), 7);
        for (bad, says) in
            [("http://0.0.0.0:1", "without a scheme"), ("localhost", "give host:port"), ("h:x", "give host:port")]
        {
            let e = listen_addr("grpc_addr", Some(bad.into()), 1).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn backends_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let cases = [
            ("[log]\nbackend = \"postgres\"\n", "log.url: needed"),
            ("[log]\nbackend = \"oracle\"\n", "log.backend: \"oracle\""),
            ("[keys]\nbackend = \"kurrentdb\"\n", "is not offered"),
            ("[log]\nbackend = \"kurrentdb\"\n", "log.url: needed"),
            ("[log]\nsegment_mib = 0\n", "log.segment_mib: 0; a segment is 1 to 1024 MiB"),
            ("[log]\nsegment_mib = 2048\n", "log.segment_mib: 2048"),
        ];
        for (text, expected) in cases {
            std::fs::write(&file, text).unwrap();
            let e = with(&file, BackendArgs::default()).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
        std::fs::write(&file, "[keys]\nbackend = \"postgres\"\n").unwrap();
        let e = with(&file, BackendArgs::default()).unwrap_err().to_string();
        assert!(e.contains("keys.url: needed"), "{e}");
        std::fs::write(&file, "").unwrap();
        let config = with(&file, BackendArgs::default()).unwrap();
        assert_eq!(
            (config.log, config.keys),
            (LogBackend::File { witness_dir: None, segment_size: None }, KeysBackend::File { provider_dir: None }),
            "embedded by default"
        );
        std::fs::write(&file, "[log]\nsegment_mib = 4\n").unwrap();
        let config = with(&file, BackendArgs::default()).unwrap();
        assert_eq!(config.log, LogBackend::File { witness_dir: None, segment_size: Some(4 << 20) });
        assert_eq!(config.log.to_string(), "file (4 MiB segments)");
    }
}
