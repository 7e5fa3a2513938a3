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
    /// Key store operations on a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
