//! A data directory is pypes' or refused (docs/operations.md, "The data
//! directory"). `serve` makes one only where there is nothing (an absent
//! or empty directory), marks it with `pypes-data.toml` (its format
//! version), and refuses a directory holding anything pypes did not put
//! there, naming what it found. A directory from before the marker (every
//! entry one pypes writes) is adopted and marked. A start that fails
//! before serving removes what it made in a directory it made.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The marker file.
pub const MARKER: &str = "pypes-data.toml";
/// The data directory format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What pypes writes at the top of a data directory.
const TOP: &[&str] = &[
    MARKER,
    "admin.key",
    "audit.head",
    "audit.checkpoint",
    "blobs",
    keystore::embedded::KEYS_DIR,
    "log",
    "log-signing.key",
    "node.id",
    keystore::embedded::PROVIDER_DIR,
    keystore::embedded::ROOT_KEY_FILE,
    "views",
];
/// What the file event log writes in `log/`.
const LOG: &[&str] = &["LOCK", "head.sig", "segments", "signing.pub"];
/// A file system's own entry at the root of a mount (an empty volume).
const MOUNT_ENTRIES: &[&str] = &["lost+found"];

/// What `inspect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such directory.
    Absent,
    /// A directory with nothing in it (or only `lost+found`).
    Empty,
    /// Marked, of a format this build reads.
    Marked,
    /// Unmarked, but everything in it is what pypes writes: a data
    /// directory from before the marker.
    Unmarked,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    format: u32,
    #[allow(dead_code)]
    created: Option<String>,
}

fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading the data directory {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading the data directory {}", dir.display()))?;
        out.push(entry.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

fn is_tmp(name: &str) -> bool {
    name.ends_with(".tmp")
}

fn foreign(dir: &Path, what: &[String]) -> anyhow::Error {
    let shown: Vec<&str> = what.iter().take(5).map(String::as_str).collect();
    let more = if what.len() > shown.len() { format!(" and {} more", what.len() - shown.len()) } else { String::new() };
    anyhow::anyhow!(
        "{} is not a pypes data directory: it holds {}{more}, which pypes did not write, and no {MARKER}. \
         Give --data-dir a new or empty directory (or the data directory of a pypes node)",
        dir.display(),
        shown.join(", ")
    )
}

/// Reads (never writes) what `dir` is; refuses anything else by name.
pub fn inspect(dir: &Path) -> anyhow::Result<Found> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => anyhow::bail!("data directory {}: {e}", dir.display()),
        Ok(m) if !m.is_dir() => anyhow::bail!("data directory {} is a file, not a directory", dir.display()),
        Ok(_) => {}
    }
    let all = names(dir)?;
    let entries: Vec<String> = all.into_iter().filter(|n| !MOUNT_ENTRIES.contains(&n.as_str())).collect();
    if entries.is_empty() {
        return Ok(Found::Empty);
    }
    let marker = dir.join(MARKER);
    if marker.exists() {
        let text = std::fs::read_to_string(&marker).with_context(|| format!("reading {}", marker.display()))?;
        let m: Marker = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is damaged ({e}); it should say `format = {FORMAT}`", marker.display()))?;
        if m.format > FORMAT {
            anyhow::bail!(
                "{} is data format {}, written by a newer pypes; this build reads format {FORMAT}: run the newer build",
                dir.display(),
                m.format
            );
        }
        if m.format == 0 {
            anyhow::bail!("{}: format 0 is not a data format; it should say `format = {FORMAT}`", marker.display());
        }
        return Ok(Found::Marked);
    }
    let strangers: Vec<String> = entries.iter().filter(|n| !TOP.contains(&n.as_str()) && !is_tmp(n)).cloned().collect();
    if !strangers.is_empty() {
        return Err(foreign(dir, &strangers));
    }
    let log = dir.join("log");
    if log.is_dir() {
        let strangers: Vec<String> = names(&log)?
            .into_iter()
            .filter(|n| !LOG.contains(&n.as_str()) && !is_tmp(n))
            .map(|n| format!("log/{n}"))
            .collect();
        if !strangers.is_empty() {
            return Err(foreign(dir, &strangers));
        }
    }
    Ok(Found::Unmarked)
}

/// A data directory this start may use; when it was made by this start,
/// dropping the claim before [`Claim::keep`] removes what the start made
/// (a start that fails leaves nothing behind).
#[derive(Debug)]
pub struct Claim {
    dir: PathBuf,
    /// Made by this start: `Some(true)` the directory itself, `Some(false)`
    /// its contents only (it existed, empty).
    made: Option<bool>,
}

