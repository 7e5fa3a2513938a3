//! End users' logins: Argon2id password hashes, auth-session tokens with an
//! idle timeout and an absolute lifetime, and a soft lockout whose delay
//! grows with consecutive failures. See docs/security.md for the limits.
//!
//! Tokens are 256 random bits from the OS; only their SHA-256 is held, in
//! this node's memory (a restart ends every auth session: users log in
//! again). The lockout counts failures per tenant and username, known or
//! not, so an unknown username gets the same answers, and an Argon2id run
//! against a dummy hash gives it the same timing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use argon2::{Algorithm, Argon2, Params, Version};
use eventlog::Clock;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

/// OWASP's Argon2id parameters: 19 MiB, two passes, one lane.
pub const M_COST_KIB: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Failures allowed before any delay.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay between attempts once locked.
pub const MAX_DELAY_SECS: i64 = 900;
/// A lockout record is forgotten this long after its last failure.
const FORGET_AFTER_SECS: i64 = 24 * 3600;
/// Auth sessions one subject may hold; the oldest goes first.
const MAX_SESSIONS_PER_SUBJECT: usize = 64;

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

#[derive(Default)]
struct Sessions {
    by_token: HashMap<[u8; 32], AuthSession>,
    by_subject: HashMap<(Uuid, Uuid), HashSet<[u8; 32]>>,
}

impl Sessions {
    fn remove(&mut self, token: &[u8; 32]) -> Option<AuthSession> {
        let s = self.by_token.remove(token)?;
        if let Some(set) = self.by_subject.get_mut(&(s.tenant, s.subject)) {
            set.remove(token);
            if set.is_empty() {
                self.by_subject.remove(&(s.tenant, s.subject));
            }
        }
        Some(s)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_micros: i64,
    blocked_until_micros: i64,
}

pub struct EndUserAuth {
    clock: Arc<dyn Clock>,
    pub config: AuthConfig,
    sessions: Mutex<Sessions>,
    failures: Mutex<HashMap<[u8; 32], Failures>>,
    /// A hash of a random password: what an unknown user is checked against.
    dummy_hash: String,
    /// Argon2id evaluations so far (a metric; tests use it to see that an
    /// unknown user costs the same work as a known one).
    pub argon2_runs: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn argon2(m: u32, t: u32, p: u32) -> Result<Argon2<'static>, ApiError> {
    let params =
        Params::new(m, t, p, Some(HASH_LEN)).map_err(|e| ApiError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("random source: {e}")))?;
    Ok(b)
}

/// Hashes `password` with a fresh salt. The text is
/// `argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = random::<SALT_LEN>()?;
    let mut out = [0u8; HASH_LEN];
    argon2(M_COST_KIB, T_COST, P_COST)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))?;
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

impl EndUserAuth {
    pub fn new(clock: Arc<dyn Clock>, config: AuthConfig) -> Result<Self, ApiError> {
        let dummy = hex::encode(random::<16>()?);
        Ok(Self {
            clock,
            config,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            dummy_hash: hash_password(&dummy)?,
            argon2_runs: AtomicU64::new(0),
        })
    }

