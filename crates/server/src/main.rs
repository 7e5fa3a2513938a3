//! The `pypes` binary: `serve`, `demo`, `keys rotate`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "pypes", about = "pypes: the event-sourced core of a multi-tenant messaging platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8080, data in ./data).
    Serve(ServeArgs),
    /// Drives a whole scenario against a running server and prints what happens.
    Demo {
        #[arg(long, env = "PYPES_GRPC_URL", default_value = "http://127.0.0.1:50051")]
        grpc: String,
        /// The platform admin key (default: read from <data-dir>/admin.key).
        #[arg(long, env = "PYPES_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Audit: verify the whole log's checksums, hash chain and signed checkpoints.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One stream's timeline and state as of a time (stop the server first).
    Replay {
        /// The stream, e.g. session-<tenant>-<session>.
        #[arg(long)]
        stream: String,
        /// Unix seconds or YYYY-MM-DDTHH:MM:SSZ; default now.
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Key store operations on a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every record of the log; exits non-zero on any failure.
    Verify {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The log's Ed25519 public key (hex), from a trusted copy; default: the log's signing.pub.
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wraps every live key under a new epoch KEK and destroys the old one.
    Rotate {
        #[arg(long, env = "PYPES_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .try_init();
}

fn main() -> std::process::ExitCode {
    init_logs();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(&args)?;
            actix_rt::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
            })
            .block_on(server::app::serve(config, shutdown_signal()))
        }
        Command::Demo { grpc, admin_key, data_dir } => {
            let key = match admin_key {
                Some(k) => k,
                None => {
                    let path = data_dir.join("admin.key");
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("no --admin-key and cannot read {} (run the demo where the server's data is, or pass --admin-key)", path.display()))?
                        .trim()
                        .to_string()
                }
            };
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(server::demo::run(&grpc, &key))
        }
        Command::Audit { command: AuditCommand::Verify { data_dir, public_key } } => {
            print!("{}", server::audit::verify(&data_dir, public_key.as_deref())?);
            Ok(())
        }
        Command::Replay { stream, as_of, data_dir } => {
            let as_of = match as_of {
                Some(t) => server::audit::parse_as_of(&t)?,
                None => eventlog::Clock::now_micros(&eventlog::SystemClock),
            };
            let text = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(server::audit::replay_stream(&data_dir, &stream, as_of))?;
            print!("{text}");
            Ok(())
        }
        Command::Keys { command: KeysCommand::Rotate { data_dir } } => {
            let root = std::env::var(keystore::embedded::ROOT_KEY_ENV).ok();
            let keys = keystore::embedded::open_embedded(
                &data_dir,
                root.as_deref(),
                std::sync::Arc::new(eventlog::SystemClock),
                keystore::embedded::OpenMode::MustExist,
            )?;
            let r = keystore::KeyStore::rotate_epoch(keys.store.as_ref())?;
            println!(
                "rotated to epoch {} ({} keys re-wrapped, destroyed epochs {:?})",
                r.epoch, r.keys_rewrapped, r.destroyed_epochs
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
