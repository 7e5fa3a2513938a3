//! The embedded view store: one redb file per projection.
//!
//! Why redb: a view and its checkpoint must change in one atomic, durable
//! step, and readers must never see a half-applied page or a half-built
//! generation. redb gives exactly that (copy-on-write B-trees, ACID write
//! transactions with fsync'd commits, MVCC read snapshots that never block
//! the writer) in pure Rust with no C toolchain and no dependencies of its
//! own, which keeps the build lean. Own files would have meant writing a
//! second crash-safe storage engine; SQLite would have meant a C build and
//! a SQL layer for key/value access; sled is unmaintained. See
//! ARCHITECTURE.md and docs/views.md.
//!
//! Layout: table `control` (`serving`, `building`, `next_generation`,
//! `paused`), table `skips` (position → SkippedEvent, shared by all
//! generations so a rebuild skips the same poison events), and per
//! generation `g<N>/<table>` plus `g<N>/meta` (checkpoint, version) and
//! `g<N>/acks` (erasure request → position of the purge).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use proto::Message;
use proto::views::{GenerationMeta, SkippedEvent};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use uuid::Uuid;

use crate::ViewError;

const CONTROL: TableDefinition<&str, &[u8]> = TableDefinition::new("control");
const SKIPS: TableDefinition<u64, &[u8]> = TableDefinition::new("skips");
type Bytes<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;
/// A row as (key, value).
pub type Row = (Vec<u8>, Vec<u8>);
/// Rows as (key, value).
pub type Rows = Vec<Row>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A generation of a projection's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(pub u32);

fn table_name(gn: Generation, table: &str) -> String {
    format!("g{}/{table}", gn.0)
}

fn corrupt(table: &str, reason: impl Into<String>) -> ViewError {
    ViewError::Corrupt { table: table.to_string(), reason: reason.into() }
}

fn decode<M: Message + Default>(table: &str, bytes: &[u8]) -> Result<M, ViewError> {
    M::decode(bytes).map_err(|e| corrupt(table, e.to_string()))
}

fn gen_of(bytes: &[u8]) -> Result<Generation, ViewError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| corrupt("control", "generation is not 4 bytes"))?;
    Ok(Generation(u32::from_le_bytes(arr)))
}

/// One projection's view store.
///
/// After a write fails on the disk (full, or an I/O error), redb refuses
/// every later operation on the file until it is reopened; the runner
/// then calls [`ViewStore::reopen`], which closes the file and opens it
/// again (repairing it back to its last durable commit) once the disk
/// takes writes again. Until then `db` may be `None`.
pub struct ViewStore {
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

impl std::fmt::Debug for ViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewStore").field("path", &self.path).finish()
    }
}

/// The page cache of one view store. redb's default is 1 GiB per file,
/// so four large views could hold 4 GiB of a node's memory; the operating
/// system's page cache keeps the rest of a file warm.
pub const CACHE_BYTES: usize = 64 << 20;