    fn lockout_key(tenant: Uuid, username: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"pypes/lockout/v1");
        h.update(tenant.as_bytes());
        h.update(username.as_bytes());
        h.finalize().into()
    }

    /// Seconds to wait before the next attempt on this username, if any.
    fn locked_for(&self, key: &[u8; 32], now: i64) -> Option<i64> {
        let f = lock(&self.failures).get(key).copied()?;
        (f.blocked_until_micros > now).then(|| (f.blocked_until_micros - now + MICROS - 1) / MICROS)
    }

    fn record_failure(&self, key: [u8; 32], now: i64) {
        let mut map = lock(&self.failures);
        if map.len() > 1_000_000 {
            map.retain(|_, f| now - f.last_micros < FORGET_AFTER_SECS * MICROS);
        }
        let f = map.entry(key).or_insert(Failures { count: 0, last_micros: now, blocked_until_micros: 0 });
        if now - f.last_micros >= FORGET_AFTER_SECS * MICROS {
            f.count = 0;
        }
        f.count += 1;
        f.last_micros = now;
        if f.count >= FREE_FAILURES {
            let delay = 1i64.checked_shl(f.count - FREE_FAILURES).unwrap_or(i64::MAX).min(MAX_DELAY_SECS);
            f.blocked_until_micros = now + delay * MICROS;
        }
    }

    /// Checks a password for `username` of `tenant`. `account` is what the
    /// username names (`None`: no such user, or one without a password).
    /// Runs Argon2id exactly once whatever the case (except when locked),
    /// on a blocking thread.
    pub async fn login(&self, tenant: Uuid, username: &str, password: &str, account: Option<Account>) -> LoginOutcome {
        let key = Self::lockout_key(tenant, username);
        let now = self.clock.now_micros();
        if let Some(retry_after_secs) = self.locked_for(&key, now) {
            return LoginOutcome::Locked { retry_after_secs };
        }
        let stored = match &account {
            Some(a) if !a.password_hash.is_empty() => a.password_hash.clone(),
            _ => self.dummy_hash.clone(),
        };
        let password = password.to_owned();
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &stored)).await.unwrap_or(false);
        let now = self.clock.now_micros();
        match account {
            Some(a) if matches && !a.password_hash.is_empty() => {
                lock(&self.failures).remove(&key);
                if !a.active {
                    return LoginOutcome::Deactivated;
                }
                match self.issue(a.tenant, a.subject, now) {
                    Ok(token) => {
                        let session = AuthSession {
                            tenant: a.tenant,
                            subject: a.subject,
                            created_micros: now,
                            last_used_micros: now,
                        };
                        LoginOutcome::Ok { token, session }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "issuing an auth session");
                        LoginOutcome::Failed
                    }
                }
            }
            _ => {
                self.record_failure(key, now);
                LoginOutcome::Failed
            }
        }
    }

    fn issue(&self, tenant: Uuid, subject: Uuid, now: i64) -> Result<String, ApiError> {
        let secret = random::<32>()?;
        let token = format!("pypes_eu_{}", hex::encode(secret));
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut s = lock(&self.sessions);
        if s.by_token.len().is_multiple_of(1024) {
            self.sweep(&mut s, now);
        }
        let mine = s.by_subject.entry((tenant, subject)).or_default();
        mine.insert(digest);
        if mine.len() > MAX_SESSIONS_PER_SUBJECT {
            let tokens: Vec<[u8; 32]> = mine.iter().copied().collect();
            if let Some(oldest) = tokens.into_iter().min_by_key(|t| s.by_token.get(t).map_or(0, |x| x.created_micros)) {
                s.remove(&oldest);
            }
        }
        s.by_token.insert(digest, AuthSession { tenant, subject, created_micros: now, last_used_micros: now });
        Ok(token)
    }

    fn sweep(&self, s: &mut Sessions, now: i64) {
        let c = self.config;
        let dead: Vec<[u8; 32]> =
            s.by_token.iter().filter(|(_, a)| a.idle_expires_micros(&c) <= now).map(|(t, _)| *t).collect();
        for t in dead {
            s.remove(&t);
        }
    }

    /// The live auth session of `token` for `tenant`, its idle time reset;
    /// `None` when unknown, expired, revoked or another tenant's.
    pub fn touch(&self, tenant: Uuid, token: &str) -> Option<AuthSession> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now_micros();
        let mut s = lock(&self.sessions);
        let a = *s.by_token.get(&digest)?;
        if a.tenant != tenant {
            return None;
        }
        if a.idle_expires_micros(&self.config) <= now {
            s.remove(&digest);
            return None;
        }
        let a = AuthSession { last_used_micros: now, ..a };
        s.by_token.insert(digest, a);
        Some(a)
    }

    /// Ends the auth session of `token` (of `tenant`); whether there was one.
    pub fn logout(&self, tenant: Uuid, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut s = lock(&self.sessions);
        if s.by_token.get(&digest).is_none_or(|a| a.tenant != tenant) {
            return false;
        }
        s.remove(&digest).is_some()
    }

    /// Ends every auth session of a subject at once; how many there were.
    pub fn revoke_subject(&self, tenant: Uuid, subject: Uuid) -> usize {
        let mut s = lock(&self.sessions);
        let tokens: Vec<[u8; 32]> =
            s.by_subject.get(&(tenant, subject)).map(|t| t.iter().copied().collect()).unwrap_or_default();
        for t in &tokens {
            s.remove(t);
        }
        tokens.len()
    }

    /// Live auth sessions on this node (a metric).
    pub fn live_sessions(&self) -> usize {
        lock(&self.sessions).by_token.len()
    }
}

