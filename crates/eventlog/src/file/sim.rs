//! A simulated filesystem for crash tests (redb's `CrashBackend` idea):
//! files and directories keep a durable and a volatile state; `sync_data`
//! and `sync_dir` make the volatile state durable. Power can be cut at the
//! N-th mutating operation, after which every operation fails; `crash`
//! then gives the filesystem as a reboot would find it, with unsynced
//! writes dropped, applied, or torn sector by sector.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::vfs::{StorageFile, Vfs};

/// How unsynced state survives a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing unsynced survives.
    DropUnsynced,
    /// Every unsynced write survives whole (as if the cache was flushed).
    KeepUnsynced,
    /// Each unsynced write is dropped, kept, or kept for a random subset of
    /// its 512-byte sectors; deterministic for a seed.
    Torn { seed: u64 },
}

#[derive(Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Default)]
struct Inode {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    durable_dirs: HashMap<PathBuf, BTreeMap<String, u64>>,
    volatile_dirs: HashMap<PathBuf, BTreeMap<String, u64>>,
    next_inode: u64,
    ops: u64,
    cut_at: Option<u64>,
    powered_off: bool,
    space_limit: Option<u64>,
    failing_syncs: u64,
    locks: std::collections::HashSet<PathBuf>,
    sync_delay: Option<std::time::Duration>,
    /// Bytes held by scratch files (counted against `space_limit`).
    scratch_bytes: u64,
    /// Scratch writes that succeed before they fail as on a full disk
    /// (None: no limit).
    scratch_writes_left: Option<u64>,
    /// Scratch writes failed that way.
    scratch_failures: u64,
}

impl State {
    /// Counts a mutating operation; fails once power is cut.
    fn tick(&mut self) -> io::Result<()> {
        if self.powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        self.ops += 1;
        if self.cut_at == Some(self.ops) {
            self.powered_off = true;
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }

    fn check_power(&self) -> io::Result<()> {
        if self.powered_off { Err(io::Error::other("simulated power loss")) } else { Ok(()) }
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.volatile.len() as u64).sum::<u64>() + self.scratch_bytes
    }
}

/// The simulated filesystem. Clones share state.
#[derive(Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVfs").finish_non_exhaustive()
    }
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, name)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl SimVfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes writes to scratch files fail as on a full disk (or work again).
    pub fn set_scratch_full(&self, full: bool) {
        self.lock().scratch_writes_left = full.then_some(0);
    }

    /// Lets `n` more writes to scratch files succeed, then fails the rest
    /// as on a full disk (until [`Self::set_scratch_full`]`(false)`).
    pub fn set_scratch_writes_left(&self, n: u64) {
        self.lock().scratch_writes_left = Some(n);
    }

    /// Writes to scratch files failed as on a full disk so far.
    pub fn scratch_write_failures(&self) -> u64 {
        self.lock().scratch_failures
    }

    /// Cuts power at the `n`-th mutating operation from now (1 = the next).
    pub fn cut_power_after(&self, n: u64) {
        let mut s = self.lock();
        s.cut_at = Some(s.ops + n);
    }

    /// Mutating operations (write, set_len, sync, create, rename, remove) so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Makes the next `n` `sync_data` calls fail with an I/O error; like a
    /// real failed fsync, nothing becomes durable.
    pub fn fail_syncs(&self, n: u64) {
        self.lock().failing_syncs = n;
    }

    /// Makes every `sync_data` take this long (outside the filesystem's
    /// lock), like a slow disk: other threads queue work meanwhile.
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.lock().sync_delay = delay;
    }

    /// Makes writes fail with `StorageFull` once files hold this many bytes.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        self.lock().space_limit = limit;
    }

    /// The filesystem as it is after a power cut now and a reboot.
    pub fn crash(&self, mode: CrashMode) -> SimVfs {
        let s = self.lock();
        let mut rng = match mode {
            CrashMode::Torn { seed } => seed | 1,
            _ => 1,
        };
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut inodes = HashMap::new();
        for (&id, inode) in &s.inodes {
            let mut data = inode.durable.clone();
            for op in &inode.pending {
                let keep = match mode {
                    CrashMode::DropUnsynced => 0,
                    CrashMode::KeepUnsynced => 1,
                    CrashMode::Torn { .. } => next() % 3,
                };
                match (op, keep) {
                    (_, 0) => {}
                    (Pending::SetLen(len), _) => data.resize(*len as usize, 0),
                    (Pending::Write { offset, data: bytes }, 1) => write_into(&mut data, *offset, bytes),
                    (Pending::Write { offset, data: bytes }, _) => {
                        // Torn: each 512-byte sector of the write lands or not.
                        let mut at = 0usize;
                        while at < bytes.len() {
                            let end = ((offset + at as u64) / 512 + 1) * 512 - offset;
                            let end = (end as usize).min(bytes.len());
                            if next() % 2 == 0 {
                                write_into(&mut data, offset + at as u64, &bytes[at..end]);
                            } else if data.len() < (*offset as usize + end) {
                                // The file grew but this sector holds zeros.
                                data.resize(*offset as usize + end, 0);
                            }
                            at = end;
                        }
                    }
                }
            }
            inodes.insert(id, Inode { durable: data.clone(), volatile: data, pending: Vec::new() });
        }
        let dirs = s.durable_dirs.clone();
        SimVfs {
            state: Arc::new(Mutex::new(State {
                inodes,
                durable_dirs: dirs.clone(),
                volatile_dirs: dirs,
                next_inode: s.next_inode,
                ..State::default()
            })),
        }
    }

    /// Every byte of every file, as the volatile state holds it (for scans).
    pub fn all_file_bytes(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let s = self.lock();
        let mut out = Vec::new();
        for (dir, entries) in &s.volatile_dirs {
            for (name, id) in entries {
                out.push((dir.join(name), s.inodes[id].volatile.clone()));
            }
        }
        out
    }

    /// Flips one bit of a file (for corruption tests), durable at once.
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let mut s = self.lock();
        let (dir, name) = split(path);
        let id = *s.volatile_dirs.get(&dir).and_then(|d| d.get(&name)).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&id).expect("inode of a dir entry");
        let byte = (bit / 8) as usize;
        if byte >= inode.volatile.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bit past end of file"));
        }
        inode.volatile[byte] ^= 1 << (bit % 8);
        inode.durable = inode.volatile.clone();
        Ok(())
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

