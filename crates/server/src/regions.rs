//! The global tenant directory on files (docs/residency.md): one file per
//! tenant, `<directory>/tenants/<tenant id>`, holding its region's name
//! and a newline. Nothing else is in it: no name, no key, no personal
//! data. Written once, at the tenant's creation, by linking a fsync'd
//! temporary file into place (a second placement of the same tenant
//! fails, so a region is fixed); the directory is fsync'd after. Several
//! nodes (processes) may share it: every write is a new file.

use std::io::Write;
use std::path::{Path, PathBuf};

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

impl app::regions::TenantDirectory for FileDirectory {
    fn region_of(&self, tenant: Uuid) -> Result<Option<String>, String> {
        let path = self.path(tenant);
        match std::fs::read_to_string(&path) {
            Ok(text) => match text.strip_suffix('\n') {
                Some(r) if valid_region(r) => Ok(Some(r.to_string())),
                _ => Err(format!("{} does not hold a region's name and a newline (damaged)", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    fn place(&self, tenant: Uuid, region: &str) -> Result<(), String> {
        if !valid_region(region) {
            return Err(format!("{region:?} is not a region's name"));
        }
        let path = self.path(tenant);
        let tmp = self.dir.join(format!(".{tenant}.{}.tmp", Uuid::now_v7()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(format!("{region}\n").as_bytes())?;
            f.sync_all()
        };
        let placed = write().and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match placed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(format!("tenant {tenant} is placed already ({})", path.display()));
            }
            Err(e) => return Err(format!("writing {}: {e}", path.display())),
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", self.dir.display()))
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
        assert_eq!(d.region_of(t).unwrap(), None);
        d.place(t, "eu").unwrap();
        assert_eq!(d.region_of(t).unwrap().as_deref(), Some("eu"));
        assert!(d.place(t, "us").unwrap_err().contains("placed already"));
        assert_eq!(d.region_of(t).unwrap().as_deref(), Some("eu"));
        // Another process's view of the same directory.
        assert_eq!(FileDirectory::open(root.path()).unwrap().region_of(t).unwrap().as_deref(), Some("eu"));
        std::fs::write(root.path().join("tenants").join(t.to_string()), "EU").unwrap();
        assert!(d.region_of(t).unwrap_err().contains("damaged"));
        // Nothing but the region's name is written.
        let u = Uuid::now_v7();
        d.place(u, "us").unwrap();
        assert_eq!(std::fs::read(root.path().join("tenants").join(u.to_string())).unwrap(), b"us\n");
        assert_eq!(std::fs::read_dir(root.path().join("tenants")).unwrap().count(), 2);
    }
}
