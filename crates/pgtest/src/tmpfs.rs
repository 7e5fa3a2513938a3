//! A small tmpfs of a test's own, for disks that fill up (the full-disk
//! tests). Mounting needs root (CI runs as root); elsewhere [`Tmpfs::mount`]
//! returns `None` and the caller reports the test as skipped, unless
//! `PYPES_REQUIRE_ROOT=1` makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `6m`) at
    /// `at`, creating the directory.
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("creating {}: {e}", at.display()));
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Self(at.to_path_buf()));
        }
        if std::env::var("PYPES_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("PYPES_REQUIRE_ROOT=1 but a tmpfs could not be mounted at {}", at.display());
        }
        eprintln!("SKIPPED: mounting a small tmpfs needs root (a full-disk test)");
        None
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Grows or shrinks the filesystem in place.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap_or_else(|e| panic!("remount {}: {e}", self.0.display()));
        assert!(status.success(), "remount {} to {size}", self.0.display());
    }

    /// Writes a file of zeros at `path` until the filesystem refuses with
    /// ENOSPC (or `limit` bytes are written); returns the bytes written.
    pub fn fill(path: &Path, limit: u64) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        while written < limit {
            match f.write(&chunk[..chunk.len().min((limit - written) as usize)]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
