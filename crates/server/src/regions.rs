//! The global tenant directory on files (docs/residency.md): one file per
//! tenant, `<directory>/tenants/<tenant id>`, holding its region's name
//! and a newline (`eu\n`), or while the tenant moves, both regions
//! (`eu>us\n`). Nothing else is in it: no name, no key, no personal
//! data. Written at the tenant's creation by linking a fsync'd temporary
//! file into place (a second placement of the same tenant fails, so a
//! region is fixed), and by a move's freeze and switch by renaming one
//! over it under the directory's lock (`tenants/.lock`, a compare and
//! set); the directory is fsync'd after each. Several nodes (processes)
//! may share it: every write is a new file.

use std::io::Write;
use std::path::{Path, PathBuf};

use app::regions::Placement;
use uuid::Uuid;

pub struct FileDirectory {
    dir: PathBuf,
}

impl FileDirectory {
    /// Opens (making it if need be) the directory at `root`.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("tenants");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("regions.directory {}: cannot make {}: {e}", root.display(), dir.display()))?;
        Ok(Self { dir })
    }

    fn path(&self, tenant: Uuid) -> PathBuf {
        self.dir.join(tenant.to_string())
    }
}

fn valid_region(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn parse_placement(text: &str) -> Option<Placement> {
    let line = text.strip_suffix('\n')?;
    match line.split_once('>') {
        None => valid_region(line).then(|| Placement::settled(line)),
        Some((from, to)) => (valid_region(from) && valid_region(to) && from != to)
            .then(|| Placement { region: from.into(), moving_to: Some(to.into()) }),
    }
}

fn placement_text(p: &Placement) -> String {
    match &p.moving_to {
        None => format!("{}\n", p.region),
        Some(to) => format!("{}>{to}\n", p.region),
    }
}

impl FileDirectory {
    fn read(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
        let path = self.path(tenant);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_placement(&text).map(Some).ok_or_else(|| {
                format!("{} does not hold a region's name (or two, `from>to`) and a newline (damaged)", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// A fsync'd temporary file holding `text`, beside the entries.
    fn temporary(&self, tenant: Uuid, text: &str) -> Result<PathBuf, String> {
        let tmp = self.dir.join(format!(".{tenant}.{}.tmp", Uuid::now_v7()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing {}: {e}", tmp.display())
        })?;
        Ok(tmp)
    }

    fn sync(&self) -> Result<(), String> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))
    }
}

impl app::regions::TenantDirectory for FileDirectory {
    fn placement(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
        self.read(tenant)
    }

    fn replace(&self, tenant: Uuid, from: &Placement, to: &Placement) -> Result<(), String> {
        for p in [from, to] {
            if parse_placement(&placement_text(p)).as_ref() != Some(p) {
                return Err(format!("{p:?} is not a placement"));
            }
        }
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
        lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
        let now = self.read(tenant)?;
        if now.as_ref() != Some(from) {
            let now = now.map_or("not placed".to_string(), |p| placement_text(&p).trim_end().to_string());
            return Err(format!(
                "tenant {tenant} is placed `{now}` in the directory, not `{}`",
                placement_text(from).trim_end()
            ));
        }
        let tmp = self.temporary(tenant, &placement_text(to))?;
        let path = self.path(tenant);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("replacing {}: {e}", path.display())
        })?;
        self.sync()
    }

    fn place(&self, tenant: Uuid, region: &str) -> Result<(), String> {
        if !valid_region(region) {
            return Err(format!("{region:?} is not a region's name"));
        }
        let path = self.path(tenant);
        let tmp = self.temporary(tenant, &format!("{region}\n"))?;
        let placed = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match placed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!("tenant {tenant} is placed already ({})", path.display()));
            }
            Err(e) => return Err(format!("writing {}: {e}", path.display())),
        }
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::regions::TenantDirectory;

    #[test]
    fn a_tenant_is_placed_once_and_damage_is_named() {
        let root = tempfile::tempdir().unwrap();
        let d = FileDirectory::open(root.path()).unwrap();
        let t = Uuid::now_v7();
        assert_eq!(d.placement(t).unwrap(), None);
        d.place(t, "eu").unwrap();
        let eu = Placement::settled("eu");
        assert_eq!(d.placement(t).unwrap(), Some(eu.clone()));
        assert!(d.place(t, "us").unwrap_err().contains("placed already"));
        assert_eq!(d.placement(t).unwrap(), Some(eu.clone()));
        // Another process's view of the same directory.
        assert_eq!(FileDirectory::open(root.path()).unwrap().placement(t).unwrap(), Some(eu.clone()));
        // A move: compare and set, each step seen by another process.
        let moving = Placement { region: "eu".into(), moving_to: Some("us".into()) };
        d.replace(t, &eu, &moving).unwrap();
        assert_eq!(std::fs::read(root.path().join("tenants").join(t.to_string())).unwrap(), b"eu>us\n");
        let stale = d.replace(t, &eu, &moving).unwrap_err();
        assert!(stale.contains("`eu>us`") && stale.contains("not `eu`"), "{stale}");
        d.replace(t, &moving, &Placement::settled("us")).unwrap();
        assert_eq!(FileDirectory::open(root.path()).unwrap().placement(t).unwrap(), Some(Placement::settled("us")));
        std::fs::write(root.path().join("tenants").join(t.to_string()), "EU").unwrap();
        assert!(d.placement(t).unwrap_err().contains("damaged"));
        std::fs::write(root.path().join("tenants").join(t.to_string()), "eu>eu\n").unwrap();
        assert!(d.placement(t).unwrap_err().contains("damaged"));
        // Nothing but the region's name is written.
        let u = Uuid::now_v7();
        d.place(u, "us").unwrap();
        assert_eq!(std::fs::read(root.path().join("tenants").join(u.to_string())).unwrap(), b"us\n");
        let entries: Vec<String> = std::fs::read_dir(root.path().join("tenants"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
    }
}