impl ViewStore {
    /// Opens (or creates) the store at `path`.
    ///
    /// Every page's checksum is verified at open (redb's integrity check,
    /// one read of the file), so a file damaged since it was written is
    /// refused here instead of being served; see [`Self::open_or_set_aside`].
    pub fn open(path: &Path) -> Result<Self, ViewError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ViewError::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        let store = Self { db: RwLock::new(Some(Self::open_db(path)?)), path: path.to_path_buf() };
        let txn = store.begin_write_txn()?;
        {
            txn.open_table(CONTROL)?;
            txn.open_table(SKIPS)?;
        }
        txn.commit()?;
        Ok(store)
    }

    fn open_db(path: &Path) -> Result<Database, ViewError> {
        redb::Builder::new()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| ViewError::Db { path: path.display().to_string(), source: Box::new(e.into()) })
    }

    /// Closes the file and opens it again: after a failed write redb
    /// refuses every operation until then. The open verifies every page
    /// and rolls the file back to its last durable commit (view and
    /// checkpoint together; the runner re-applies the rest from the log).
    /// When the open fails (the disk is still full), the store stays
    /// closed, its calls fail naming why, and a later call may try again.
    pub fn reopen(&self) -> Result<(), ViewError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Closed first: the file is locked while it is open. A write
        // transaction still alive elsewhere defers the close, and the
        // open below then says the file is busy; the next try succeeds.
        drop(db.take());
        *db = Some(Self::open_db(&self.path)?);
        Ok(())
    }

    /// Refuses to write when the store's filesystem has less free space
    /// than `reserve` (`None`: what [`reserve_for`] gives): redb refuses the whole file after a write
    /// fails on a full disk (reads too, until reopened), so the views stop
    /// writing first and keep serving what they hold; on a disk shared with
    /// the log, the reserve is left to the log.
    pub fn check_space(&self, reserve: Option<u64>) -> Result<(), ViewError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // A filesystem that cannot say how full it is is not held back.
        let Ok(st) = rustix::fs::statvfs(dir) else { return Ok(()) };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = reserve.unwrap_or_else(|| reserve_for(st.f_blocks.saturating_mul(st.f_frsize)));
        if free < reserve {
            return Err(ViewError::DiskLow { path: self.path.display().to_string(), free, reserve });
        }
        Ok(())
    }

    fn closed(&self) -> ViewError {
        ViewError::Io(format!(
            "view store {} is closed after a failed write and has not been reopened yet",
            self.path.display()
        ))
    }

    fn begin_read_txn(&self) -> Result<ReadTransaction, ViewError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        Ok(db.as_ref().ok_or_else(|| self.closed())?.begin_read()?)
    }

    fn begin_write_txn(&self) -> Result<WriteTransaction, ViewError> {
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        Ok(db.as_ref().ok_or_else(|| self.closed())?.begin_write()?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the store at `path`; a file that does not open (damaged,
    /// or not a view store) is moved aside to `<file>.damaged-<unix µs>`,
    /// kept for inspection, and a new empty store takes its place, to be
    /// rebuilt from the log. Views are derived data: the log has everything.
    pub fn open_or_set_aside(path: &Path) -> Result<(Self, Option<SetAside>), ViewError> {
        let first = match Self::open(path) {
            Ok(store) => return Ok((store, None)),
            Err(e) if path.exists() => e,
            Err(e) => return Err(e),
        };
        let aside = set_aside(path, &first.to_string())?;
        Ok((Self::open(path)?, Some(aside)))
    }
}

/// The free space a view store leaves on its filesystem: 5 % of it, at
/// most 64 MiB (docs/views.md).
pub fn reserve_for(filesystem_bytes: u64) -> u64 {
    (filesystem_bytes / 20).min(64 << 20)
}

/// A damaged view file moved out of the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub moved_to: PathBuf,
    pub reason: String,
}

/// Moves a view file aside (rename, then fsync of the directory).
pub fn set_aside(path: &Path, reason: &str) -> Result<SetAside, ViewError> {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".damaged-{micros}"));
    let moved_to = path.with_file_name(name);
    std::fs::rename(path, &moved_to)
        .map_err(|e| ViewError::Store(format!("cannot move {} aside: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ViewError::Store(format!("cannot sync {}: {e}", dir.display())))?;
    }
    Ok(SetAside { moved_to, reason: reason.to_string() })
}

impl ViewStore {
    fn control(txn: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        let t = txn.open_table(CONTROL)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The generation readers see, and the one being built, if any.
    pub fn generations(&self) -> Result<(Option<GenerationMeta>, Option<GenerationMeta>), ViewError> {
        let txn = self.begin_read_txn()?;
        let meta = |key: &str| -> Result<Option<GenerationMeta>, ViewError> {
            match Self::control(&txn, key)? {
                Some(g) => Self::meta_in(&txn, gen_of(&g)?),
                None => Ok(None),
            }
        };
        Ok((meta("serving")?, meta("building")?))
    }

    /// Everything a runner's round looks at, read in one transaction:
    /// paused or not, the skipped events, the serving and the building
    /// generations.
    pub(crate) fn state(&self) -> Result<StoreState, ViewError> {
        let txn = self.begin_read_txn()?;
        let (paused, serving, building) = {
            let control = txn.open_table(CONTROL)?;
            let get =
                |key: &str| -> Result<Option<Vec<u8>>, ViewError> { Ok(control.get(key)?.map(|v| v.value().to_vec())) };
            (get("paused")?.is_some_and(|v| v == [1]), get("serving")?, get("building")?)
        };
        let meta = |g: Option<Vec<u8>>| -> Result<Option<GenerationMeta>, ViewError> {
            match g {
                Some(g) => Self::meta_in(&txn, gen_of(&g)?),
                None => Ok(None),
            }
        };
        let (serving, building) = (meta(serving)?, meta(building)?);
        let t = txn.open_table(SKIPS)?;
        let mut skipped = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            skipped.push(decode::<SkippedEvent>("skips", v.value())?);
        }
        Ok(StoreState { paused, skipped, serving, building })
    }

    fn meta_in(txn: &ReadTransaction, gn: Generation) -> Result<Option<GenerationMeta>, ViewError> {
        let name = table_name(gn, "meta");
        let t = match txn.open_table(Bytes::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match t.get(b"meta".as_slice())? {
            Some(v) => Ok(Some(decode(&name, v.value())?)),
            None => Ok(None),
        }
    }

    /// A consistent snapshot of the serving generation; `None` before the
    /// first generation exists.
    pub fn read(&self) -> Result<Option<ReadView>, ViewError> {
        let txn = self.begin_read_txn()?;
        let Some(g) = Self::control(&txn, "serving")? else { return Ok(None) };
        let gn = gen_of(&g)?;
        Ok(Some(ReadView { txn, gn }))
    }

    /// Where the serving generation acknowledged the purge of `request`.
    pub fn acknowledged(&self, request: Uuid) -> Result<Option<u64>, ViewError> {
        let Some(view) = self.read()? else { return Ok(None) };
        Ok(view.get("acks", request.as_bytes())?.and_then(|v| v.as_slice().try_into().ok().map(u64::from_le_bytes)))
    }

    /// Every skipped poison event, by position.
    pub fn skipped(&self) -> Result<Vec<SkippedEvent>, ViewError> {
        let txn = self.begin_read_txn()?;
        let t = txn.open_table(SKIPS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("skips", v.value())?);
        }
        Ok(out)
    }

    pub(crate) fn skipped_positions(&self) -> Result<std::collections::BTreeSet<u64>, ViewError> {
        Ok(self.skipped()?.into_iter().map(|s| s.position).collect())
    }

    /// Names of every table in the file (for operators and tests).
    pub fn table_names(&self) -> Result<Vec<String>, ViewError> {
        let txn = self.begin_read_txn()?;
        Ok(txn.list_tables()?.map(|h| redb::TableHandle::name(&h).to_string()).collect())
    }

    pub fn paused(&self) -> Result<bool, ViewError> {
        let txn = self.begin_read_txn()?;
        Ok(Self::control(&txn, "paused")?.is_some_and(|v| v == [1]))
    }

    pub(crate) fn set_paused(&self, paused: bool) -> Result<(), ViewError> {
        let txn = self.begin_write_txn()?;
        txn.open_table(CONTROL)?.insert("paused", [u8::from(paused)].as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Records `skip` and moves generation `gn`'s checkpoint past it, in
    /// one transaction.
    pub(crate) fn skip(&self, gn: Generation, mut meta: GenerationMeta, skip: SkippedEvent) -> Result<(), ViewError> {
        let txn = self.begin_write_txn()?;
        {
            txn.open_table(SKIPS)?.insert(skip.position, skip.encode_to_vec().as_slice())?;
            meta.next_position = meta.next_position.max(skip.position + 1);
            let name = table_name(gn, "meta");
            txn.open_table(Bytes::new(&name))?.insert(b"meta".as_slice(), meta.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Starts a new, empty generation for projection `version`: serving if
    /// there is none, else building (replacing an unfinished build).
    pub(crate) fn new_generation(&self, version: u32) -> Result<Generation, ViewError> {
        let txn = self.begin_write_txn()?;
        let gn;
        {
            let mut control = txn.open_table(CONTROL)?;
            let next = match control.get("next_generation")? {
                Some(v) => gen_of(v.value())?.0,
                None => 1,
            };
            gn = Generation(next);
            control.insert("next_generation", (next + 1).to_le_bytes().as_slice())?;
            let serving = control.get("serving")?.map(|v| v.value().to_vec());
            let old_build = control.get("building")?.map(|v| v.value().to_vec());
            let role = if serving.is_some() { "building" } else { "serving" };
            control.insert(role, gn.0.to_le_bytes().as_slice())?;
            drop(control);
            if let Some(old) = old_build {
                drop_generation(&txn, gen_of(&old)?)?;
            }
            let meta = GenerationMeta { generation: gn.0, projection_version: version, ..GenerationMeta::default() };
            let name = table_name(gn, "meta");
            txn.open_table(Bytes::new(&name))?.insert(b"meta".as_slice(), meta.encode_to_vec().as_slice())?;
        }
        txn.commit()?;
        Ok(gn)
    }

    /// Makes the building generation the serving one and drops the old
    /// one, atomically: a reader sees one or the other, whole.
    pub(crate) fn switch_to_building(&self) -> Result<(), ViewError> {
        let txn = self.begin_write_txn()?;
        {
            let mut control = txn.open_table(CONTROL)?;
            let Some(building) = control.get("building")?.map(|v| v.value().to_vec()) else {
                return Err(ViewError::Store("no generation is being built".into()));
            };
            let old = control.get("serving")?.map(|v| v.value().to_vec());
            control.insert("serving", building.as_slice())?;
            control.remove("building")?;
            drop(control);
            if let Some(old) = old {
                drop_generation(&txn, gen_of(&old)?)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A write transaction; `durable: false` commits are visible at once
    /// but reach the disk only with the next durable commit (a crash rolls
    /// view and checkpoint back together to that one).
    pub(crate) fn begin_write_with(&self, durable: bool) -> Result<WriteTransaction, ViewError> {
        let mut txn = self.begin_write_txn()?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(|e| ViewError::Store(e.to_string()))?;
        }
        Ok(txn)
    }

    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, ViewError> {
        self.begin_write_with(true)
    }
}

fn drop_generation(txn: &WriteTransaction, gn: Generation) -> Result<(), ViewError> {
    let prefix = format!("g{}/", gn.0);
    let names: Vec<String> = txn
        .list_tables()?
        .map(|h| redb::TableHandle::name(&h).to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for name in names {
        txn.delete_table(Bytes::new(&name))?;
    }
    Ok(())
}

/// A read snapshot of the serving generation.
pub struct ReadView {
    txn: ReadTransaction,
    gn: Generation,
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("generation", &self.gn).finish()
    }
}

impl ReadView {
    /// A table of the serving generation (`None`: never written).
    fn table(&self, table: &str) -> Result<Option<ReadTable>, ViewError> {
        match self.txn.open_table(Bytes::new(&table_name(self.gn, table))) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn generation(&self) -> Generation {
        self.gn
    }

    pub fn meta(&self) -> Result<Option<GenerationMeta>, ViewError> {
        ViewStore::meta_in(&self.txn, self.gn)
    }

    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        let Some(t) = self.table(table)? else { return Ok(None) };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn get_msg<M: Message + Default>(&self, table: &str, key: &[u8]) -> Result<Option<M>, ViewError> {
        self.get(table, key)?.map(|v| decode(table, &v)).transpose()
    }

    /// Rows whose key starts with `prefix`, from the first key after
    /// `after` (if given), at most `limit`.
    pub fn scan(&self, table: &str, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Rows, ViewError> {
        self.scan_from(table, prefix, after.unwrap_or(prefix), after.is_some(), limit)
    }

    /// Rows whose key starts with `prefix`, from `start` (excluded when
    /// `exclusive`), at most `limit`.
    pub fn scan_from(
        &self,
        table: &str,
        prefix: &[u8],
        start: &[u8],
        exclusive: bool,
        limit: usize,
    ) -> Result<Rows, ViewError> {
        let Some(t) = self.table(table)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.range::<&[u8]>(start..)? {
            let (k, v) = row?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if exclusive && k == start {
                continue;
            }
            out.push((k.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The row with the greatest key that starts with `prefix` and is at
    /// most `at`.
    pub fn floor(&self, table: &str, prefix: &[u8], at: &[u8]) -> Result<Option<Row>, ViewError> {
        let Some(t) = self.table(table)? else { return Ok(None) };
        let Some(row) = t.range::<&[u8]>(prefix..=at)?.next_back() else { return Ok(None) };
        let (k, v) = row?;
        Ok(Some((k.value().to_vec(), v.value().to_vec())))
    }

    /// Every row of a table (for dumps and the rebuild-equals-live test).
    pub fn dump(&self, table: &str) -> Result<Rows, ViewError> {
        self.scan(table, &[], None, usize::MAX)
    }
}

/// The tables of one generation inside a write transaction. Writes are
/// buffered for the page (a row changed by many events of the page, like
/// a Pype's overview, is written once) and flushed in key order before the
/// commit; reads see the buffered writes.
pub struct WriteView<'t> {
    txn: &'t WriteTransaction,
    gn: Generation,
    tables: HashMap<&'static str, Table<'t, &'static [u8], &'static [u8]>>,
    pending: std::collections::BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'t> WriteView<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction, gn: Generation) -> Self {
        Self { txn, gn, tables: HashMap::new(), pending: std::collections::BTreeMap::new() }
    }

    /// Writes the buffered changes to the transaction, in key order.
    pub(crate) fn flush(&mut self) -> Result<(), ViewError> {
        let pending = std::mem::take(&mut self.pending);
        for ((table, key), value) in pending {
            let t = self.table(table)?;
            match value {
                Some(v) => {
                    t.insert(key.as_slice(), v.as_slice())?;
                }
                None => {
                    t.remove(key.as_slice())?;
                }
            }
        }
        Ok(())
    }

    fn table(&mut self, table: &'static str) -> Result<&mut Table<'t, &'static [u8], &'static [u8]>, ViewError> {
        if !self.tables.contains_key(table) {
            let name = table_name(self.gn, table);
            let t = self.txn.open_table(Bytes::new(&name))?;
            self.tables.insert(table, t);
        }
        self.tables.get_mut(table).ok_or_else(|| ViewError::Store("table vanished".into()))
    }

    pub fn get(&mut self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        if let Some(v) = self.pending.get(&(table, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.table(table)?.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn get_msg<M: Message + Default>(&mut self, table: &'static str, key: &[u8]) -> Result<Option<M>, ViewError> {
        self.get(table, key)?.map(|v| decode(table, &v)).transpose()
    }

    pub fn put(&mut self, table: &'static str, key: &[u8], value: &[u8]) -> Result<(), ViewError> {
        self.pending.insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    pub fn put_msg(&mut self, table: &'static str, key: &[u8], value: &impl Message) -> Result<(), ViewError> {
        self.put(table, key, &value.encode_to_vec())
    }

    pub fn delete(&mut self, table: &'static str, key: &[u8]) -> Result<(), ViewError> {
        self.pending.insert((table, key.to_vec()), None);
        Ok(())
    }

    /// Keys and values of the rows whose key starts with `prefix`.
    pub fn scan_prefix(&mut self, table: &'static str, prefix: &[u8]) -> Result<Rows, ViewError> {
        self.flush()?;
        let t = self.table(table)?;
        let mut out = Vec::new();
        for row in t.range::<&[u8]>(prefix..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub(crate) fn put_meta(&mut self, meta: &GenerationMeta) -> Result<(), ViewError> {
        self.put_msg("meta", b"meta", meta)
    }
}

/// What [`ViewStore::state`] reads.
#[derive(Debug, Default)]
pub(crate) struct StoreState {
    pub(crate) paused: bool,
    pub(crate) skipped: Vec<SkippedEvent>,
    pub(crate) serving: Option<GenerationMeta>,
    pub(crate) building: Option<GenerationMeta>,
}
