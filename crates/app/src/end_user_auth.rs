//! End users' logins: Argon2id password hashes, auth-session tokens with an
//! idle timeout and an absolute lifetime, and a soft lockout whose delay
//! grows with consecutive failures. See docs/security.md for the limits.
//!
//! Every node sees the same auth sessions and the same lockout, because
//! both live in the event log, not in a node's memory:
//! - an auth session is the stream `authsession-<tenant>-<hex SHA-256 of
//!   the token>` (`AuthSessionStarted`, `AuthSessionUsed`,
//!   `AuthSessionEnded`); its max-age hides it after its lifetime. A token
//!   is 256 random bits from the OS and is never stored; the stream name
//!   is its hash. Every check reads the stream's last event, so a logout on
//!   one node holds on all of them at once. A use is written down at most
//!   once per 1/30 of the idle timeout, so another node may end an idle
//!   session up to that much early (never late);
//! - failed logins of a username are the stream `loginfail-<tenant>-<keyed
//!   hash of the username>` (like a username reservation: without the
//!   tenant's secret the name says nothing); max-age one day, max-count 32.
//!   Unknown usernames count alike, and an Argon2id run against a dummy
//!   hash gives them the same timing.
//!
//! Revocation by the account's state (deactivated, restricted, erasure
//! requested, password changed after the login) is checked against the
//! subject's stream by the caller on every use, so it too holds on every
//! node. A restart of a node ends nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use argon2::{Algorithm, Argon2, Params, Version};
use eventlog::{Clock, Direction, EventLog, ExpectedVersion, LogError, ReadFrom, RecordedEvent, StreamMetadata};
use events::codec::AuthEvent;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::AppError;

/// OWASP's Argon2id parameters: 19 MiB, two passes, one lane.
#[cfg(not(fuzzing))]
pub const M_COST_KIB: u32 = 19 * 1024;
#[cfg(not(fuzzing))]
pub const T_COST: u32 = 2;
// Fuzzing builds (cargo-fuzz sets `--cfg fuzzing`) hash at the smallest
// cost Argon2 and `verify_password` accept: the same code runs, but a
// login or a password no longer spends 19 MiB and two passes of each
// input's time (docs/fuzzing.md, `api_request`).
#[cfg(fuzzing)]
pub const M_COST_KIB: u32 = 8;
#[cfg(fuzzing)]
pub const T_COST: u32 = 1;
pub const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Failures allowed before any delay.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay between attempts once locked.
pub const MAX_DELAY_SECS: i64 = 900;
/// A failure is forgotten this long after the one after it (or now).
const FORGET_AFTER_SECS: i64 = 24 * 3600;
/// Failures read back to decide a lockout: past this many the delay is at
/// its longest anyway.
const FAILURES_READ: usize = 16;
/// Auth sessions this node keeps decoded (a cache: the log is the truth).
const CACHE_CAP: usize = 100_000;
/// Room past an auth session's lifetime before its stream is hidden
/// (nodes' clocks may disagree a little).
const SESSION_STREAM_SLACK_SECS: u64 = 3600;
/// Attempts at writing a use down when another node writes the same
/// auth session at that moment.
const ATTEMPTS: usize = 4;

const MICROS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
pub struct AuthConfig {
    pub idle_secs: i64,
    pub lifetime_secs: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { idle_secs: 30 * 60, lifetime_secs: 12 * 3600 }
    }
}

/// One live auth session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSession {
    pub tenant: Uuid,
    pub subject: Uuid,
    pub created_micros: i64,
    pub last_used_micros: i64,
}

impl AuthSession {
    pub fn idle_expires_micros(&self, c: &AuthConfig) -> i64 {
        (self.last_used_micros + c.idle_secs * MICROS).min(self.expires_micros(c))
    }
    pub fn expires_micros(&self, c: &AuthConfig) -> i64 {
        self.created_micros + c.lifetime_secs * MICROS
    }
}

