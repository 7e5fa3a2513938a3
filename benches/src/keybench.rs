//! `loadgen seal`: the keystore's hot and cold paths against bare
//! primitives measured in the same run, alternating rounds:
//! - seal and open of 256 B and 4 KiB fields with a warm cache, against a
//!   bare `aes-gcm` loop (random nonce from the same pool + AEAD with an AAD
//!   of the same size), so the ratio is the keyring's own overhead;
//! - opening with a cold cache (the key must be unwrapped from the store)
//!   against a warm open, and the bare unwrap (one AES-GCM open of 32 bytes);
//! - key creation (one fsync'd append each) against a raw write+fdatasync
//!   loop, shred latency, and rotation time for the keys made.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;
use anyhow::Result;
use eventlog::SystemClock;
use keystore::crypto::{self, SecretKey};
use keystore::embedded::{OpenMode, open_embedded};
use keystore::{Aad, KeyPolicy, KeyPurpose, KeyStore, Keyring, ShredTarget};
use uuid::Uuid;

const ROUNDS: usize = 3;

/// Runs `op` repeatedly for `run`; returns operations per second.
fn rate(run: Duration, mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < run {
        for _ in 0..64 {
            op();
        }
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Alternates `ROUNDS` rounds of the baseline and the subject; medians.
fn versus(run: Duration, mut base: impl FnMut(), mut subject: impl FnMut()) -> (f64, f64) {
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        b.push(rate(run, &mut base));
        s.push(rate(run, &mut subject));
    }
    (median(b), median(s))
}

pub fn run(dir: &Path, seconds: f64, sizes: &[usize], keys: usize) -> Result<()> {
    let run = Duration::from_secs_f64(seconds);
    // A real data directory (root.key, provider/, keys/): `pypes keys status --data-dir
    // <dir>` can inspect it afterwards (`--keep`).
    let embedded = open_embedded(dir, None, Arc::new(SystemClock), OpenMode::CreateIfEmpty)?;
    let store: Arc<dyn KeyStore> = embedded.store.clone();
    let ring = Keyring::new(store.clone(), KeyPolicy::default())?;
    let tenant = Uuid::now_v7();
    let session = KeyPurpose::SessionContent { session: Uuid::now_v7() };
    let aad = Aad { tenant, stream: "session-0196f1c4-5b7e-7c3a-9d2e-1f0a2b3c4d5e", event_id: Uuid::now_v7() };
    // Bare AEAD with an AAD as long as the keyring's (labels, ids, names).
    let bare = SecretKey::random()?.cipher();
    let bare_aad = vec![7u8; 4 * 6 + "pypes/field/v1".len() + 16 + aad.stream.len() + 16 + "body".len() + 16];

    for &size in sizes {
        let plaintext = vec![0x5au8; size];
        ring.seal_blocking("body", &plaintext, &session, &aad)?; // warm the cache
        let (base, seal) = versus(
            run,
            || {
                let _ = bare_seal(&bare, &bare_aad, &plaintext);
            },
            || {
                let _ = ring.seal_blocking("body", &plaintext, &session, &aad);
            },
        );
        println!(
            "BENCH seal bytes={size} seals_per_s={seal:.0} bare_aes_gcm_per_s={base:.0} ratio={:.2} ns_per_seal={:.0}",
            seal / base,
            1e9 / seal
        );
        let sealed = ring.seal_blocking("body", &plaintext, &session, &aad)?;
        let (nonce, ct) = bare_seal(&bare, &bare_aad, &plaintext);
        let (base, open) = versus(
            run,
            || {
                let _ = crypto::open(&bare, &nonce, &bare_aad, &ct);
            },
            || {
                let _ = ring.open_blocking("body", &sealed, &aad);
            },
        );
        println!(
            "BENCH open bytes={size} opens_per_s={open:.0} bare_aes_gcm_per_s={base:.0} ratio={:.2} ns_per_open={:.0}",
            open / base,
            1e9 / open
        );
    }

    // Key creation: one fsync'd append per key, against raw write+fdatasync.
    let raw_path = dir.join("raw-fsync");
    let raw = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&raw_path)?;
    let record = [0u8; 140];
    let mut offset = 0u64;
    let fsync_run = run.min(Duration::from_secs(2));
    let mut sessions = Vec::with_capacity(keys);
    let (mut raw_rates, mut create_rates) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw_rates.push(rate(fsync_run / 4, || {
            raw.write_all_at(&record, offset).and_then(|()| raw.sync_data()).ok();
            offset += record.len() as u64;
        }));
        let per_round = keys / ROUNDS;
        let started = Instant::now();
        for _ in 0..per_round {
            let s = Uuid::now_v7();
            store.active_key(tenant, &KeyPurpose::SessionContent { session: s })?;
            sessions.push(s);
        }
        create_rates.push(per_round as f64 / started.elapsed().as_secs_f64());
    }
    let (raw_rate, create) = (median(raw_rates), median(create_rates));
    println!(
        "BENCH key_create keys_per_s={create:.0} raw_fsync_per_s={raw_rate:.0} ratio={:.2} keys={}",
        create / raw_rate,
        sessions.len()
    );
    drop(raw);
    std::fs::remove_file(&raw_path)?;

    // Cold opens: every key must be fetched and unwrapped.
    let fields: Vec<_> = sessions
        .iter()
        .map(|s| ring.seal_blocking("body", &[1u8; 256], &KeyPurpose::SessionContent { session: *s }, &aad))
        .collect::<Result<_, _>>()?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ring.clear_cache();
        let started = Instant::now();
        for f in &fields {
            ring.open_blocking("body", f, &aad)?;
        }
        cold.push(fields.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for f in &fields {
            ring.open_blocking("body", f, &aad)?;
        }
        warm.push(fields.len() as f64 / started.elapsed().as_secs_f64());
    }
    let wrapped = crypto::wrap(&SecretKey::random()?, b"aad", &SecretKey::random()?)?;
    let kek = SecretKey::random()?;
    let bare_unwrap = rate(run / 2, || {
        let _ = crypto::unwrap(&kek, b"aad", &wrapped);
    });
    let (cold, warm) = (median(cold), median(warm));
    println!(
        "BENCH open_cold_cache opens_per_s={cold:.0} warm_opens_per_s={warm:.0} ratio={:.2} miss_cost_us={:.2} bare_unwrap_us={:.2} keys={}",
        cold / warm,
        1e6 / cold - 1e6 / warm,
        1e6 / bare_unwrap,
        fields.len()
    );

    // Shred latency: one shard rewrite each, however many keys the store holds.
    let mut shred_us = Vec::new();
    for s in sessions.iter().take(200) {
        let started = Instant::now();
        ring.shred_blocking(tenant, &ShredTarget::Session { session: *s })?;
        shred_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let p50 = median(shred_us.clone());
    shred_us.sort_by(f64::total_cmp);
    let p99 = shred_us[shred_us.len() * 99 / 100];
    println!(
        "BENCH shred shred_p50_us={p50:.0} shred_p99_us={p99:.0} per_raw_fsync={:.1} live_keys={}",
        p50 / (1e6 / raw_rate),
        store.status()?.live_keys
    );

    let started = Instant::now();
    let report = store.rotate_epoch()?;
    let rotate_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "BENCH rotate keys_rewrapped={} rotate_ms={rotate_ms:.0} keys_per_s={:.0}",
        report.keys_rewrapped,
        report.keys_rewrapped as f64 / (rotate_ms / 1000.0)
    );
    Ok(())
}

fn bare_seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> ([u8; 12], Vec<u8>) {
    // The keyring's own nonce source, so the ratio is the keyring's overhead.
    let nonce = crypto::random_nonce().unwrap_or_default();
    let mut buf = Vec::with_capacity(plaintext.len() + 16);
    buf.extend_from_slice(plaintext);
    if let Ok(tag) = cipher.encrypt_inout_detached(&nonce.into(), aad, buf.as_mut_slice().into()) {
        buf.extend_from_slice(&tag);
    }
    (nonce, buf)
}
