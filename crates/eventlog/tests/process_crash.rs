//! A child process appends under load and prints each acknowledgement
//! before it is SIGKILLed at a random moment; after each restart every
//! acknowledged event is present, at its version and position, in order.
//! Restarts: `PYPES_CRASH_RESTARTS` (default 3).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use eventlog::file::vfs::OsVfs;
use eventlog::file::{FileLog, FileLogConfig, verify_log};
use eventlog::{EventFilter, EventLog};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    version: u64,
    position: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let restarts: usize = std::env::var("PYPES_CRASH_RESTARTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut acked: HashMap<Uuid, Ack> = HashMap::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    for round in 0..restarts {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventlog-torture"))
            .arg(&path)
            .arg("32")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the torture child");
        let stdout = child.stdout.take().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(150 + seed % 400);
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut first_ack: Option<Instant> = None;
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line without its newline was cut by the kill: not counted.
                    Ok(_) if line.ends_with('\n') => lines.push(line.trim_end().to_owned()),
                    Ok(_) => {}
                }
                let started = *first_ack.get_or_insert_with(Instant::now);
                if started.elapsed() >= run_for {
                    break;
                }
            }
            (lines, reader)
        });
        let (mut lines, mut rest) = reader.join().unwrap();
        child.kill().expect("SIGKILL the child");
        // Drain what the child printed before it died.
        let mut tail = String::new();
        while rest.read_line(&mut tail).unwrap_or(0) > 0 {
            if tail.ends_with('\n') {
                lines.push(tail.trim_end().to_owned());
            }
            tail.clear();
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed, it did not exit");
        assert!(!lines.is_empty(), "round {round}: the child acknowledged appends before it was killed");
        for l in &lines {
            let parts: Vec<&str> = l.split(' ').collect();
            assert_eq!(parts.len(), 5, "malformed line {l:?}");
            let ack = Ack {
                stream: parts[1].into(),
                version: parts[2].parse().unwrap(),
                position: parts[3].parse().unwrap(),
            };
            acked.insert(parts[4].parse().unwrap(), ack);
        }
        let log = FileLog::open(&path, FileLogConfig::new(SigningKey::from_bytes(&[3; 32])))
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
        let page = log.read_all(0, usize::MAX, &EventFilter::all()).await.unwrap();
        let present: HashMap<Uuid, Ack> = page
            .events
            .iter()
            .map(|e| (e.id(), Ack { stream: e.stream.to_string(), version: e.version, position: e.position }))
            .collect();
        for (id, ack) in &acked {
            assert_eq!(present.get(id), Some(ack), "round {round}: acknowledged event {id} lost or moved");
        }
        let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, (0..positions.len() as u64).collect::<Vec<_>>(), "round {round}: $all has a gap");
        log.close();
        verify_log(&OsVfs, &path, &SigningKey::from_bytes(&[3; 32]).verifying_key())
            .unwrap_or_else(|e| panic!("round {round}: chain does not verify: {e}"));
        eprintln!("round {round}: {} acknowledged so far, {} events in the log", acked.len(), positions.len());
    }
}
