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

use app::regions::{DIRECTORY_REFRESH, DirFuture, Placement, TenantDirectory};
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

impl FileDirectory {
    fn replace_now(&self, tenant: Uuid, from: &Placement, to: &Placement) -> Result<(), String> {
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

    fn place_now(&self, tenant: Uuid, region: &str) -> Result<(), String> {
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

impl TenantDirectory for FileDirectory {
    fn placement(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
        self.read(tenant)
    }

    fn fresh(&self, tenant: Uuid) -> DirFuture<'_, Option<Placement>> {
        Box::pin(async move { self.read(tenant) })
    }

    fn place<'a>(&'a self, tenant: Uuid, region: &'a str) -> DirFuture<'a, ()> {
        Box::pin(async move { self.place_now(tenant, region) })
    }

    fn replace<'a>(&'a self, tenant: Uuid, from: &'a Placement, to: &'a Placement) -> DirFuture<'a, ()> {
        Box::pin(async move { self.replace_now(tenant, from, to) })
    }
}

/// The global tenant directory on PostgreSQL (`regions.directory_url`):
/// one row per tenant, `pypes_tenant_directory (tenant, region,
/// moving_to, version)`, and nothing else (no name, no key, no personal
/// data). Every node keeps a copy in memory, read at start and then every
/// [`DIRECTORY_REFRESH`] for the rows changed since (`version` comes from
/// one sequence), so a lookup of a known tenant never waits on the
/// database. A tenant the copy does not hold (made by another node since
/// the last refresh) is read from its row at once, by a thread of its own
/// (so a call never acts on a tenant of another region for want of a
/// refresh); a move's steps read the row itself. Placing is an `INSERT …
/// ON CONFLICT DO NOTHING` (a second placement fails); a move's freeze and
/// switch are an `UPDATE … WHERE` the row is still what the step expects.
/// Each of the three connections (writes, refresh, lookups) is made again
/// at its next use after it ends.
pub struct PgDirectory {
    url: String,
    /// The connection for writes and a move's reads (made again when it ends).
    client: tokio::sync::Mutex<tokio_postgres::Client>,
    mirror: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<Uuid, Placement>>>,
    name: String,
    /// Reads of tenants the copy does not hold, answered by the lookup thread.
    lookups: std::sync::Mutex<std::sync::mpsc::Sender<Lookup>>,
}

type Lookup = (Uuid, std::sync::mpsc::Sender<Result<Option<Placement>, String>>);

/// How long a call waits for the lookup thread, at most.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const PG_SCHEMA: &str = "CREATE SEQUENCE IF NOT EXISTS pypes_tenant_directory_version; \
    CREATE TABLE IF NOT EXISTS pypes_tenant_directory (\
      tenant text PRIMARY KEY, region text NOT NULL, moving_to text, version bigint NOT NULL)";

fn row_placement(row: &tokio_postgres::Row) -> Result<(Uuid, Placement, i64), String> {
    let tenant: String = row.get(0);
    let tenant =
        Uuid::parse_str(&tenant).map_err(|_| format!("a row names tenant {tenant:?}, not a UUID (damaged)"))?;
    let p = Placement { region: row.get(1), moving_to: row.get(2) };
    if parse_placement(&placement_text(&p)).as_ref() != Some(&p) {
        return Err(format!("tenant {tenant}'s row holds {p:?}, not a placement (damaged)"));
    }
    Ok((tenant, p, row.get(3)))
}

/// A connection to the directory's database, driven on the current runtime.
async fn connect(url: &str, name: &str, role: &'static str) -> Result<tokio_postgres::Client, String> {
    let target = pgconn::target(url).map_err(|e| format!("{name}: {e}"))?;
    let (client, connection) =
        target.config.connect(target.tls.clone()).await.map_err(|e| format!("{name}: {}", pgconn::describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, role, "tenant directory database connection ended; made again at its next use");
        }
    });
    Ok(client)
}

/// `client`, made again first if its connection has ended.
async fn reconnected(
    client: &mut tokio_postgres::Client,
    url: &str,
    name: &str,
    role: &'static str,
) -> Result<(), String> {
    if client.is_closed() {
        *client = connect(url, name, role).await?;
        tracing::info!(role, "tenant directory database connection made again");
    }
    Ok(())
}

