//! The scratch file that holds the index of sealed segments (written by
//! `spill.rs`), what the index keeps of each spilled segment, and the
//! spiller's wake-up signal: the data the index (`state.rs`) and the
//! spilling share.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::vfs::{StorageFile, Vfs};
use crate::{LogError, Result};

/// Bytes of one frame or version record.
pub(super) const RECORD_LEN: u64 = 16;

/// The scratch file: records of spilled segments, appended only.
pub(super) struct Scratch {
    file: Arc<dyn StorageFile>,
    end: AtomicU64,
}

impl Scratch {
    pub(super) fn create(vfs: &dyn Vfs, dir: &Path) -> std::io::Result<Scratch> {
        Ok(Scratch { file: vfs.scratch(dir)?, end: AtomicU64::new(0) })
    }

    /// Appends `buf` and returns where it starts. Only one spill (or
    /// scavenge) appends at a time: both hold the scavenging lock.
    pub(super) fn append(&self, buf: &[u8]) -> std::io::Result<u64> {
        let at = self.end.load(Ordering::Acquire);
        self.file.write_at(at, buf)?;
        self.end.store(at + buf.len() as u64, Ordering::Release);
        Ok(at)
    }

    /// Gives back what an abandoned spill appended from `at` on (nothing
    /// refers to it), so a spill retried after a failure does not leave
    /// dead records behind. Same lock as [`Self::append`].
    pub(super) fn rewind(&self, at: u64) {
        if at < self.end.load(Ordering::Acquire) {
            self.end.store(at, Ordering::Release);
        }
    }

    /// `records` records from `at`.
    pub(super) fn read(&self, at: u64, records: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (records * RECORD_LEN) as usize];
        self.file
            .read_at(at, &mut buf)
            .map_err(|e| LogError::io(format!("reading the log's index scratch file at offset {at}"), e))?;
        Ok(buf)
    }

    /// Bytes written so far (the disk space it takes).
    pub(super) fn len(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
}

/// A spilled segment: where its records are and what it covers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sealed {
    pub(super) first_ordinal: u64,
    pub(super) frames: u64,
    pub(super) first_position: u64,
    pub(super) events: u64,
    /// Scratch offsets of its frame table and its version table.
    pub(super) frames_at: u64,
    pub(super) versions_at: u64,
    pub(super) versions: u64,
}

/// Wakes the spiller; `stop` ends it.
#[derive(Default)]
pub(super) struct SpillSignal {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl SpillSignal {
    pub(super) fn wake(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        self.cv.notify_one();
    }

    pub(super) fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_one();
    }

    /// Waits for a wake-up (or `retry`); false once stopped.
    pub(super) fn wait(&self, retry: Duration) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.0 && !st.1 {
            st = self.cv.wait_timeout(st, retry).unwrap_or_else(|e| e.into_inner()).0;
        }
        st.0 = false;
        !st.1
    }
}