/// Reads exactly `buf.len()` bytes of `data` at `offset`.
fn read_from(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let end = offset as usize + buf.len();
    if end > data.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
    }
    buf.copy_from_slice(&data[offset as usize..end]);
    Ok(())
}

struct SimFile {
    vfs: SimVfs,
    inode: u64,
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.vfs.lock();
        s.check_power()?;
        Ok(s.inodes[&self.inode].volatile.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.vfs.lock();
        s.check_power()?;
        read_from(&s.inodes[&self.inode].volatile, offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.vfs.lock();
        s.tick()?;
        if let Some(limit) = s.space_limit {
            let len = s.inodes[&self.inode].volatile.len() as u64;
            let growth = (offset + data.len() as u64).saturating_sub(len);
            let free = limit.saturating_sub(s.used_bytes());
            if growth > free {
                // Like write(2) on a full disk: what fits lands, then ENOSPC.
                let fits = (len + free).saturating_sub(offset).min(data.len() as u64) as usize;
                let inode = s.inodes.get_mut(&self.inode).expect("open inode");
                write_into(&mut inode.volatile, offset, &data[..fits]);
                inode.pending.push(Pending::Write { offset, data: data[..fits].to_vec() });
                return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated full disk"));
            }
        }
        let inode = s.inodes.get_mut(&self.inode).expect("open inode");
        write_into(&mut inode.volatile, offset, data);
        inode.pending.push(Pending::Write { offset, data: data.to_vec() });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.vfs.lock();
        s.tick()?;
        let inode = s.inodes.get_mut(&self.inode).expect("open inode");
        inode.volatile.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.vfs.lock().sync_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut s = self.vfs.lock();
        s.tick()?;
        if s.failing_syncs > 0 {
            s.failing_syncs -= 1;
            return Err(io::Error::other("simulated fsync failure"));
        }
        let inode = s.inodes.get_mut(&self.inode).expect("open inode");
        inode.durable = inode.volatile.clone();
        inode.pending.clear();
        Ok(())
    }
}

/// A scratch file: in memory, never durable, outside every directory and
/// the crash model (a crash drops it), but counted against the space limit
/// and failing once power is cut.
struct SimScratch {
    vfs: SimVfs,
    data: Mutex<Vec<u8>>,
}

impl StorageFile for SimScratch {
    fn len(&self) -> io::Result<u64> {
        self.vfs.lock().check_power()?;
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.vfs.lock().check_power()?;
        read_from(&self.data.lock().unwrap_or_else(|e| e.into_inner()), offset, buf)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.vfs.lock();
        s.check_power()?;
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let growth = (offset + bytes.len() as u64).saturating_sub(data.len() as u64);
        if s.scratch_writes_left == Some(0)
            || s.space_limit.is_some_and(|limit| growth > limit.saturating_sub(s.used_bytes()))
        {
            s.scratch_failures += 1;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated full disk"));
        }
        if let Some(left) = &mut s.scratch_writes_left {
            *left -= 1;
        }
        s.scratch_bytes += growth;
        write_into(&mut data, offset, bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.vfs.lock();
        s.check_power()?;
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        s.scratch_bytes = (s.scratch_bytes + len).saturating_sub(data.len() as u64);
        data.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.vfs.lock().check_power()
    }
}

impl Drop for SimScratch {
    fn drop(&mut self) {
        let len = self.data.get_mut().map(|d| d.len()).unwrap_or(0) as u64;
        let mut s = self.vfs.lock();
        s.scratch_bytes = s.scratch_bytes.saturating_sub(len);
    }
}

/// A held lock of the simulated filesystem; released on drop.
struct SimLock {
    vfs: SimVfs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.vfs.lock().locks.remove(&self.path);
    }
}

impl Vfs for SimVfs {
    fn scratch(&self, dir: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let s = self.lock();
        s.check_power()?;
        if !s.volatile_dirs.contains_key(dir) {
            return Err(not_found(dir));
        }
        Ok(Arc::new(SimScratch { vfs: self.clone(), data: Mutex::new(Vec::new()) }))
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        if !self.lock().locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "held by another process"));
        }
        Ok(Box::new(SimLock { vfs: self.clone(), path: path.to_path_buf() }))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.check_power()?;
        // Directories themselves are assumed durable once made (the log
        // creates them once, before any data).
        let mut p = PathBuf::new();
        for c in dir.components() {
            p.push(c);
            s.volatile_dirs.entry(p.clone()).or_default();
            s.durable_dirs.entry(p.clone()).or_default();
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.check_power()?;
        let entries = s.volatile_dirs.get(dir).ok_or_else(|| not_found(dir))?;
        // Like read_dir: files and subdirectories.
        let subdirs = s.volatile_dirs.keys().filter(|d| d.parent() == Some(dir)).filter_map(|d| d.file_name());
        let mut names: Vec<String> =
            entries.keys().cloned().chain(subdirs.map(|n| n.to_string_lossy().into_owned())).collect();
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        let (dir, name) = split(path);
        s.volatile_dirs.contains_key(path) || s.volatile_dirs.get(&dir).is_some_and(|d| d.contains_key(&name))
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.lock();
        s.check_power()?;
        let (dir, name) = split(path);
        if !s.volatile_dirs.contains_key(&dir) {
            return Err(not_found(&dir));
        }
        if let Some(&id) = s.volatile_dirs[&dir].get(&name) {
            return Ok(Arc::new(SimFile { vfs: self.clone(), inode: id }));
        }
        if !create {
            return Err(not_found(path));
        }
        s.tick()?;
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(id, Inode::default());
        s.volatile_dirs.get_mut(&dir).expect("checked").insert(name, id);
        Ok(Arc::new(SimFile { vfs: self.clone(), inode: id }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let (fdir, fname) = split(from);
        let (tdir, tname) = split(to);
        let id = s.volatile_dirs.get_mut(&fdir).and_then(|d| d.remove(&fname)).ok_or_else(|| not_found(from))?;
        s.volatile_dirs.get_mut(&tdir).ok_or_else(|| not_found(&tdir))?.insert(tname, id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let (dir, name) = split(path);
        s.volatile_dirs.get_mut(&dir).and_then(|d| d.remove(&name)).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let entries = s.volatile_dirs.get(dir).cloned().ok_or_else(|| not_found(dir))?;
        s.durable_dirs.insert(dir.to_path_buf(), entries);
        Ok(())
    }
}
