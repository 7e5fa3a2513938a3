//! The `pypes` binary: `serve`, `demo`, `keys rotate`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::client::ClientArgs;
use server::config::{Config, ServeArgs};

/// Allocation-heavy paths (reading `$all`, decoding events) run about a
/// third faster than on glibc malloc; see docs/benchmarks.md.
// `system-alloc` leaves the process on the C allocator, for heap profilers
// that interpose malloc (heaptrack): mimalloc's own heap is invisible to them.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pypes",
    version = server::version::VERSION,
    long_version = server::version::long(),
    about = "pypes: the event-sourced core of a multi-tenant messaging platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (colour only on a terminal; NO_COLOR honoured) or
    /// one JSON object per line. Default: text, or `serve`'s
    /// telemetry.log_format. Levels: RUST_LOG (docs/operations.md, Logs).
    #[arg(long, global = true, env = "PYPES_LOG_FORMAT", value_enum)]
    log_format: Option<server::telemetry::LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8080, data in ./data).
    Serve(ServeArgs),
    /// Drives a whole scenario against a running server and prints what happens.
    Demo {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Audit: verify the whole log's checksums, hash chain and signed checkpoints, and the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One stream's timeline and state as of a time (stop the server first).
    Replay {
        #[command(flatten)]
        backends: server::config::ToolBackendArgs,
        /// The stream, e.g. session-<tenant>-<session>: its timeline and state.
        #[arg(long, required_unless_present = "into", conflicts_with = "into")]
        stream: Option<String>,
        /// Rebuild every read model as of the time into this (new) directory.
        #[arg(long)]
        into: Option<PathBuf>,
        /// Unix seconds or YYYY-MM-DDTHH:MM:SSZ; default now.
        #[arg(long)]
        as_of: Option<String>,
        /// Default: the config file's data_dir, else ./data.
        #[arg(long, env = "PYPES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// With --stream: one JSON object (the events, the state).
        #[arg(long)]
        json: bool,
    },
    /// Opens a stopped server's data directory as a start would (repairs
    /// from redundancy, refuses damage naming the file), then reads every
    /// event, media blob and view; prints counts, what was settled and a
    /// digest of all answers (no personal data). Non-zero exit when a start
    /// would be refused or a blob is damaged.
    Check {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The key store's provider directory (default <data-dir>/provider).
        #[arg(long, env = "PYPES_KEYS_PROVIDER_DIR")]
        keys_provider_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Key store operations on a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    Erase(EraseArgs),
    /// Export everything pypes holds about an end user (GDPR Art. 15 and
    /// 20) as JSON, through a running server (docs/export-format.md).
    Export(ExportArgs),
    /// Privacy requests for one end user through a running server, as the
    /// platform operator (admin key): rectify, restrict, lift, consent.
    Privacy(PrivacyArgs),
    /// Backs up a running (or stopped) server's data directory on this
    /// host into a new directory: a consistent cut of the event log, the
    /// key store (checked), blobs and signed heads. Never the root key or
    /// the provider's epochs (docs/operations.md, Backup and restore).
    Backup {
        /// Default: the config file's data_dir, else ./data.
        #[arg(long, env = "PYPES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// A new (or empty) directory for the backup.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        backends: server::config::ToolBackendArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restores a backup into a new (or empty) data directory, after
    /// checking every file of it; `--check` only checks.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Check the backup against its manifest and write nothing.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Tenant offboarding through a running server (admin key).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Staff members and break-glass grants through a running server
    /// (admin key): list, disable a member, end a grant (incident
    /// containment, docs/incident-response.md)
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
}

/// `--json`: one JSON object instead of the text for people.
#[derive(clap::Args)]
struct JsonFlag {
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl JsonFlag {
    fn output(&self) -> server::demo::Output {
        if self.json { server::demo::Output::Json } else { server::demo::Output::Text }
    }
}

#[derive(clap::Args)]
struct PrivacyArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    subject: String,
    #[command(subcommand)]
    action: PrivacyAction,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Subcommand)]
enum PrivacyAction {
    /// Correct profile fields (only those given).
    Rectify {
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        /// YYYY-MM-DD
        #[arg(long)]
        date_of_birth: Option<String>,
    },
    /// Restrict processing (GDPR Art. 18).
    Restrict,
    /// Lift a restriction.
    Lift,
    /// Record consent to a purpose ("geolocation") under a policy version.
    Grant {
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        policy_version: String,
    },
    /// Withdraw consent (geolocation: the subject's locations are shredded).
    Withdraw {
        #[arg(long)]
        purpose: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Cancel a tenant: its keys stop now; its KEK is shredded after the
    /// grace period (no undo). Asks on a terminal; `--yes` in scripts.
    Cancel {
        #[arg(long)]
        tenant: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke one of a tenant's API keys (a leaked key): it stops on every
    /// node within 5 s.
    RevokeKey {
        #[arg(long)]
        tenant: String,
        /// The key's id (`pypes_<tenant>_<key id>_<secret>`: the third part).
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Move a tenant to another region (docs/residency.md): freeze it in
    /// its region (the node --server names), copy its keys, events and
    /// blobs to a node of the new region (--to-server), compare both
    /// regions' digests, switch the directory, destroy what the old region
    /// held, and hand over. The old region's signed certificate is
    /// printed (and written with --out). Run again after any failure: it
    /// goes on where it stopped.
    Move {
        #[arg(long)]
        tenant: String,
        /// The region it moves to.
        #[arg(long)]
        to: String,
        /// A node of the new region: `https://host:port` (as --server).
        #[arg(long)]
        to_server: String,
        /// The CA of the new region's server certificate (default: --ca-cert).
        #[arg(long)]
        to_ca_cert: Option<PathBuf>,
        /// The new region's admin key file (default: the old region's key).
        #[arg(long)]
        to_admin_key_file: Option<PathBuf>,
        /// Write the certificate here (and its signature to <file>.sig).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show a tenant's offboarding: dates, and the certificate once issued.
    Offboarding {
        #[arg(long)]
        tenant: String,
        /// Write the certificate here (and its signature to <file>.sig);
        /// an error, writing nothing, before the certificate exists.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum StaffCommand {
    /// Every staff member (id, role, disabled) and the live break-glass grants.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The member's key stops working now and their grants end.
    Disable {
        #[arg(long)]
        staff: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A break-glass grant ends now.
    CloseGrant {
        #[arg(long)]
        grant: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long)]
    subject: String,
    #[arg(long)]
    tenant: String,
    /// Write the JSON here, readable by its owner only (0600); default: standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Erase a subject (GDPR Art. 17) through a running server, read the
/// status, or verify a certificate.
#[derive(clap::Args)]
struct EraseArgs {
    /// The subject to erase (or whose erasure to show).
    #[arg(long, required_unless_present = "verify")]
    subject: Option<String>,
    /// The subject's tenant.
    #[arg(long, required_unless_present = "verify")]
    tenant: Option<String>,
    /// Only show the status; request nothing.
    #[arg(long)]
    status: bool,
    /// Do not ask for confirmation (erasure cannot be undone).
    #[arg(long)]
    yes: bool,
    /// Return after the request is recorded, without waiting for the certificate.
    #[arg(long)]
    no_wait: bool,
    /// Write the certificate JSON here (and its signature to <file>.sig).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Verify a certificate file (signature read from <file>.sig).
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Public key (hex) to verify with; default <data-dir>/log/signing.pub.
    #[arg(long)]
    public_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every record of the log; exits non-zero on any failure.
    Verify {
        /// Default: the config file's data_dir, else ./data.
        #[arg(long, env = "PYPES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The log's Ed25519 public key (hex), from a trusted copy; default: the log's signing.pub.
        #[arg(long)]
        public_key: Option<String>,
        /// Accept a missing log/head.sig or audit.head (and witness copy)
        /// on a log that holds frames; without it that is a failure.
        #[arg(long)]
        allow_missing_head: bool,
        #[command(flatten)]
        backends: server::config::ToolBackendArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Verifies like `verify`, then prints the audit streams' entries
    /// (authentication attempts, refusals, privileged and privacy actions),
    /// all or those matching every filter given.
    Trail {
        /// Default: the config file's data_dir, else ./data.
        #[arg(long, env = "PYPES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        allow_missing_head: bool,
        /// Entries at or after this time (unix seconds or YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this time.
        #[arg(long)]
        until: Option<String>,
        /// An action (auth.api_key), or a prefix ending in "." (auth.).
        #[arg(long)]
        action: Option<String>,
        /// An actor exactly as shown (admin, staff:<id>, tenant-key:<id>).
        #[arg(long)]
        actor: Option<String>,
        /// A tenant id.
        #[arg(long)]
        tenant: Option<String>,
        /// An outcome (ok, failed, refused, ...).
        #[arg(long)]
        outcome: Option<String>,
        #[command(flatten)]
        backends: server::config::ToolBackendArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Breach scope: verifies like `verify`, then lists every tenant,
    /// subject and Session whose data one actor read or changed in a
    /// window (docs/incident-response.md). Refuses on a broken trail.
    Scope {
        /// Default: the config file's data_dir, else ./data.
        #[arg(long, env = "PYPES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        allow_missing_head: bool,
        /// The actor as the trail names it: staff:<id>, tenant-key:<id>,
        /// admin; a bare staff or key id is looked up as either.
        #[arg(long)]
        actor: String,
        /// The window's start (unix seconds or YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        from: String,
        /// The window's end (exclusive); default now.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        backends: server::config::ToolBackendArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Reads every file and both copies of every record of a stopped
    /// server's key store without writing; exits non-zero on a damaged copy,
    /// a torn append or a key that does not unwrap.
    Verify {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The provider's directory (default <data-dir>/provider).
        #[arg(long, env = "PYPES_KEYS_PROVIDER_DIR")]
        keys_provider_dir: Option<PathBuf>,
    },
    /// Tenants, keys and epochs of a stopped server's key store.
    Status {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, env = "PYPES_KEYS_PROVIDER_DIR")]
        keys_provider_dir: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Re-wraps every live key under a new epoch KEK and destroys the old
    /// one: key-store backups older than the new epoch can no longer be
    /// opened. Asks on a terminal; `--yes` in scripts.
    Rotate {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[arg(long, env = "PYPES_KEYS_PROVIDER_DIR")]
        keys_provider_dir: Option<PathBuf>,
        /// Only rotate when the newest epoch is older than the period (or a
        /// rotation was interrupted); asks nothing.
        #[arg(long)]
        if_due: bool,
        /// Rotation period in days (1 to 28), for --if-due.
        #[arg(long, default_value_t = 7)]
        period_days: i64,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> std::process::ExitCode {
    // One process-wide TLS provider: with the kurrentdb or s3 feature a
    // second one (aws-lc) is in the build, and rustls then refuses to
    // guess (ring is the one pypes' own listeners use).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result =
        server::config::check_environment(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()), &env_names())
            .and_then(|()| run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every environment variable the command line reads (from its flags'
/// `env`), for refusing unknown `PYPES_*` ones.
fn env_names() -> Vec<String> {
    fn walk(c: &clap::Command, out: &mut Vec<String>) {
        for a in c.get_arguments() {
            if let Some(e) = a.get_env() {
                out.push(e.to_string_lossy().into_owned());
            }
        }
        for sub in c.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// An error and its causes on one line; a gRPC status in the chain is
/// told as its code and message (never its metadata) with the fix.
fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            let what = parts.pop().unwrap_or_else(|| "the request".into());
            parts.push(server::client::refused(&what, s).to_string());
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The server logs at info; the tools only warnings unless RUST_LOG
    // says otherwise. Dropping the guard flushes the traces.
    let _telemetry = match &cli.command {
        Command::Serve(_) => None,
        _ => {
            let telemetry = server::telemetry::Telemetry { log_format: cli.log_format.unwrap_or_default(), otlp: None };
            Some(server::telemetry::init(&telemetry, "warn")?)
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let mut config = Config::resolve(&args)?;
            if let Some(format) = cli.log_format {
                config.telemetry.log_format = format;
            }
            let _telemetry = server::telemetry::init(&config.telemetry, "info")?;
            actix_rt::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
            })
            .block_on(async { server::wiring::serve(config, shutdown_signal()?).await })
        }
        Command::Demo { client } => {
            let client = client.resolve()?;
            let key = client.admin_key()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(server::demo::run(&client, &key))
        }
        Command::Audit {
            command: AuditCommand::Scope { data_dir, public_key, allow_missing_head, actor, from, to, backends, json },
        } => {
            let time = |flag: &str, t: &str| audit::time::parse_time(t).map_err(|e| anyhow::anyhow!("--{flag} {e}"));
            let from = time("from", &from)?;
            let to = match to {
                Some(t) => time("to", &t)?,
                None => audit::time::now_micros(),
            };
            if from >= to {
                anyhow::bail!("--from is not before --to: the window is empty");
            }
            let actors = audit::scope::actors_for(&actor).map_err(|e| anyhow::anyhow!("--actor {e}"))?;
            let query = server::audit_tool::TrailQuery { since: Some(from), until: Some(to), ..Default::default() };
            let (log, _) = backends.resolve()?;
            let data_dir = backends.data_dir(data_dir)?;
            // The chain first: a trail that does not verify gives no scope.
            let report = match log {
                server::config::LogBackend::File { witness_dir, .. } => server::audit_tool::verify(
                    &data_dir,
                    public_key.as_deref(),
                    &server::audit_tool::HeadPolicy { witness_dir, allow_missing_head },
                    Some(&query),
                )?,
                other => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(
                    server::audit_tool::verify_database(&data_dir, &other, public_key.as_deref(), Some(&query)),
                )?,
            };
            let scopes: Vec<_> = actors.iter().map(|a| audit::scope::scope_of(&report.entries, a, from, to)).collect();
            match json.output() {
                server::demo::Output::Json => {
                    let mut verified = report.json.clone();
                    if let Some(o) = verified.as_object_mut() {
                        o.remove("entries");
                    }
                    let scopes: Vec<_> = scopes.iter().map(|s| s.json()).collect();
                    println!("{}", serde_json::json!({ "verified": verified, "scopes": scopes }));
                }
                server::demo::Output::Text => {
                    let summary = report.text.split("\n\n").next().unwrap_or_default();
                    println!("{}\n(the trail verified: the scope below is from it)\n", summary.trim_end());
                    for s in &scopes {
                        println!("{}", s.table());
                    }
                }
            }
            Ok(())
        }
        Command::Audit { command } => {
            let (data_dir, public_key, allow_missing_head, backends, trail, json) = match command {
                AuditCommand::Verify { data_dir, public_key, allow_missing_head, backends, json } => {
                    (data_dir, public_key, allow_missing_head, backends, None, json)
                }
                AuditCommand::Scope { .. } => anyhow::bail!("audit scope is handled above"),
                AuditCommand::Trail {
                    data_dir,
                    public_key,
                    allow_missing_head,
                    since,
                    until,
                    action,
                    actor,
                    tenant,
                    outcome,
                    backends,
                    json,
                } => {
                    let time = |flag: &str, t: Option<String>| {
                        t.map(|t| audit::time::parse_time(&t).map_err(|e| anyhow::anyhow!("--{flag} {e}"))).transpose()
                    };
                    let query = server::audit_tool::TrailQuery {
                        since: time("since", since)?,
                        until: time("until", until)?,
                        action,
                        actor,
                        tenant: tenant
                            .map(|t| {
                                uuid::Uuid::parse_str(t.trim())
                                    .map_err(|_| anyhow::anyhow!("--tenant {t:?} is not a tenant id (a UUID)"))
                            })
                            .transpose()?,
                        outcome,
                    };
                    (data_dir, public_key, allow_missing_head, backends, Some(query), json)
                }
            };
            let (log, _) = backends.resolve()?;
            let data_dir = backends.data_dir(data_dir)?;
            let text = match log {
                server::config::LogBackend::File { witness_dir, .. } => server::audit_tool::verify(
                    &data_dir,
                    public_key.as_deref(),
                    &server::audit_tool::HeadPolicy { witness_dir, allow_missing_head },
                    trail.as_ref(),
                )?,
                other => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(
                    server::audit_tool::verify_database(&data_dir, &other, public_key.as_deref(), trail.as_ref()),
                )?,
            };
            match json.output() {
                server::demo::Output::Json => println!("{}", text.json),
                server::demo::Output::Text => print!("{}", text.text),
            }
            Ok(())
        }
        Command::Check { data_dir, keys_provider_dir, json } => {
            let answers = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(server::integrity::check(&data_dir, keys_provider_dir.as_deref()))?;
            match json.output() {
                server::demo::Output::Json => println!("{}", answers.summary_json()),
                server::demo::Output::Text => print!("{}", answers.summary()),
            }
            let lost = answers.media.iter().filter(|m| m.contains("DATA_LOSS")).count();
            if lost > 0 {
                anyhow::bail!("{lost} media blobs are damaged (downloads answer DATA_LOSS naming them)");
            }
            Ok(())
        }
        Command::Replay { stream, into, as_of, data_dir, backends, json } => {
            let data_dir = backends.data_dir(data_dir)?;
            let backends = backends.resolve()?;
            let as_of = match as_of {
                Some(t) => server::audit_tool::parse_as_of(&t)?,
                None => eventlog::Clock::now_micros(&eventlog::SystemClock),
            };
            if json && stream.is_none() {
                anyhow::bail!("--json is for --stream (a rebuild --into prints only its progress)");
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let text = match (stream, into) {
                (Some(stream), _) => {
                    let report =
                        rt.block_on(server::audit_tool::replay_stream(&data_dir, &backends, &stream, as_of))?;
                    if json { format!("{}\n", report.json) } else { report.text }
                }
                (None, Some(into)) => {
                    rt.block_on(server::audit_tool::replay_into(&data_dir, &backends, &into, as_of))?
                }
                (None, None) => anyhow::bail!("give --stream S or --into DIR"),
            };
            print!("{text}");
            Ok(())
        }
        Command::Erase(args) => erase(args),
        Command::Backup { data_dir, to, backends, json } => {
            let data_dir = backends.data_dir(data_dir)?;
            let (log, keys) = backends.resolve()?;
            let provider_dir = match (log, keys) {
                (server::config::LogBackend::File { .. }, server::config::KeysBackend::File { provider_dir }) => {
                    provider_dir
                }
                (log, keys) => anyhow::bail!(
                    "the event log is {log} and the key store {keys}: `pypes backup` copies the embedded backends; \
                     back up a database with its own tools (docs/operations.md, Backup and restore)"
                ),
            };
            let m = server::backup::backup(&server::backup::BackupOptions { data_dir, to: to.clone(), provider_dir })?;
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            print_backup(json.output(), "backed up", &to, &m, bytes);
            Ok(())
        }
        Command::Restore { from, data_dir, check, json } => {
            let m = if check { server::backup::verify(&from)? } else { server::backup::restore(&from, &data_dir)? };
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            let (what, place) = if check { ("checked", &from) } else { ("restored", &data_dir) };
            print_backup(json.output(), what, place, &m, bytes);
            if !check && !json.json {
                println!(
                    "next: start it with the root key (PYPES_ROOT_KEY) and the provider's live state \
                     (--keys-provider-dir); with a witness, give it a fresh witness directory (docs/operations.md)"
                );
            }
            Ok(())
        }
        Command::Privacy(args) => {
            let client = args.client.resolve()?;
            let key = client.admin_key()?;
            let action = match args.action {
                PrivacyAction::Rectify { email, phone, date_of_birth } => {
                    server::demo::PrivacyAction::Rectify { email, phone, date_of_birth }
                }
                PrivacyAction::Restrict => server::demo::PrivacyAction::Restrict,
                PrivacyAction::Lift => server::demo::PrivacyAction::Lift,
                PrivacyAction::Grant { purpose, policy_version } => {
                    server::demo::PrivacyAction::Grant { purpose, policy_version }
                }
                PrivacyAction::Withdraw { purpose } => server::demo::PrivacyAction::Withdraw { purpose },
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(server::demo::privacy(&client, &key, &args.tenant, &args.subject, action, args.json.output()))
        }
        Command::Tenant { command } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match command {
                TenantCommand::Cancel { tenant, yes, client, json } => {
                    let client = client.resolve()?;
                    let key = client.admin_key()?;
                    server::client::confirm(
                        yes,
                        &format!(
                            "cancelling tenant {tenant} (its keys stop now; its KEK is shredded after the grace period)"
                        ),
                        "cancel",
                    )?;
                    rt.block_on(server::demo::offboarding(&client, &key, &tenant, true, None, json.output()))
                }
                TenantCommand::RevokeKey { tenant, key_id, client, json } => {
                    let client = client.resolve()?;
                    let key = client.admin_key()?;
                    let step = server::demo::Containment::RevokeKey { tenant, key_id };
                    rt.block_on(server::demo::contain(&client, &key, step, json.output()))
                }
                TenantCommand::Move { tenant, to, to_server, to_ca_cert, to_admin_key_file, out, client, json } => {
                    let mut target = client.clone();
                    target.server = Some(to_server);
                    if to_ca_cert.is_some() {
                        target.ca_cert = to_ca_cert;
                    }
                    if to_admin_key_file.is_some() {
                        target.admin_key = None;
                        target.admin_key_file = to_admin_key_file;
                    }
                    let (from, target) = (client.resolve()?, target.resolve()?);
                    let (from_key, to_key) = (from.admin_key()?, target.admin_key()?);
                    let to = server::demo::MoveTarget { client: &target, admin_key: &to_key, region: &to };
                    rt.block_on(server::demo::move_tenant(&from, &from_key, to, &tenant, out.as_deref(), json.output()))
                }
                TenantCommand::Offboarding { tenant, out, client, json } => {
                    let client = client.resolve()?;
                    let key = client.admin_key()?;
                    rt.block_on(server::demo::offboarding(&client, &key, &tenant, false, out.as_deref(), json.output()))
                }
            }
        }
        Command::Staff { command } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (step, client, json) = match command {
                StaffCommand::List { client, json } => (server::demo::Containment::ListStaff, client, json),
                StaffCommand::Disable { staff, client, json } => {
                    (server::demo::Containment::DisableStaff { staff }, client, json)
                }
                StaffCommand::CloseGrant { grant, client, json } => {
                    (server::demo::Containment::CloseGrant { grant }, client, json)
                }
            };
            let client = client.resolve()?;
            let key = client.admin_key()?;
            rt.block_on(server::demo::contain(&client, &key, step, json.output()))
        }
        Command::Export(args) => {
            let client = args.client.resolve()?;
            let key = client.admin_key()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(server::demo::export(&client, &key, &args.tenant, &args.subject, args.out.as_deref()))
        }
        Command::Keys { command: KeysCommand::Verify { data_dir, keys_provider_dir } } => {
            let root = std::env::var(keystore::embedded::ROOT_KEY_ENV).ok();
            let keys = keystore::embedded::check_embedded_in(
                &data_dir,
                &provider_dir(&data_dir, keys_provider_dir.as_deref()),
                root.as_deref(),
                std::sync::Arc::new(eventlog::SystemClock),
            )
            .with_context(|| format!("checking the key store of {}", data_dir.display()))?;
            let (text, damaged, failures) = keystore::embedded::verify_report(&keys);
            print!("{text}");
            if failures > 0 || damaged > 0 {
                anyhow::bail!(
                    "{failures} keys do not unwrap and {damaged} records are damaged (a start repairs damaged copies from their twin)"
                );
            }
            Ok(())
        }
        Command::Keys { command: KeysCommand::Status { data_dir, keys_provider_dir, json } } => {
            let keys = open_key_store(&data_dir, keys_provider_dir.as_deref())?;
            let s = keystore::KeyStore::status(keys.store.as_ref())?;
            let epoch_time = |at: i64| audit::time::time_text(at.saturating_mul(1_000_000));
            if json.json {
                let epochs: Vec<_> = s
                    .epochs
                    .iter()
                    .map(|e| serde_json::json!({"epoch": e.epoch, "created": epoch_time(e.created_at_unix)}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "root_key": keys.origin.to_string(),
                        "tenants": {"live": s.tenants, "shredded": s.shredded_tenants},
                        "data_keys": {"live": s.live_keys, "retired": s.retired_keys, "shredded": s.shredded_keys},
                        "epochs": epochs,
                        "rotation_interrupted": s.epochs.len() > 1,
                    })
                );
                return Ok(());
            }
            println!("root key:   {}", keys.origin);
            println!("tenants:    {} live, {} shredded", s.tenants, s.shredded_tenants);
            println!("data keys:  {} live ({} retired), {} shredded", s.live_keys, s.retired_keys, s.shredded_keys);
            for e in &s.epochs {
                println!("epoch:      {} (created {})", e.epoch, epoch_time(e.created_at_unix));
            }
            if s.epochs.len() > 1 {
                println!("a rotation was interrupted; `pypes keys rotate` finishes it");
            }
            Ok(())
        }
        Command::Keys { command: KeysCommand::Rotate { data_dir, keys_provider_dir, if_due, period_days, yes } } => {
            let keys = open_key_store(&data_dir, keys_provider_dir.as_deref())?;
            let period = keystore::validate_rotation_period(period_days.saturating_mul(86_400))
                .map_err(|e| anyhow::anyhow!("--period-days {period_days}: {e}"))?;
            let now = eventlog::Clock::now_micros(&eventlog::SystemClock) / 1_000_000;
            if if_due {
                if !keystore::rotation_due(keys.provider.as_ref() as &dyn keystore::RootKeyProvider, now, period)? {
                    println!("rotation not due");
                    return Ok(());
                }
            } else {
                server::client::confirm(
                    yes,
                    &format!(
                        "rotating the key epoch of {} (key-store backups taken before it can no longer be opened)",
                        data_dir.display()
                    ),
                    "rotate",
                )?;
            }
            let r = keystore::KeyStore::rotate_epoch(keys.store.as_ref())?;
            let destroyed: Vec<String> = r.destroyed_epochs.iter().map(u32::to_string).collect();
            println!(
                "rotated to epoch {} ({} tenants, {} keys re-wrapped; destroyed epochs: {}{})",
                r.epoch,
                r.tenants,
                r.keys_rewrapped,
                if destroyed.is_empty() { "none".into() } else { destroyed.join(", ") },
                if r.resumed { "; finished an interrupted rotation" } else { "" }
            );
            Ok(())
        }
    }
}

fn print_backup(
    output: server::demo::Output,
    what: &str,
    place: &std::path::Path,
    m: &server::backup::Manifest,
    bytes: u64,
) {
    match output {
        server::demo::Output::Json => println!(
            "{}",
            serde_json::json!({
                "done": what, "directory": place.display().to_string(), "created": m.created,
                "source": m.source, "log_position": m.log_position, "tenants": m.keys.tenants,
                "keys": m.keys.keys, "files": m.files.len(), "bytes": bytes,
            })
        ),
        server::demo::Output::Text => {
            println!("{:<13} {}", format!("{what}:"), place.display());
            println!("taken:        {} from {}", m.created, m.source);
            println!("log position: {}", m.log_position);
            println!(
                "key store:    {} tenants, {} live keys (every one unwrapped when taken)",
                m.keys.tenants, m.keys.keys
            );
            println!(
                "files:        {} ({} bytes, each with its SHA-256 in {})",
                m.files.len(),
                bytes,
                server::backup::MANIFEST
            );
        }
    }
}

/// The provider's directory: given, else `<data_dir>/provider`.
fn provider_dir(data_dir: &std::path::Path, given: Option<&std::path::Path>) -> PathBuf {
    given.map_or_else(|| data_dir.join(keystore::embedded::PROVIDER_DIR), std::path::Path::to_path_buf)
}

/// The embedded key store of a stopped server's data directory.
fn open_key_store(
    data_dir: &std::path::Path,
    provider: Option<&std::path::Path>,
) -> anyhow::Result<keystore::embedded::Embedded> {
    let root = std::env::var(keystore::embedded::ROOT_KEY_ENV).ok();
    keystore::embedded::open_embedded_in(
        data_dir,
        &provider_dir(data_dir, provider),
        root.as_deref(),
        std::sync::Arc::new(eventlog::SystemClock),
        keystore::embedded::OpenMode::MustExist,
    )
    .with_context(|| format!("opening the key store of {}", data_dir.display()))
}

fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let client = args.client.resolve()?;
    if let Some(cert_path) = &args.verify {
        let cert = std::fs::read_to_string(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let sig_path = PathBuf::from(format!("{}.sig", cert_path.display()));
        let sig = std::fs::read_to_string(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
        let key = match &args.public_key {
            Some(k) => k.clone(),
            None => {
                let p = client.data_dir.join("log").join("signing.pub");
                std::fs::read_to_string(&p)
                    .with_context(|| format!("no --public-key and cannot read {}", p.display()))?
                    .trim()
                    .to_string()
            }
        };
        app::certificate::verify(cert.trim_end_matches('\n'), &sig, &key)
            .with_context(|| format!("certificate {}: the signature does not verify", cert_path.display()))?;
        println!("certificate {}: signature valid", cert_path.display());
        return Ok(());
    }
    let (tenant, subject) = (args.tenant.as_deref().unwrap_or_default(), args.subject.as_deref().unwrap_or_default());
    let key = client.admin_key()?;
    if !args.status {
        server::client::confirm(args.yes, &format!("erasing subject {subject} of tenant {tenant}"), "erase")?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(server::demo::erase(
        &client,
        &key,
        server::demo::EraseRequest {
            tenant,
            subject,
            status_only: args.status,
            wait: !args.no_wait,
            out: args.out.as_deref(),
            output: args.json.output(),
        },
    ))
}

/// Registers SIGTERM and SIGINT at once (before the server announces its
/// addresses), so a stop asked for during start-up is a clean stop, not
/// the signal's default action; the future resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