pub struct EndUserAuth {
    clock: Arc<dyn Clock>,
    log: Arc<dyn EventLog>,
    pub config: AuthConfig,
    /// Auth sessions seen here: their subject and start (which never
    /// change) and the last use on this node.
    cache: Mutex<HashMap<[u8; 32], AuthSession>>,
    /// A hash of a random password: what an unknown user is checked against.
    dummy_hash: String,
    /// Argon2id evaluations so far (a metric; tests use it to see that an
    /// unknown user costs the same work as a known one).
    pub argon2_runs: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn argon2(m: u32, t: u32, p: u32) -> Result<Argon2<'static>, AppError> {
    let params =
        Params::new(m, t, p, Some(HASH_LEN)).map_err(|e| AppError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn random<const N: usize>() -> Result<[u8; N], AppError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AppError::Internal(format!("random source: {e}")))?;
    Ok(b)
}

/// Hashes `password` with a fresh salt. The text is
/// `argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    let salt = random::<SALT_LEN>()?;
    let mut out = [0u8; HASH_LEN];
    argon2(M_COST_KIB, T_COST, P_COST)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| AppError::Internal(format!("argon2: {e}")))?;
    Ok(format!("argon2id$v=19$m={M_COST_KIB},t={T_COST},p={P_COST}${}${}", hex::encode(salt), hex::encode(out)))
}

/// Whether `password` matches `stored` (a [`hash_password`] text). A
/// malformed text, or parameters outside what this server would make
/// (a cap against a planted hash that costs gigabytes), never match.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [alg, version, params, salt, hash] = parts.as_slice() else { return false };
    if *alg != "argon2id" || *version != "v=19" {
        return false;
    }
    let mut m = 0;
    let mut t = 0;
    let mut p = 0;
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    if !(8..=256 * 1024).contains(&m) || !(1..=10).contains(&t) || !(1..=4).contains(&p) {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (hex::decode(salt), hex::decode(hash)) else { return false };
    if expected.len() != HASH_LEN {
        return false;
    }
    let Ok(a) = argon2(m, t, p) else { return false };
    let mut out = [0u8; HASH_LEN];
    if a.hash_password_into(password.as_bytes(), &salt, &mut out).is_err() {
        return false;
    }
    out.iter().zip(&expected).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The token to hand to the user (shown once) and its auth session.
    Ok { token: String, session: AuthSession },
    /// Wrong username or password (the two are not told apart).
    Failed,
    /// Too many failures: try again after this many seconds.
    Locked { retry_after_secs: i64 },
    /// The password is right but the account is deactivated.
    Deactivated,
}

/// What the login needs to know of the subject a username names.
pub struct Account {
    pub tenant: Uuid,
    pub subject: Uuid,
    pub password_hash: String,
    pub active: bool,
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The stream of the auth session a token stands for.
pub fn session_stream(tenant: Uuid, token: &str) -> String {
    events::stream::auth_session_stream(tenant, token)
}

/// The stream of a username's failed logins.
pub fn lockout_stream(secret: &[u8; 32], tenant: Uuid, username: &str) -> String {
    events::stream::lockout_stream(secret, tenant, username)
}

/// The seconds to wait after `count` consecutive failures.
pub fn delay_secs(count: u32) -> i64 {
    if count < FREE_FAILURES {
        return 0;
    }
    1i64.checked_shl(count - FREE_FAILURES).unwrap_or(i64::MAX).min(MAX_DELAY_SECS)
}

impl EndUserAuth {
    pub fn new(clock: Arc<dyn Clock>, log: Arc<dyn EventLog>, config: AuthConfig) -> Result<Self, AppError> {
        let dummy = hex::encode(random::<16>()?);
        Ok(Self {
            clock,
            log,
            config,
            cache: Mutex::default(),
            dummy_hash: hash_password(&dummy)?,
            argon2_runs: AtomicU64::new(0),
        })
    }

