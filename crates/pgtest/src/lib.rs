//! A throw-away PostgreSQL cluster for tests: `initdb` into a temp dir,
//! `postgres` on a free loopback port, stopped and removed on drop.
//!
//! The binaries come from `PYPES_PG_BIN`, else `pg_config --bindir`, else
//! the PATH, else `/usr/lib/postgresql/<newest>/bin`. PostgreSQL refuses
//! to run as root: as root the cluster runs as the `postgres` user (or
//! `nobody`) through `setpriv`. The server gets `--pdeathsig`, so it dies
//! with the test process even if a test panics past the drop.
//!
//! Without PostgreSQL, [`Cluster::start`] returns `None` and the caller
//! reports the suite as not run; with `PYPES_REQUIRE_POSTGRES` set (CI
//! sets it) a missing PostgreSQL is a failure instead.

pub mod tmpfs;
pub use tmpfs::Tmpfs;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throw-away cluster.
pub struct Cluster {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("port", &self.port).field("dir", &self.dir.path()).finish()
    }
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PYPES_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(dir.join("initdb").exists(), "PYPES_PG_BIN={}: no initdb there", dir.display());
        return Some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("initdb").exists() && dir.join("postgres").exists() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The user to run as when we are root.
fn run_as() -> &'static str {
    if Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success()) { "postgres" } else { "nobody" }
}

/// A command that runs `program` as an unprivileged user when we are root.
fn command(bin: &Path, program: &str, root: bool) -> Command {
    let mut c = Command::new("setpriv");
    if root {
        let user = run_as();
        c.args(["--reuid", user, "--regid", user, "--init-groups"]);
    }
    c.args(["--pdeathsig", "KILL", "--"]).arg(bin.join(program));
    c
}