impl Claim {
    /// True when the directory held pypes data before this start.
    pub fn existed(&self) -> bool {
        self.made.is_none()
    }

    /// The start succeeded: keep everything.
    pub fn keep(mut self) {
        self.made = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        match self.made {
            None => {}
            Some(true) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Some(false) => {
                if let Ok(names) = names(&self.dir) {
                    for n in names.iter().filter(|n| !MOUNT_ENTRIES.contains(&n.as_str())) {
                        let p = self.dir.join(n);
                        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                    }
                }
            }
        }
    }
}

/// Checks `dir` and marks it (creating it when absent).
pub fn claim(dir: &Path) -> anyhow::Result<Claim> {
    let found = inspect(dir)?;
    let made = match found {
        Found::Absent => Some(true),
        Found::Empty => Some(false),
        Found::Marked | Found::Unmarked => None,
    };
    if found == Found::Absent {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let claim = Claim { dir: dir.to_path_buf(), made };
    if found != Found::Marked {
        write_marker(dir)?;
        if found == Found::Unmarked {
            tracing::info!(dir = %dir.display(), format = FORMAT, "marked a data directory from before the marker");
        }
    }
    Ok(claim)
}

/// Writes the marker (a restore marks the directory it made).
pub fn write_marker(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(MARKER);
    let tmp = dir.join(format!("{MARKER}.tmp"));
    let text = format!(
        "# The data of one pypes node (docs/operations.md). Do not edit or copy this\n\
         # file into another directory; `pypes restore` writes it.\nformat = {FORMAT}\ncreated = \"{}\"\n",
        audit::time::time_text(eventlog::Clock::now_micros(&eventlog::SystemClock))
    );
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nothing_or_pypes_data_is_taken() {
        let t = tempfile::tempdir().unwrap();
        let new = t.path().join("new");
        assert_eq!(inspect(&new).unwrap(), Found::Absent);
        let c = claim(&new).unwrap();
        assert!(!c.existed());
        assert!(new.join(MARKER).exists());
        drop(c);
        assert!(!new.exists(), "a failed start removes the directory it made");

        let kept = t.path().join("kept");
        claim(&kept).unwrap().keep();
        std::fs::write(kept.join("admin.key"), "k").unwrap();
        assert_eq!(inspect(&kept).unwrap(), Found::Marked);
        assert!(claim(&kept).unwrap().existed());

        let checkout = t.path().join("checkout");
        std::fs::create_dir_all(checkout.join(".git")).unwrap();
        std::fs::write(checkout.join("Cargo.toml"), "").unwrap();
        let e = claim(&checkout).unwrap_err().to_string();
        assert!(e.contains("is not a pypes data directory") && e.contains(".git, Cargo.toml"), "{e}");
        assert!(!checkout.join(MARKER).exists(), "nothing written into a refused directory");

        let other_log = t.path().join("other");
        std::fs::create_dir_all(other_log.join("log")).unwrap();
        std::fs::write(other_log.join("log/syslog.1"), "").unwrap();
        let e = claim(&other_log).unwrap_err().to_string();
        assert!(e.contains("log/syslog.1"), "{e}");

        let old = t.path().join("old");
        std::fs::create_dir_all(old.join("log/segments")).unwrap();
        std::fs::write(old.join("log-signing.key"), "k").unwrap();
        assert_eq!(inspect(&old).unwrap(), Found::Unmarked);
        let c = claim(&old).unwrap();
        assert!(c.existed());
        drop(c);
        assert!(old.join("log-signing.key").exists() && old.join(MARKER).exists(), "adopted, never removed");

        std::fs::write(kept.join(MARKER), "format = 9\n").unwrap();
        let e = claim(&kept).unwrap_err().to_string();
        assert!(e.contains("format 9, written by a newer pypes"), "{e}");
        std::fs::write(kept.join(MARKER), "formt = 1\n").unwrap();
        assert!(claim(&kept).unwrap_err().to_string().contains("is damaged"));

        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(claim(&file).unwrap_err().to_string().contains("is a file"));
    }

    #[test]
    fn an_empty_directory_is_emptied_again_after_a_failed_start() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("lost+found")).unwrap();
        let c = claim(t.path()).unwrap();
        std::fs::create_dir(t.path().join("keys")).unwrap();
        drop(c);
        assert_eq!(names(t.path()).unwrap(), vec!["lost+found".to_string()]);
    }
}
