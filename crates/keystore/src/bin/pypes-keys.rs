//! `pypes-keys`: operator commands for the embedded key store of a data
//! directory: `status` and `rotate` (the server's `keys rotate` runs the
//! same code on its schedule).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventlog::{Clock, SystemClock};
use keystore::embedded::{OpenMode, ROOT_KEY_ENV, check_embedded, open_embedded, verify_report};
use keystore::{KeyStore, RootKeyProvider};

#[derive(Parser)]
#[command(about = "Inspect and rotate the key store of a pypes data directory")]
struct Cli {
    /// The pypes data directory (holds keys/, provider/ and, in development, root.key).
    #[arg(long, default_value = "./pypes-data")]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tenants, keys and epochs.
    Status,
    /// Reads every file and both copies of every record without writing,
    /// then unwraps every live key; exits non-zero on any damaged copy,
    /// torn append or key that does not unwrap.
    Verify,
    /// Re-wraps every live key under a new epoch KEK and destroys the old one.
    Rotate {
        /// Only rotate when the newest epoch is older than the period (or a rotation was interrupted).
        #[arg(long)]
        if_due: bool,
        /// Rotation period in days (1 to 28).
        #[arg(long, default_value_t = 7)]
        period_days: i64,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain, without a backtrace: these are operator errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = std::env::var(ROOT_KEY_ENV).ok();
    let clock = Arc::new(SystemClock);
    let open = || {
        open_embedded(&cli.data, root.as_deref(), clock.clone(), OpenMode::MustExist)
            .with_context(|| format!("opening the key store of {}", cli.data.display()))
    };
    match cli.command {
        Command::Verify => verify(&cli, root.as_deref(), clock.clone())?,
        Command::Status => {
            let keys = open()?;
            let s = keys.store.status()?;
            println!("root key:          {:?}", keys.origin);
            println!("tenants:           {} live, {} shredded", s.tenants, s.shredded_tenants);
            println!(
                "data keys:         {} live ({} retired), {} shredded",
                s.live_keys, s.retired_keys, s.shredded_keys
            );
            for e in &s.epochs {
                println!("epoch:             {} (created at unix {})", e.epoch, e.created_at_unix);
            }
            if s.epochs.len() > 1 {
                println!("a rotation was interrupted; run `pypes-keys rotate` to finish it");
            }
        }
        Command::Rotate { if_due, period_days } => {
            let keys = open()?;
            let period = keystore::validate_rotation_period(period_days.saturating_mul(86_400))?;
            let now = clock.now_micros() / 1_000_000;
            if if_due && !keystore::rotation_due(keys.provider.as_ref() as &dyn RootKeyProvider, now, period)? {
                println!("rotation not due");
                return Ok(());
            }
            let r = keys.store.rotate_epoch()?;
            println!(
                "rotated to epoch {} ({} tenants, {} keys re-wrapped, destroyed epochs {:?}{})",
                r.epoch,
                r.tenants,
                r.keys_rewrapped,
                r.destroyed_epochs,
                if r.resumed { ", finished an interrupted rotation" } else { "" }
            );
        }
    }
    Ok(())
}

/// `verify`: reads without writing. Every finding is printed; damage (a
/// copy that needed its twin, a torn append) or a key that does not unwrap
/// makes the exit non-zero.
fn verify(cli: &Cli, root: Option<&str>, clock: Arc<SystemClock>) -> anyhow::Result<()> {
    let keys = check_embedded(&cli.data, root, clock)
        .with_context(|| format!("checking the key store of {}", cli.data.display()))?;
    let (text, damaged, failures) = verify_report(&keys);
    print!("{text}");
    if failures > 0 || damaged > 0 {
        anyhow::bail!(
            "{failures} keys do not unwrap and {damaged} records are damaged (the server repairs damaged copies from their twin at its next start)"
        );
    }
    Ok(())
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .try_init();
}