    /// The newest events of `stream`, newest first (none when it does not
    /// exist, was deleted or has aged out).
    async fn newest(&self, stream: &str, count: usize) -> Result<Vec<RecordedEvent>, AppError> {
        match self.log.read_stream(stream, ReadFrom::End, Direction::Backward, count).await {
            Ok(events) => Ok(events),
            Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => Ok(Vec::new()),
            Err(e) => Err(AppError::from(e)),
        }
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        tenant: Uuid,
        event: AuthEvent,
    ) -> Result<(), LogError> {
        let e = events::codec::encode_auth(tenant, &event);
        actors::write::append(self.log.as_ref(), stream, expected, vec![e]).await.map(|_| ())
    }

    /// Consecutive failures on a lockout stream, and until when the next
    /// attempt must wait.
    async fn failures(&self, stream: &str, now: i64) -> Result<(u32, i64, bool), AppError> {
        let events = self.newest(stream, FAILURES_READ).await?;
        let exists = !events.is_empty();
        let (mut count, mut newest, mut after) = (0u32, None, now);
        for e in &events {
            match events::codec::decode_auth(e)? {
                AuthEvent::LoginSucceeded { .. } => break,
                AuthEvent::LoginFailed { at_micros: at } => {
                    if after - at >= FORGET_AFTER_SECS * MICROS {
                        break;
                    }
                    newest.get_or_insert(at);
                    count += 1;
                    after = at;
                }
                other => return Err(AppError::Internal(format!("{stream}: unexpected event {other:?}"))),
            }
        }
        let blocked_until = newest.map_or(0, |at| at + delay_secs(count) * MICROS);
        Ok((count, blocked_until, exists))
    }

    /// Checks a password for a username of `tenant` whose failures go to
    /// `lockout` ([`lockout_stream`]). `account` is what the username names
    /// (`None`: no such user, or one without a password). Runs Argon2id
    /// exactly once whatever the case (except when locked), on a blocking
    /// thread.
    pub async fn login(
        &self,
        tenant: Uuid,
        lockout: &str,
        password: &str,
        account: Option<Account>,
    ) -> Result<LoginOutcome, AppError> {
        let now = self.clock.now_micros();
        let (count, blocked_until, exists) = self.failures(lockout, now).await?;
        if blocked_until > now {
            return Ok(LoginOutcome::Locked { retry_after_secs: (blocked_until - now + MICROS - 1) / MICROS });
        }
        let stored_hash = match &account {
            Some(a) if !a.password_hash.is_empty() => a.password_hash.clone(),
            _ => self.dummy_hash.clone(),
        };
        let password = password.to_owned();
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let matches =
            tokio::task::spawn_blocking(move || verify_password(&password, &stored_hash)).await.unwrap_or(false);
        let now = self.clock.now_micros();
        match account {
            Some(a) if matches && !a.password_hash.is_empty() => {
                if count > 0 {
                    self.append(lockout, ExpectedVersion::Any, tenant, AuthEvent::LoginSucceeded { at_micros: now })
                        .await
                        .map_err(AppError::from)?;
                }
                if !a.active {
                    return Ok(LoginOutcome::Deactivated);
                }
                let (token, session) = self.issue(a.tenant, a.subject, now).await?;
                Ok(LoginOutcome::Ok { token, session })
            }
            _ => {
                self.append(lockout, ExpectedVersion::Any, tenant, AuthEvent::LoginFailed { at_micros: now })
                    .await
                    .map_err(AppError::from)?;
                if !exists {
                    let limits = StreamMetadata {
                        max_age_secs: Some(FORGET_AFTER_SECS as u64),
                        max_count: Some(2 * FAILURES_READ as u64),
                        truncate_before: None,
                    };
                    self.log.set_stream_metadata(lockout, limits).await.map_err(AppError::from)?;
                }
                Ok(LoginOutcome::Failed)
            }
        }
    }