impl PgDirectory {
    /// Connects, makes the table on first use, reads it whole, and keeps
    /// following it.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let name = eventlog::redact_url(url);
        let fail = |e: String| anyhow::anyhow!("regions.directory_url: {e}");
        let client = connect(url, &name, "writes").await.map_err(fail)?;
        client
            .batch_execute(&format!(
                "SET client_min_messages TO warning; SELECT pg_advisory_lock(7364); {PG_SCHEMA}; \
                 SELECT pg_advisory_unlock(7364)"
            ))
            .await
            .map_err(|e| fail(format!("{name}: {}", pgconn::describe(&e))))?;
        let mirror = std::sync::Arc::new(std::sync::RwLock::new(std::collections::HashMap::new()));
        let mut follower = connect(url, &name, "refresh").await.map_err(fail)?;
        let last = Self::refresh(&follower, &mirror, -1).await.map_err(fail)?;
        let lookups = Self::lookup_thread(url.to_string(), name.clone(), mirror.clone())?;
        let (following, url_for, name_for) = (mirror.clone(), url.to_string(), name.clone());
        tokio::spawn(async move {
            let mut last = last;
            let mut every = tokio::time::interval(DIRECTORY_REFRESH);
            loop {
                every.tick().await;
                let read = match reconnected(&mut follower, &url_for, &name_for, "refresh").await {
                    Ok(()) => Self::refresh(&follower, &following, last).await,
                    Err(e) => Err(e),
                };
                match read {
                    Ok(v) => last = v,
                    Err(e) => {
                        tracing::warn!(error = %e, "the tenant directory cannot be read; placements may be stale")
                    }
                }
            }
        });
        Ok(Self {
            url: url.to_string(),
            client: tokio::sync::Mutex::new(client),
            mirror,
            name,
            lookups: std::sync::Mutex::new(lookups),
        })
    }

    /// A thread with its own runtime and connection that reads single
    /// rows for callers that cannot wait asynchronously.
    fn lookup_thread(
        url: String,
        name: String,
        mirror: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<Uuid, Placement>>>,
    ) -> anyhow::Result<std::sync::mpsc::Sender<Lookup>> {
        let (tx, rx) = std::sync::mpsc::channel::<Lookup>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new().name("pypes-directory".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("a runtime for the directory's lookups: {e}")));
                    return;
                }
            };
            let mut client = match rt.block_on(connect(&url, &name, "lookups")) {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(()));
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok((tenant, answer)) = rx.recv() {
                let found = rt.block_on(async {
                    reconnected(&mut client, &url, &name, "lookups").await?;
                    match Self::read_row(&client, &name, tenant).await {
                        Err(_) if client.is_closed() => {
                            reconnected(&mut client, &url, &name, "lookups").await?;
                            Self::read_row(&client, &name, tenant).await
                        }
                        r => r,
                    }
                });
                if let Ok(Some(p)) = &found {
                    mirror.write().unwrap_or_else(|e| e.into_inner()).insert(tenant, p.clone());
                }
                let _ = answer.send(found);
            }
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the directory's lookup thread stopped"))?
            .map_err(|e| anyhow::anyhow!("regions.directory_url: {e}"))?;
        Ok(tx)
    }

    /// The connection for writes, made again if it ended.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, tokio_postgres::Client>, String> {
        let mut client = self.client.lock().await;
        reconnected(&mut client, &self.url, &self.name, "writes").await?;
        Ok(client)
    }

    async fn read_row(client: &tokio_postgres::Client, name: &str, tenant: Uuid) -> Result<Option<Placement>, String> {
        let rows = client
            .query(
                "SELECT tenant, region, moving_to, version FROM pypes_tenant_directory WHERE tenant = $1",
                &[&tenant.to_string()],
            )
            .await
            .map_err(|e| format!("{name}: {}", pgconn::describe(&e)))?;
        match rows.first() {
            None => Ok(None),
            Some(row) => row_placement(row).map(|(_, p, _)| Some(p)),
        }
    }

    /// Takes in the rows changed after `after`; the newest version seen.
    async fn refresh(
        client: &tokio_postgres::Client,
        mirror: &std::sync::RwLock<std::collections::HashMap<Uuid, Placement>>,
        after: i64,
    ) -> Result<i64, String> {
        let rows = client
            .query(
                "SELECT tenant, region, moving_to, version FROM pypes_tenant_directory WHERE version > $1 ORDER BY version",
                &[&after],
            )
            .await
            .map_err(|e| pgconn::describe(&e))?;
        let mut last = after;
        let mut m = mirror.write().unwrap_or_else(|e| e.into_inner());
        for row in &rows {
            let (tenant, p, version) = row_placement(row)?;
            m.insert(tenant, p);
            last = last.max(version);
        }
        Ok(last)
    }

    fn remember(&self, tenant: Uuid, p: Placement) {
        self.mirror.write().unwrap_or_else(|e| e.into_inner()).insert(tenant, p);
    }

    /// A statement on the writes connection; once more on a new connection
    /// when the first try found the old one ended (a database restart, a
    /// cut): the statements are written to be repeated.
    /// Rows changed, and whether it took a second try.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(u64, bool), String> {
        let mut client = self.writer().await?;
        let result = match client.execute(sql, params).await {
            Err(_) if client.is_closed() => {
                reconnected(&mut client, &self.url, &self.name, "writes").await?;
                client.execute(sql, params).await.map(|n| (n, true))
            }
            r => r.map(|n| (n, false)),
        };
        result.map_err(|e| format!("{}: {}", self.name, pgconn::describe(&e)))
    }

    async fn row(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
        let mut client = self.writer().await?;
        let found = match Self::read_row(&client, &self.name, tenant).await {
            Err(_) if client.is_closed() => {
                reconnected(&mut client, &self.url, &self.name, "writes").await?;
                Self::read_row(&client, &self.name, tenant).await?
            }
            r => r?,
        };
        drop(client);
        if let Some(p) = &found {
            self.remember(tenant, p.clone());
        }
        Ok(found)
    }
}