#[cfg(test)]
mod tests {
    use eventlog::ManualClock;

    use super::*;

    const T0: i64 = 1_800_000_000 * MICROS;

    fn auth() -> (EndUserAuth, ManualClock) {
        let clock = ManualClock::new(T0);
        (EndUserAuth::new(Arc::new(clock.clone()), AuthConfig::default()).unwrap(), clock)
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
            a.login(Uuid::from_u128(1), "ann", "s3cret-enough", account(&h, true)).await
        else {
            panic!("login failed")
        };
        assert!(token.starts_with("pypes_eu_") && token.len() == 9 + 64);
        assert_eq!(session.expires_micros(&a.config) - session.created_micros, 12 * 3600 * MICROS);
        let tenant = Uuid::from_u128(1);
        // Used every 29 minutes, it lives until the absolute lifetime.
        for _ in 0..(12 * 60 / 29) {
            clock.advance_secs(29 * 60);
            assert!(a.touch(tenant, &token).is_some());
        }
        clock.advance_secs(29 * 60);
        assert!(a.touch(tenant, &token).is_none(), "past 12 h");
        // Idle for 30 minutes, it ends.
        let LoginOutcome::Ok { token, .. } = a.login(tenant, "ann", "s3cret-enough", account(&h, true)).await else {
            panic!()
        };
        clock.advance_secs(29 * 60 + 59);
        assert!(a.touch(tenant, &token).is_some());
        clock.advance_secs(30 * 60);
        assert!(a.touch(tenant, &token).is_none(), "idle 30 min");
        // Another tenant's key never sees it.
        let LoginOutcome::Ok { token, .. } = a.login(tenant, "ann", "s3cret-enough", account(&h, true)).await else {
            panic!()
        };
        assert!(a.touch(Uuid::from_u128(9), &token).is_none());
        assert!(a.touch(tenant, &token).is_some());
    }

    #[tokio::test]
    async fn revoking_a_subject_ends_all_its_sessions_at_once() {
        let (a, _) = auth();
        let h = hash_password("s3cret-enough").unwrap();
        let tenant = Uuid::from_u128(1);
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let LoginOutcome::Ok { token, .. } = a.login(tenant, "ann", "s3cret-enough", account(&h, true)).await
            else {
                panic!()
            };
            tokens.push(token);
        }
        assert_eq!(a.revoke_subject(tenant, Uuid::from_u128(2)), 3);
        assert!(tokens.iter().all(|t| a.touch(tenant, t).is_none()));
        assert_eq!(a.live_sessions(), 0);
        // A deactivated account with the right password gets in nowhere.
        assert_eq!(a.login(tenant, "ann", "s3cret-enough", account(&h, false)).await, LoginOutcome::Deactivated);
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
                assert_eq!(a.login(tenant, name, "wrong-password", acct()).await, LoginOutcome::Failed);
            }
            assert_eq!(a.argon2_runs.load(Ordering::Relaxed) - runs, u64::from(FREE_FAILURES), "same work");
            // Locked: even the right password waits.
            assert_eq!(
                a.login(tenant, name, "s3cret-enough", acct()).await,
                LoginOutcome::Locked { retry_after_secs: 1 }
            );
            let mut delays = Vec::new();
            for _ in 0..12 {
                let LoginOutcome::Locked { retry_after_secs } = a.login(tenant, name, "x", acct()).await else {
                    panic!()
                };
                delays.push(retry_after_secs);
                clock.advance_secs(retry_after_secs as u64);
                assert_eq!(a.login(tenant, name, "wrong-password", acct()).await, LoginOutcome::Failed);
            }
            assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900], "{name}");
            clock.advance_secs(900);
        }
        // Worst case in one hour: the free failures, then one per delay.
        let (a, clock) = auth();
        let (mut failures, mut elapsed) = (0, 0);
        while elapsed < 3600 {
            match a.login(tenant, "ann", "wrong-password", account(&h, true)).await {
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
        assert!(matches!(a.login(tenant, "ann", "s3cret-enough", account(&h, true)).await, LoginOutcome::Ok { .. }));
        assert_eq!(a.login(tenant, "ann", "wrong-password", account(&h, true)).await, LoginOutcome::Failed);
    }
}