    async fn issue(&self, tenant: Uuid, subject: Uuid, now: i64) -> Result<(String, AuthSession), AppError> {
        let token = format!("pypes_eu_{}", hex::encode(random::<32>()?));
        let stream = session_stream(tenant, &token);
        // The lifetime limit goes on first: a stream without it is never written.
        let limits = StreamMetadata {
            max_age_secs: Some(self.config.lifetime_secs.max(0) as u64 + SESSION_STREAM_SLACK_SECS),
            max_count: None,
            truncate_before: None,
        };
        self.log.set_stream_metadata(&stream, limits).await.map_err(AppError::from)?;
        self.append(
            &stream,
            ExpectedVersion::NoStream,
            tenant,
            AuthEvent::SessionStarted { subject, created_micros: now },
        )
        .await
        .map_err(AppError::from)?;
        let session = AuthSession { tenant, subject, created_micros: now, last_used_micros: now };
        self.remember(token_digest(&token), session);
        Ok((token, session))
    }

    fn remember(&self, key: [u8; 32], session: AuthSession) {
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_CAP && !cache.contains_key(&key) {
            let (c, now) = (self.config, self.clock.now_micros());
            cache.retain(|_, x| x.idle_expires_micros(&c) > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(key, session);
    }

    fn forget(&self, key: &[u8; 32]) {
        lock(&self.cache).remove(key);
    }

    /// The live auth session of `token` for `tenant`, its idle time reset;
    /// `None` when unknown, expired, logged out or another tenant's. Whether
    /// the account still may log in is the caller's check.
    pub async fn touch(&self, tenant: Uuid, token: &str) -> Result<Option<AuthSession>, AppError> {
        let stream = session_stream(tenant, token);
        let key = token_digest(token);
        for _ in 0..ATTEMPTS {
            let now = self.clock.now_micros();
            let Some(last) = self.newest(&stream, 1).await?.into_iter().next() else {
                self.forget(&key);
                return Ok(None);
            };
            let written = match events::codec::decode_auth(&last)? {
                AuthEvent::SessionEnded { .. } => {
                    self.forget(&key);
                    return Ok(None);
                }
                AuthEvent::SessionUsed { at_micros } => at_micros,
                AuthEvent::SessionStarted { created_micros, .. } => created_micros,
                other => return Err(AppError::Internal(format!("{stream}: unexpected event {other:?}"))),
            };
            let cached = lock(&self.cache).get(&key).copied();
            let session = match cached {
                Some(c) => AuthSession { last_used_micros: c.last_used_micros.max(written), ..c },
                None => {
                    let first = match self.log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 1).await {
                        Ok(events) => events.into_iter().next(),
                        Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => None,
                        Err(e) => return Err(AppError::from(e)),
                    };
                    let started = match first.as_ref().map(events::codec::decode_auth).transpose()? {
                        Some(AuthEvent::SessionStarted { subject, created_micros }) => (subject, created_micros),
                        // Its start has aged out: so has the session.
                        _ => return Ok(None),
                    };
                    AuthSession { tenant, subject: started.0, created_micros: started.1, last_used_micros: written }
                }
            };
            if session.idle_expires_micros(&self.config) <= now {
                self.forget(&key);
                return Ok(None);
            }
            let session = AuthSession { last_used_micros: now, ..session };
            if now - written >= self.use_interval_micros() {
                match self
                    .append(
                        &stream,
                        ExpectedVersion::Exact(last.version),
                        tenant,
                        AuthEvent::SessionUsed { at_micros: now },
                    )
                    .await
                {
                    Ok(_) => {}
                    // Another node wrote it at this moment (a use, or a logout): read again.
                    Err(LogError::WrongExpectedVersion { .. }) => continue,
                    Err(e) => return Err(AppError::from(e)),
                }
            }
            self.remember(key, session);
            return Ok(Some(session));
        }
        Err(AppError::Unavailable(format!("{stream}: written by other nodes {ATTEMPTS} times in a row; try again")))
    }

    /// How often a use is written down: 1/30 of the idle timeout (at least
    /// a second).
    fn use_interval_micros(&self) -> i64 {
        (self.config.idle_secs * MICROS / 30).max(MICROS)
    }

    /// Ends the auth session of `token` (of `tenant`) on every node;
    /// whether there was a live one.
    pub async fn logout(&self, tenant: Uuid, token: &str) -> Result<bool, AppError> {
        let stream = session_stream(tenant, token);
        let key = token_digest(token);
        self.forget(&key);
        for _ in 0..ATTEMPTS {
            let Some(last) = self.newest(&stream, 1).await?.into_iter().next() else { return Ok(false) };
            if last.event_type() == events::types::AUTH_SESSION_ENDED {
                return Ok(false);
            }
            let ended = AuthEvent::SessionEnded { at_micros: self.clock.now_micros(), reason: "logout".into() };
            match self.append(&stream, ExpectedVersion::Exact(last.version), tenant, ended).await {
                Ok(_) => return Ok(true),
                Err(LogError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(AppError::from(e)),
            }
        }
        Err(AppError::Unavailable(format!("{stream}: written by other nodes {ATTEMPTS} times in a row; try again")))
    }

    /// Drops what this node keeps of a subject's auth sessions (after a
    /// deactivation, a password change, a restriction or an erasure
    /// request: the subject's state refuses them on every node from then
    /// on); how many this node had.
    pub fn revoke_subject(&self, tenant: Uuid, subject: Uuid) -> usize {
        let mut cache = lock(&self.cache);
        let before = cache.len();
        cache.retain(|_, c| !(c.tenant == tenant && c.subject == subject));
        before - cache.len()
    }

    /// Auth sessions this node has decoded (a metric).
    pub fn cached_sessions(&self) -> usize {
        lock(&self.cache).len()
    }
}

#[cfg(test)]
mod tests {
    use eventlog::ManualClock;

    use super::*;

    const T0: i64 = 1_800_000_000 * MICROS;

    fn auth() -> (EndUserAuth, ManualClock) {
        let clock = ManualClock::new(T0);
        let log = Arc::new(eventlog::mem::MemLog::with_clock(Arc::new(clock.clone())));
        (EndUserAuth::new(Arc::new(clock.clone()), log, AuthConfig::default()).unwrap(), clock)
    }

    /// Only fuzzing builds hash cheaply: this one hashes at OWASP's cost.
    #[test]
    fn passwords_are_hashed_at_owasp_cost() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
    }

    /// The lockout stream of a username (tenant 1's secret is all sevens).
    fn ls(name: &str) -> String {
        lockout_stream(&[7; 32], Uuid::from_u128(1), name)
    }

    fn account(hash: &str, active: bool) -> Option<Account> {
        Some(Account {
            tenant: Uuid::from_u128(1),
            subject: Uuid::from_u128(2),
            password_hash: hash.to_string(),
            active,
        })
    }

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        // Malformed or costly planted hashes never match (and never run).
        assert!(!verify_password("x", "argon2id$v=19$m=4194304,t=2,p=1$00$00"));
        assert!(!verify_password("x", "bcrypt$whatever"));
        assert!(!verify_password("x", ""));
    }