impl TenantDirectory for PgDirectory {
    fn placement(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
        if let Some(p) = self.mirror.read().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            return Ok(Some(p.clone()));
        }
        // Not in the copy: perhaps placed by another node since the last refresh.
        let (tx, rx) = std::sync::mpsc::channel();
        self.lookups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((tenant, tx))
            .map_err(|_| format!("{}: the directory's lookup thread stopped", self.name))?;
        rx.recv_timeout(LOOKUP_TIMEOUT)
            .map_err(|_| format!("{}: no answer from the directory within {LOOKUP_TIMEOUT:?}", self.name))?
    }

    fn fresh(&self, tenant: Uuid) -> DirFuture<'_, Option<Placement>> {
        Box::pin(self.row(tenant))
    }

    fn place<'a>(&'a self, tenant: Uuid, region: &'a str) -> DirFuture<'a, ()> {
        Box::pin(async move {
            if !valid_region(region) {
                return Err(format!("{region:?} is not a region's name"));
            }
            let (n, retried) = self
                .execute(
                    "INSERT INTO pypes_tenant_directory (tenant, region, moving_to, version) \
                     VALUES ($1, $2, NULL, nextval('pypes_tenant_directory_version')) ON CONFLICT (tenant) DO NOTHING",
                    &[&tenant.to_string(), &region],
                )
                .await?;
            let placed_by_first_try = retried && self.row(tenant).await?.as_ref() == Some(&Placement::settled(region));
            if n == 0 && !placed_by_first_try {
                return Err(format!("tenant {tenant} is placed already ({})", self.name));
            }
            self.remember(tenant, Placement::settled(region));
            Ok(())
        })
    }

    fn replace<'a>(&'a self, tenant: Uuid, from: &'a Placement, to: &'a Placement) -> DirFuture<'a, ()> {
        Box::pin(async move {
            for p in [from, to] {
                if parse_placement(&placement_text(p)).as_ref() != Some(p) {
                    return Err(format!("{p:?} is not a placement"));
                }
            }
            let (n, retried) = self
                .execute(
                    "UPDATE pypes_tenant_directory SET region = $4, moving_to = $5, \
                     version = nextval('pypes_tenant_directory_version') \
                     WHERE tenant = $1 AND region = $2 AND moving_to IS NOT DISTINCT FROM $3",
                    &[&tenant.to_string(), &from.region, &from.moving_to, &to.region, &to.moving_to],
                )
                .await?;
            if n == 0 {
                let now = self.row(tenant).await?;
                if retried && now.as_ref() == Some(to) {
                    // Written by a first try whose answer was lost with its connection.
                    self.remember(tenant, to.clone());
                    return Ok(());
                }
                let now = now.map_or("not placed".to_string(), |p| placement_text(&p).trim_end().to_string());
                return Err(format!(
                    "tenant {tenant} is placed `{now}` in the directory, not `{}`",
                    placement_text(from).trim_end()
                ));
            }
            self.remember(tenant, to.clone());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_placed_once_and_damage_is_named() {
        let root = tempfile::tempdir().unwrap();
        let d = FileDirectory::open(root.path()).unwrap();
        let t = Uuid::now_v7();
        assert_eq!(d.placement(t).unwrap(), None);
        d.place_now(t, "eu").unwrap();
        let eu = Placement::settled("eu");
        assert_eq!(d.placement(t).unwrap(), Some(eu.clone()));
        assert!(d.place_now(t, "us").unwrap_err().contains("placed already"));
        assert_eq!(d.placement(t).unwrap(), Some(eu.clone()));
        // Another process's view of the same directory.
        assert_eq!(FileDirectory::open(root.path()).unwrap().placement(t).unwrap(), Some(eu.clone()));
        // A move: compare and set, each step seen by another process.
        let moving = Placement { region: "eu".into(), moving_to: Some("us".into()) };
        d.replace_now(t, &eu, &moving).unwrap();
        assert_eq!(std::fs::read(root.path().join("tenants").join(t.to_string())).unwrap(), b"eu>us\n");
        let stale = d.replace_now(t, &eu, &moving).unwrap_err();
        assert!(stale.contains("`eu>us`") && stale.contains("not `eu`"), "{stale}");
        d.replace_now(t, &moving, &Placement::settled("us")).unwrap();
        assert_eq!(FileDirectory::open(root.path()).unwrap().placement(t).unwrap(), Some(Placement::settled("us")));
        std::fs::write(root.path().join("tenants").join(t.to_string()), "EU").unwrap();
        assert!(d.placement(t).unwrap_err().contains("damaged"));
        std::fs::write(root.path().join("tenants").join(t.to_string()), "eu>eu\n").unwrap();
        assert!(d.placement(t).unwrap_err().contains("damaged"));
        // Nothing but the region's name is written.
        let u = Uuid::now_v7();
        d.place_now(u, "us").unwrap();
        assert_eq!(std::fs::read(root.path().join("tenants").join(u.to_string())).unwrap(), b"us\n");
        let entries: Vec<String> = std::fs::read_dir(root.path().join("tenants"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
    }
}
