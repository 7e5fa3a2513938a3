//! Appends to a file log under load until killed, printing one line per
//! acknowledged event: `ACK <stream> <version> <position> <event id>`.
//! The process-level crash test SIGKILLs it and checks every printed
//! acknowledgement survived. Usage: `eventlog-torture <dir> [writers]`.

use std::io::Write;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{EventLog, ExpectedVersion, NewEvent};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: eventlog-torture <dir> [writers]");
        std::process::exit(2);
    };
    let writers: usize = match args.next().map(|w| w.parse()) {
        None => 16,
        Some(Ok(w)) if w > 0 => w,
        Some(_) => {
            eprintln!("writers must be a positive number");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let mut config = FileLogConfig::new(SigningKey::from_bytes(&[3; 32]));
        config.segment_size = 256 * 1024;
        let log = match FileLog::open(&dir, config) {
            Ok(log) => Arc::new(log),
            Err(e) => {
                eprintln!("open failed: {e}");
                std::process::exit(1);
            }
        };
        let mut tasks = Vec::new();
        for w in 0..writers {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let stream = format!("writer-{w}");
                let mut i = 0u64;
                loop {
                    let events: Vec<NewEvent> = (0..1 + i % 3)
                        .map(|k| {
                            NewEvent::new("Tortured", format!("{stream}/{i}/{k}/{}", "z".repeat((i % 50) as usize)))
                        })
                        .collect();
                    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                    match log.append(&stream, ExpectedVersion::Any, events).await {
                        Ok(r) => {
                            let first_version = r.next_expected_version + 1 - ids.len() as u64;
                            let mut out = String::new();
                            for (k, id) in ids.iter().enumerate() {
                                out.push_str(&format!(
                                    "ACK {stream} {} {} {id}\n",
                                    first_version + k as u64,
                                    r.first_position + k as u64
                                ));
                            }
                            // One write per batch so a line is never split
                            // between two writers.
                            let mut stdout = std::io::stdout().lock();
                            let _ = stdout.write_all(out.as_bytes());
                            let _ = stdout.flush();
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(1);
                        }
                    }
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}