    #[tokio::test]
    async fn login_issues_a_token_with_idle_and_absolute_expiry() {
        let (a, clock) = auth();
        let h = hash_password("s3cret-enough").unwrap();
        let LoginOutcome::Ok { token, session } =
            a.login(Uuid::from_u128(1), &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!("login failed")
        };
        assert!(token.starts_with("pypes_eu_") && token.len() == 9 + 64);
        assert_eq!(session.expires_micros(&a.config) - session.created_micros, 12 * 3600 * MICROS);
        let tenant = Uuid::from_u128(1);
        // Used every 29 minutes, it lives until the absolute lifetime.
        for _ in 0..(12 * 60 / 29) {
            clock.advance_secs(29 * 60);
            assert!(a.touch(tenant, &token).await.unwrap().is_some());
        }
        clock.advance_secs(29 * 60);
        assert!(a.touch(tenant, &token).await.unwrap().is_none(), "past 12 h");
        // Idle for 30 minutes, it ends.
        let LoginOutcome::Ok { token, .. } =
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!()
        };
        clock.advance_secs(29 * 60 + 59);
        assert!(a.touch(tenant, &token).await.unwrap().is_some());
        clock.advance_secs(30 * 60);
        assert!(a.touch(tenant, &token).await.unwrap().is_none(), "idle 30 min");
        // Another tenant's key never sees it.
        let LoginOutcome::Ok { token, .. } =
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!()
        };
        assert!(a.touch(Uuid::from_u128(9), &token).await.unwrap().is_none());
        assert!(a.touch(tenant, &token).await.unwrap().is_some());
    }

    /// Two nodes: two `EndUserAuth`s over one log.
    fn two_nodes() -> (EndUserAuth, EndUserAuth, ManualClock, Arc<eventlog::mem::MemLog>) {
        let clock = ManualClock::new(T0);
        let log = Arc::new(eventlog::mem::MemLog::with_clock(Arc::new(clock.clone())));
        let node = || EndUserAuth::new(Arc::new(clock.clone()), log.clone(), AuthConfig::default()).unwrap();
        (node(), node(), clock, log)
    }

    #[tokio::test]
    async fn every_node_sees_a_login_its_uses_and_its_logout() {
        let (a, b, clock, log) = two_nodes();
        let h = hash_password("s3cret-enough").unwrap();
        let tenant = Uuid::from_u128(1);
        let LoginOutcome::Ok { token, session } =
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!()
        };
        // The other node knows it, with its subject and start.
        let seen = b.touch(tenant, &token).await.unwrap().expect("b sees a's login");
        assert_eq!((seen.subject, seen.created_micros), (session.subject, session.created_micros));
        // Used on a every 20 minutes, it stays alive for b, which never
        // sees it in between: the uses are in the log.
        for _ in 0..4 {
            clock.advance_secs(20 * 60);
            assert!(a.touch(tenant, &token).await.unwrap().is_some());
        }
        clock.advance_secs(20 * 60);
        assert!(b.touch(tenant, &token).await.unwrap().is_some(), "idle 20 min, used before on a");
        // Uses are written at most once a minute: 60 uses in a second, one write.
        let stream = session_stream(tenant, &token);
        let before = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 1000).await.unwrap().len();
        for _ in 0..60 {
            assert!(a.touch(tenant, &token).await.unwrap().is_some());
        }
        let after = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 1000).await.unwrap().len();
        assert!(after - before <= 1, "{before} -> {after} events for 60 uses");
        // Logged out on b: over on a at once, though a has it cached.
        assert!(b.logout(tenant, &token).await.unwrap());
        assert!(a.touch(tenant, &token).await.unwrap().is_none());
        assert!(!a.logout(tenant, &token).await.unwrap(), "already ended");
        // A node started later (a restart) knows a live session too.
        let LoginOutcome::Ok { token, .. } =
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!()
        };
        let restarted = EndUserAuth::new(Arc::new(clock.clone()), log.clone(), AuthConfig::default()).unwrap();
        assert!(restarted.touch(tenant, &token).await.unwrap().is_some());
        // Past its lifetime the stream is hidden (and scavenged in time).
        clock.advance_secs(13 * 3600 + 3600);
        assert!(restarted.touch(tenant, &token).await.unwrap().is_none());
        assert!(
            log.read_stream(&session_stream(tenant, &token), ReadFrom::Start, Direction::Forward, 10)
                .await
                .map_or(true, |e| e.is_empty())
        );
        // Dropping a subject's cached sessions does not end them (the
        // subject's state does that, on every node).
        let LoginOutcome::Ok { token, .. } =
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(a.revoke_subject(tenant, Uuid::from_u128(2)), 2, "this login and the one before");
        assert_eq!(a.cached_sessions(), 0);
        assert!(a.touch(tenant, &token).await.unwrap().is_some(), "read back from the log");
        // A deactivated account with the right password gets in nowhere.
        assert_eq!(
            b.login(tenant, &ls("ann"), "s3cret-enough", account(&h, false)).await.unwrap(),
            LoginOutcome::Deactivated
        );
    }

    #[tokio::test]
    async fn the_lockout_counts_failures_made_on_every_node() {
        let (a, b, _clock, _log) = two_nodes();
        let h = hash_password("s3cret-enough").unwrap();
        let tenant = Uuid::from_u128(1);
        for i in 0..FREE_FAILURES {
            let node = if i % 2 == 0 { &a } else { &b };
            assert_eq!(node.login(tenant, &ls("ann"), "wrong", account(&h, true)).await.unwrap(), LoginOutcome::Failed);
        }
        for node in [&a, &b] {
            assert_eq!(
                node.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap(),
                LoginOutcome::Locked { retry_after_secs: 1 }
            );
        }
        // Another username, and the same one in another tenant, are free.
        assert!(matches!(
            a.login(tenant, &ls("bo"), "s3cret-enough", account(&h, true)).await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
        let other = lockout_stream(&[7; 32], Uuid::from_u128(5), "ann");
        assert!(matches!(
            a.login(Uuid::from_u128(5), &other, "s3cret-enough", account(&h, true)).await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
    }

    #[tokio::test]
    async fn failures_lock_with_a_growing_delay_and_unknown_users_alike() {
        let (a, clock) = auth();
        let h = hash_password("s3cret-enough").unwrap();
        let tenant = Uuid::from_u128(1);
        for name in ["ann", "nobody-by-this-name"] {
            let acct = || if name == "ann" { account(&h, true) } else { None };
            let runs = a.argon2_runs.load(Ordering::Relaxed);
            for _ in 0..FREE_FAILURES {
                assert_eq!(a.login(tenant, &ls(name), "wrong-password", acct()).await.unwrap(), LoginOutcome::Failed);
            }
            assert_eq!(a.argon2_runs.load(Ordering::Relaxed) - runs, u64::from(FREE_FAILURES), "same work");
            // Locked: even the right password waits.
            assert_eq!(
                a.login(tenant, &ls(name), "s3cret-enough", acct()).await.unwrap(),
                LoginOutcome::Locked { retry_after_secs: 1 }
            );
            let mut delays = Vec::new();
            for _ in 0..12 {
                let LoginOutcome::Locked { retry_after_secs } = a.login(tenant, &ls(name), "x", acct()).await.unwrap()
                else {
                    panic!()
                };
                delays.push(retry_after_secs);
                clock.advance_secs(retry_after_secs as u64);
                assert_eq!(a.login(tenant, &ls(name), "wrong-password", acct()).await.unwrap(), LoginOutcome::Failed);
            }
            assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900], "{name}");
            clock.advance_secs(900);
        }
        // Worst case in one hour: the free failures, then one per delay.
        let (a, clock) = auth();
        let (mut failures, mut elapsed) = (0, 0);
        while elapsed < 3600 {
            match a.login(tenant, &ls("ann"), "wrong-password", account(&h, true)).await.unwrap() {
                LoginOutcome::Failed => failures += 1,
                LoginOutcome::Locked { retry_after_secs } => {
                    clock.advance_secs(retry_after_secs as u64);
                    elapsed += retry_after_secs;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(failures <= 20, "{failures} failures in an hour");
        // A success clears the count.
        clock.advance_secs(900);
        assert!(matches!(
            a.login(tenant, &ls("ann"), "s3cret-enough", account(&h, true)).await.unwrap(),
            LoginOutcome::Ok { .. }
        ));
        assert_eq!(
            a.login(tenant, &ls("ann"), "wrong-password", account(&h, true)).await.unwrap(),
            LoginOutcome::Failed
        );
    }
}