/// Whether `user` can enter `dir` (every directory on its path searchable).
fn enterable_by(user: &str, dir: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until the server answers (false if it exits or takes 30 s).
fn wait_ready(child: &mut Child, bin: &Path, port: u16) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pypes", "-q"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `postgres` on the cluster files in `dir` (a free port is tried up
/// to five times).
fn run(bin: PathBuf, root: bool, dir: tempfile::TempDir, settings: &[String]) -> Cluster {
    let data = dir.path().join("data");
    for _ in 0..5 {
        let port = free_port().expect("a free port");
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        let mut child = command(&bin, "postgres", root)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(settings.iter().flat_map(|kv| ["-c", kv.as_str()]))
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        if wait_ready(&mut child, &bin, port) {
            return Cluster { child, port, dir, bin };
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
        if !log.contains("could not bind") && !log.contains("Address already in use") {
            panic!("postgres did not start:\n{log}");
        }
    }
    panic!("postgres did not find a free port in 5 tries")
}

/// A test CA and a server certificate it signed (PEM).
#[cfg(feature = "tls")]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and a server certificate it signed for `names` (host names
/// or IP addresses), for [`Cluster::start_with_tls`].
#[cfg(feature = "tls")]
pub fn pki(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names).expect("names").signed_by(&key, &ca).expect("server certificate");
    Pki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

impl Cluster {
    /// Starts a cluster, or `None` when PostgreSQL is not installed (a
    /// panic instead when `PYPES_REQUIRE_POSTGRES` is set). Panics with the
    /// server's log when it is installed but does not start.
    pub fn start() -> Option<Cluster> {
        Self::start_in(&std::env::temp_dir())
    }

    /// [`Cluster::start`] with the cluster's files under `base` (e.g. on
    /// the disk a benchmark measures).
    pub fn start_in(base: &Path) -> Option<Cluster> {
        Self::start_with(base, None)
    }

    /// [`Cluster::start`] with TLS on (`ssl=on`), serving the PEM
    /// certificate chain and key given. Clients may still connect in the
    /// clear; `pg_stat_ssl` tells which a session is.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Option<Cluster> {
        Self::start_with(&std::env::temp_dir(), Some((cert_pem, key_pem)))
    }

    /// [`Cluster::start`] listening on every address, not only loopback,
    /// and trusting clients from the network `net` (CIDR, e.g. a test's
    /// network namespaces on `10.200.0.0/14`).
    pub fn start_reachable_from(net: &str) -> Option<Cluster> {
        Self::start_full(&std::env::temp_dir(), None, Some(net))
    }

    fn start_with(base: &Path, tls: Option<(&str, &str)>) -> Option<Cluster> {
        Self::start_full(base, tls, None)
    }

    fn start_full(base: &Path, tls: Option<(&str, &str)>, net: Option<&str>) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("PYPES_REQUIRE_POSTGRES").is_none(),
                "PYPES_REQUIRE_POSTGRES is set but no PostgreSQL was found (initdb: PYPES_PG_BIN, pg_config, PATH, \
                 /usr/lib/postgresql/*/bin)"
            );
            eprintln!(
                "PostgreSQL not found: this PostgreSQL suite DID NOT RUN (its checks ran on the in-memory store \
                 instead, or were skipped); set PYPES_PG_BIN, and PYPES_REQUIRE_POSTGRES to make this a failure"
            );
            return None;
        };
        let root = is_root();
        // As root the cluster runs as an unprivileged user, who must be able
        // to enter `base` (a checkout under /root, or in a 0700 temporary
        // directory, is not): then it goes in the system's temp directory.
        let base = if root && !enterable_by(run_as(), base) {
            let tmp = std::env::temp_dir();
            eprintln!(
                "pgtest: user {} cannot enter {}; the cluster goes in {} instead",
                run_as(),
                base.display(),
                tmp.display()
            );
            tmp
        } else {
            base.to_path_buf()
        };
        let dir = tempfile::Builder::new().prefix("pypes-pg-").tempdir_in(&base).expect("temp dir");
        if root {
            let status = Command::new("chown").arg(format!("{}:", run_as())).arg(dir.path()).status().expect("chown");
            assert!(status.success(), "chown of the cluster's directory failed");
        }
        let data = dir.path().join("data");
        let out = command(&bin, "initdb", root)
            .args(["-U", "pypes", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut settings = vec!["listen_addresses=127.0.0.1".to_string(), "fsync=on".to_string()];
        if let Some(net) = net {
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).expect("pg_hba.conf");
            writeln!(hba, "host all all {net} trust").expect("write pg_hba.conf");
            settings[0] = "listen_addresses=*".to_string();
        }
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write a TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
                if root {
                    let status =
                        Command::new("chown").arg(format!("{}:", run_as())).arg(&path).status().expect("chown");
                    assert!(status.success(), "chown of {name} failed");
                }
            }
            settings.extend(["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"].map(String::from));
        }
        Some(run(bin, root, dir, &settings))
    }

    /// A streaming-replication standby of this cluster: a base backup
    /// (`pg_basebackup`) started as a hot standby that follows this
    /// primary, known to it as `name` (its `application_name`, as
    /// `synchronous_standby_names` and `pg_stat_replication` name it).
    /// Waits until it streams.
    pub fn start_standby(&self, name: &str) -> Cluster {
        let root = is_root();
        let dir = tempfile::Builder::new().prefix("pypes-pg-standby-").tempdir().expect("temp dir");
        if root {
            let status = Command::new("chown").arg(format!("{}:", run_as())).arg(dir.path()).status().expect("chown");
            assert!(status.success(), "chown of the standby's directory failed");
        }
        let data = dir.path().join("data");
        let out = command(&self.bin, "pg_basebackup", root)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "pypes", "--checkpoint=fast", "-X", "stream"])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
        if root {
            let status = Command::new("chown")
                .arg(format!("{}:", run_as()))
                .arg(data.join("standby.signal"))
                .status()
                .expect("chown");
            assert!(status.success(), "chown of standby.signal failed");
        }
        let settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            "fsync=on".to_string(),
            format!("primary_conninfo=host=127.0.0.1 port={} user=pypes application_name={name}", self.port),
            "hot_standby=on".to_string(),
        ];
        let standby = run(self.bin.clone(), root, dir, &settings);
        let started = Instant::now();
        let query = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
        );
        while self.psql(&self.url("postgres"), &query) != "1" {
            assert!(started.elapsed() < Duration::from_secs(30), "standby {name} did not start streaming in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        standby
    }

    /// Makes standby `name` synchronous: from now on a commit returns only
    /// once the standby has flushed it (`synchronous_commit=on`), so every
    /// acknowledged commit survives the primary's loss. Waits until the
    /// primary reports it as `sync`.
    pub fn require_sync_standby(&self, name: &str) {
        let url = self.url("postgres");
        self.psql(&url, &format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"));
        self.psql(&url, "SELECT pg_reload_conf()");
        let started = Instant::now();
        let query = format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'");
        while self.psql(&url, &query) != "sync" {
            assert!(started.elapsed() < Duration::from_secs(30), "standby {name} did not become synchronous in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the hard way (an immediate shutdown: no checkpoint,
    /// every connection cut, as a crash of the machine would), and waits
    /// for it to exit.
    pub fn stop_hard(&mut self) {
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    /// Promotes a standby to a primary (`pg_promote`, waiting until it
    /// takes writes).
    pub fn promote(&self) {
        assert_eq!(self.psql(&self.url("postgres"), "SELECT pg_promote(true, 60)"), "t", "promotion failed");
    }

    /// Keeps the cluster for the rest of the test process (for helpers that
    /// hand out databases from one cluster to many servers). A watcher
    /// process removes its files once the test process is gone, and
    /// postgres itself dies with it (`--pdeathsig`).
    pub fn for_this_process(self) -> &'static Cluster {
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; sleep 1; rm -rf '{}'",
            std::process::id(),
            self.dir.path().display()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        Box::leak(Box::new(self))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq-style connection string to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=pypes dbname={db}", self.port)
    }

    /// Creates a fresh database and returns its connection string.
    pub fn fresh_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "pypes", &name])
            .output()
            .expect("run createdb");
        assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }

    /// Runs SQL with psql (for tests that look under the hood).
    pub fn psql(&self, db_url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([db_url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The cluster's data directory (for byte scans).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // stopped already (`stop_hard`)
        }
        // SIGQUIT: an immediate shutdown; the files go with the temp dir.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base the cluster's user cannot enter (a checkout under /root, a
    /// 0700 temporary directory): the cluster starts in the temp directory.
    #[test]
    fn a_base_the_cluster_user_cannot_enter_is_not_used() {
        if !is_root() {
            eprintln!("not root: the cluster runs as this user, who can enter its own directories");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let closed = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let base = closed.path().join("checkout");
        std::fs::create_dir(&base).expect("mkdir");
        assert!(!enterable_by(run_as(), &base));
        assert!(enterable_by(run_as(), &std::env::temp_dir()));
        let Some(pg) = Cluster::start_in(&base) else { return };
        assert!(!pg.data_dir().starts_with(closed.path()), "{}", pg.data_dir().display());
        assert_eq!(pg.psql(&pg.url("postgres"), "SELECT 1"), "1");
    }
}
