//! Subject: an end user of a tenant. Registers (username unique within the
//! tenant, email, phone, date of birth or an age attestation) or is invited
//! and onboards; the tenant can deactivate and reactivate them. Everything
//! about the person is personal data (profile group). Nobody under 13 is
//! registered.

use uuid::Uuid;

use crate::common::{Aggregate, Ctx, FieldClass, PiiGroup, Rejection, check_text};

/// The youngest age pypes registers.
pub const MIN_AGE: u32 = 13;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Birth {
    Date {
        year: i32,
        month: u32,
        day: u32,
    },
    /// The tenant attests the person is at least [`MIN_AGE`].
    AttestedAtLeast13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SubjectStatus {
    Invited,
    Active,
    Deactivated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectCommand {
    Register {
        subject: Uuid,
        tenant: Uuid,
        username: String,
        email: String,
        phone: String,
        birth: Birth,
    },
    Invite {
        subject: Uuid,
        tenant: Uuid,
        email: String,
    },
    Onboard {
        username: String,
        phone: String,
        birth: Birth,
    },
    Deactivate,
    Reactivate,
    /// Sets (or replaces) the login password. `hash` is the password's
    /// Argon2id hash, made outside the domain (it needs randomness); the
    /// password itself never reaches a command or an event.
    SetPassword {
        hash: String,
    },
    /// Corrects profile fields (GDPR Art. 16); `None` leaves a field as it is.
    Rectify {
        email: Option<String>,
        phone: Option<String>,
        birth: Option<Birth>,
    },
    /// Restriction of processing (Art. 18): until lifted, the subject's data
    /// is stored, exported or erased, nothing else.
    Restrict,
    LiftRestriction,
    /// The restriction process has brought every Session to the subject's
    /// restriction state `restricted` (refused when the state has changed
    /// since: a newer change has a run of its own).
    RecordRestrictionApplied {
        restricted: bool,
        sessions: u32,
    },
    /// Consent for a purpose (see [`PURPOSES`]) under a policy version.
    GrantConsent {
        purpose: String,
        policy_version: String,
    },
    WithdrawConsent {
        purpose: String,
    },
    /// Step 1 of an erasure: from now on the subject takes no command but
    /// the erasure's own steps. Idempotent.
    RequestErasure {
        request: Uuid,
    },
    /// Step 2: what will be shredded: the subject's keys and the content
    /// keys of `sessions` (`key_fingerprints` name them), recorded before
    /// the shred so a resumed process still knows what it destroyed.
    PlanShred {
        request: Uuid,
        sessions: Vec<Uuid>,
        key_fingerprints: Vec<String>,
    },
    /// Step 3: the planned keys are destroyed.
    RecordKeysShredded {
        request: Uuid,
    },
    /// Step 4: every projection acknowledged the purge; the tombstone.
    MarkErased {
        request: Uuid,
        acknowledged_by: Vec<String>,
    },
    /// Step 5: the signed certificate, kept with the tombstone.
    Certify {
        request: Uuid,
        certificate: String,
        signature: String,
    },
}

/// Serialize: for operators' tools (`pypes replay`), never a stored format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SubjectEvent {
    Registered {
        subject: Uuid,
        tenant: Uuid,
        username: String,
        email: String,
        phone: String,
        birth: Birth,
        at_micros: i64,
    },
    Invited {
        subject: Uuid,
        tenant: Uuid,
        email: String,
        at_micros: i64,
    },
    Onboarded {
        username: String,
        phone: String,
        birth: Birth,
        at_micros: i64,
    },
    Deactivated {
        at_micros: i64,
    },
    Reactivated {
        at_micros: i64,
    },
    PasswordSet {
        hash: String,
        at_micros: i64,
    },
    Rectified {
        email: Option<String>,
        phone: Option<String>,
        birth: Option<Birth>,
        at_micros: i64,
    },
    ProcessingRestricted {
        at_micros: i64,
    },
    RestrictionLifted {
        at_micros: i64,
    },
    RestrictionApplied {
        restricted: bool,
        sessions: u32,
        at_micros: i64,
    },
    ConsentGranted {
        purpose: String,
        policy_version: String,
        at_micros: i64,
    },
    ConsentWithdrawn {
        purpose: String,
        at_micros: i64,
    },
    ErasureRequested {
        request: Uuid,
        at_micros: i64,
        due_micros: i64,
    },
    ErasureShredPlanned {
        request: Uuid,
        sessions: Vec<Uuid>,
        key_fingerprints: Vec<String>,
    },
    /// The keys are gone; projections purge on this event.
    ErasureKeysShredded {
        request: Uuid,
        sessions: Vec<Uuid>,
        at_micros: i64,
    },
    /// The tombstone: no personal data, only that the subject is gone.
    Erased {
        request: Uuid,
        acknowledged_by: Vec<String>,
        at_micros: i64,
    },
    ErasureCertified {
        request: Uuid,
        certificate: String,
        signature: String,
    },
}

/// Days between an erasure request and its due date (GDPR Art. 12(3)).
pub const ERASURE_DUE_DAYS: i64 = 30;

/// Where an erasure stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Erasure {
    pub request: Uuid,
    pub requested_micros: i64,
    pub due_micros: i64,
    /// Sessions and key fingerprints to shred.
    pub planned: Option<(Vec<Uuid>, Vec<String>)>,
    /// When the keys were gone.
    pub shredded: Option<i64>,
    /// Set at the tombstone.
    pub erased: Option<(Vec<String>, i64)>,
    pub certificate: Option<(String, String)>,
}

const PROFILE: FieldClass = FieldClass::Pii(PiiGroup::Profile);
pub const FIELDS: &[(&str, &str, FieldClass)] = &[
    ("Registered", "username", PROFILE),
    ("Registered", "email", PROFILE),
    ("Registered", "phone", PROFILE),
    ("Registered", "birth", PROFILE),
    ("Invited", "email", PROFILE),
    ("Onboarded", "username", PROFILE),
    ("Onboarded", "phone", PROFILE),
    ("Onboarded", "birth", PROFILE),
    ("PasswordSet", "password_hash", PROFILE),
    ("Rectified", "email", PROFILE),
    ("Rectified", "phone", PROFILE),
    ("Rectified", "birth", PROFILE),
    ("ConsentGranted", "purpose", FieldClass::Clear),
    ("ConsentGranted", "policy_version", FieldClass::Clear),
];

/// Purposes a subject can consent to.
pub const PURPOSES: &[&str] = &["geolocation"];

/// A consent's current state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Consent {
    pub granted: bool,
    pub policy_version: String,
    /// When it was last granted or withdrawn.
    pub at_micros: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    pub id: Option<Uuid>,
    pub tenant: Uuid,
    pub username: String,
    pub email: String,
    pub phone: String,
    pub birth: Option<Birth>,
    /// Argon2id hash of the login password; empty when none was set.
    pub password_hash: String,
    /// Auth sessions started before this are over: the last password
    /// change, deactivation, restriction or erasure request. (A
    /// reactivation or a lifted restriction does not bring them back.)
    pub logins_revoked_micros: i64,
    /// Processing is restricted (Art. 18).
    pub restricted: bool,
    /// Purpose → consent.
    pub consents: std::collections::BTreeMap<String, Consent>,
    pub status: Option<SubjectStatus>,
    pub erasure: Option<Erasure>,
}

/// Lower-cases and checks a username: 3–64 of `a-z 0-9 . _ -`.
pub fn normalize_username(username: &str) -> Result<String, Rejection> {
    let u = username.trim().to_lowercase();
    let n = u.chars().count();
    if !(3..=64).contains(&n) {
        return Err(Rejection::invalid("username", format!("{n} characters; 3 to 64")));
    }
    if !u.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')) {
        return Err(Rejection::invalid("username", "only letters, digits, '.', '_' and '-'"));
    }
    Ok(u)
}

fn check_purpose(purpose: &str) -> Result<(), Rejection> {
    if PURPOSES.contains(&purpose) {
        Ok(())
    } else {
        Err(Rejection::invalid("purpose", format!("{}; one of {}", crate::quote(purpose), PURPOSES.join(", "))))
    }
}

/// Shortest and longest password accepted, in characters (NIST SP
/// 800-63B: at least 8, allow at least 64; no composition rules).
pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// Checks a password's length (the only rule: length beats composition).
pub fn check_password(password: &str) -> Result<(), Rejection> {
    let n = password.chars().count();
    if n < PASSWORD_MIN_CHARS {
        return Err(Rejection::invalid("password", format!("{n} characters; at least {PASSWORD_MIN_CHARS}")));
    }
    if n > PASSWORD_MAX_CHARS {
        return Err(Rejection::invalid("password", format!("{n} characters; at most {PASSWORD_MAX_CHARS}")));
    }
    if password.chars().any(char::is_control) {
        return Err(Rejection::invalid("password", "control characters are not allowed"));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), Rejection> {
    check_text("email", email, 254, true)?;
    let ok = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        }
        None => false,
    };
    if !ok || email.chars().any(char::is_whitespace) {
        return Err(Rejection::invalid("email", "not an email address"));
    }
    Ok(())
}

fn check_phone(phone: &str) -> Result<(), Rejection> {
    if phone.is_empty() {
        return Ok(());
    }
    let digits = phone.strip_prefix('+').unwrap_or("");
    if !(8..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(Rejection::invalid("phone", "E.164: '+' then 8 to 15 digits"));
    }
    Ok(())
}

/// Civil date (year, month, day) of a Unix time in microseconds.
fn civil_date(micros: i64) -> (i32, u32, u32) {
    // Howard Hinnant's days-to-civil.
    let days = micros.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn check_birth(birth: &Birth, now_micros: i64) -> Result<(), Rejection> {
    let Birth::Date { year, month, day } = *birth else { return Ok(()) };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(Rejection::invalid("birth", format!("month {month} does not exist"))),
    };
    if day == 0 || day > days_in_month {
        return Err(Rejection::invalid("birth", format!("day {day} does not exist in month {month}")));
    }
    let (y, m, d) = civil_date(now_micros);
    if year < 1900 || (year, month, day) > (y, m, d) {
        return Err(Rejection::invalid("birth", "not a plausible date of birth"));
    }
    let age = y - year - i32::from((m, d) < (month, day));
    if age < MIN_AGE as i32 {
        return Err(Rejection::invalid("birth", format!("under {MIN_AGE}: pypes does not register children")));
    }
    Ok(())
}

impl Subject {
    /// Whether a new Session may start with this subject as its end user:
    /// not while an erasure is requested, processing is restricted, or the
    /// subject is deactivated or has not onboarded.
    pub fn may_start_session(&self) -> Result<(), Rejection> {
        if self.erasure.is_some() {
            return Err(Rejection::precondition("the end user's erasure was requested"));
        }
        if self.restricted {
            return Err(Rejection::precondition(
                "processing of the end user's data is restricted: no new sessions until it is lifted",
            ));
        }
        match self.status {
            None => Err(Rejection::NotFound { what: "end user" }),
            Some(SubjectStatus::Deactivated) => Err(Rejection::precondition("the end user is deactivated")),
            Some(SubjectStatus::Invited) => Err(Rejection::precondition("the end user has not onboarded yet")),
            Some(SubjectStatus::Active) => Ok(()),
        }
    }

    /// Whether a location of this subject may be kept: consent for
    /// `geolocation` granted and processing not restricted.
    pub fn location_consented(&self) -> bool {
        !self.restricted && self.consents.get("geolocation").is_some_and(|c| c.granted)
    }

    pub fn require_exists(&self) -> Result<SubjectStatus, Rejection> {
        self.status.ok_or(Rejection::NotFound { what: "subject" })
    }
}

impl Aggregate for Subject {
    type Command = SubjectCommand;
    type Event = SubjectEvent;

    fn decide(&self, command: &SubjectCommand, ctx: &Ctx) -> Result<Vec<SubjectEvent>, Rejection> {
        let now = ctx.now_micros;
        if let Some(e) = &self.erasure {
            return self.decide_erasure_step(e, command, now);
        }
        if self.restricted
            && !matches!(
                command,
                SubjectCommand::Restrict
                    | SubjectCommand::LiftRestriction
                    | SubjectCommand::RecordRestrictionApplied { .. }
                    | SubjectCommand::RequestErasure { .. }
                    | SubjectCommand::Deactivate
                    | SubjectCommand::WithdrawConsent { .. }
            )
        {
            return Err(Rejection::precondition(
                "processing of this subject's data is restricted: only export, erasure, \
                 withdrawing consent, deactivation and lifting the restriction apply",
            ));
        }
        match command {
            SubjectCommand::Register { subject, tenant, username, email, phone, birth } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { what: "subject" });
                }
                let username = normalize_username(username)?;
                check_email(email)?;
                check_phone(phone)?;
                check_birth(birth, now)?;
                Ok(vec![SubjectEvent::Registered {
                    subject: *subject,
                    tenant: *tenant,
                    username,
                    email: email.trim().to_string(),
                    phone: phone.clone(),
                    birth: birth.clone(),
                    at_micros: now,
                }])
            }
            SubjectCommand::Invite { subject, tenant, email } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { what: "subject" });
                }
                check_email(email)?;
                Ok(vec![SubjectEvent::Invited {
                    subject: *subject,
                    tenant: *tenant,
                    email: email.trim().to_string(),
                    at_micros: now,
                }])
            }
            SubjectCommand::Onboard { username, phone, birth } => {
                if self.require_exists()? != SubjectStatus::Invited {
                    return Err(Rejection::precondition("only an invited subject can onboard"));
                }
                let username = normalize_username(username)?;
                check_phone(phone)?;
                check_birth(birth, now)?;
                Ok(vec![SubjectEvent::Onboarded {
                    username,
                    phone: phone.clone(),
                    birth: birth.clone(),
                    at_micros: now,
                }])
            }
            SubjectCommand::Deactivate => Ok(match self.require_exists()? {
                SubjectStatus::Deactivated => vec![],
                _ => vec![SubjectEvent::Deactivated { at_micros: now }],
            }),
            SubjectCommand::Reactivate => Ok(match self.require_exists()? {
                SubjectStatus::Deactivated => vec![SubjectEvent::Reactivated { at_micros: now }],
                _ => vec![],
            }),
            SubjectCommand::SetPassword { hash } => {
                if self.require_exists()? == SubjectStatus::Invited {
                    return Err(Rejection::precondition("an invited subject sets a password when onboarding"));
                }
                if hash.is_empty() || hash.len() > 512 {
                    return Err(Rejection::invalid("password_hash", "empty or over 512 bytes"));
                }
                Ok(vec![SubjectEvent::PasswordSet { hash: hash.clone(), at_micros: now }])
            }
            SubjectCommand::Rectify { email, phone, birth } => {
                let status = self.require_exists()?;
                if email.is_none() && phone.is_none() && birth.is_none() {
                    return Err(Rejection::invalid("fields", "name at least one of email, phone, date of birth"));
                }
                if status == SubjectStatus::Invited && (phone.is_some() || birth.is_some()) {
                    return Err(Rejection::precondition("an invited subject has only an email to correct"));
                }
                if let Some(e) = email {
                    check_email(e)?;
                }
                if let Some(p) = phone {
                    check_phone(p)?;
                }
                if let Some(b) = birth {
                    check_birth(b, now)?;
                }
                Ok(vec![SubjectEvent::Rectified {
                    email: email.as_ref().map(|e| e.trim().to_string()),
                    phone: phone.clone(),
                    birth: birth.clone(),
                    at_micros: now,
                }])
            }
            SubjectCommand::Restrict => {
                self.require_exists()?;
                Ok(if self.restricted { vec![] } else { vec![SubjectEvent::ProcessingRestricted { at_micros: now }] })
            }
            SubjectCommand::LiftRestriction => {
                self.require_exists()?;
                Ok(if self.restricted { vec![SubjectEvent::RestrictionLifted { at_micros: now }] } else { vec![] })
            }
            SubjectCommand::RecordRestrictionApplied { restricted, sessions } => {
                self.require_exists()?;
                if *restricted != self.restricted {
                    return Err(Rejection::precondition("the restriction changed again; its own run records it"));
                }
                Ok(vec![SubjectEvent::RestrictionApplied {
                    restricted: *restricted,
                    sessions: *sessions,
                    at_micros: now,
                }])
            }
            SubjectCommand::GrantConsent { purpose, policy_version } => {
                self.require_exists()?;
                check_purpose(purpose)?;
                check_text("policy_version", policy_version, 64, true)?;
                match self.consents.get(purpose) {
                    Some(c) if c.granted && c.policy_version == *policy_version => Ok(vec![]),
                    _ => Ok(vec![SubjectEvent::ConsentGranted {
                        purpose: purpose.clone(),
                        policy_version: policy_version.trim().to_string(),
                        at_micros: now,
                    }]),
                }
            }
            SubjectCommand::WithdrawConsent { purpose } => {
                self.require_exists()?;
                check_purpose(purpose)?;
                Ok(match self.consents.get(purpose) {
                    Some(c) if c.granted => {
                        vec![SubjectEvent::ConsentWithdrawn { purpose: purpose.clone(), at_micros: now }]
                    }
                    _ => vec![],
                })
            }
            SubjectCommand::RequestErasure { request } => {
                self.require_exists()?;
                Ok(vec![SubjectEvent::ErasureRequested {
                    request: *request,
                    at_micros: now,
                    due_micros: now + ERASURE_DUE_DAYS * 86_400 * 1_000_000,
                }])
            }
            SubjectCommand::PlanShred { .. }
            | SubjectCommand::RecordKeysShredded { .. }
            | SubjectCommand::MarkErased { .. }
            | SubjectCommand::Certify { .. } => {
                self.require_exists()?;
                Err(Rejection::precondition("no erasure was requested for this subject"))
            }
        }
    }

    fn evolve(&mut self, event: &SubjectEvent) {
        match event {
            SubjectEvent::Registered { subject, tenant, username, email, phone, birth, .. } => {
                self.id = Some(*subject);
                self.tenant = *tenant;
                self.username = username.clone();
                self.email = email.clone();
                self.phone = phone.clone();
                self.birth = Some(birth.clone());
                self.status = Some(SubjectStatus::Active);
            }
            SubjectEvent::Invited { subject, tenant, email, .. } => {
                self.id = Some(*subject);
                self.tenant = *tenant;
                self.email = email.clone();
                self.status = Some(SubjectStatus::Invited);
            }
            SubjectEvent::Onboarded { username, phone, birth, .. } => {
                self.username = username.clone();
                self.phone = phone.clone();
                self.birth = Some(birth.clone());
                self.status = Some(SubjectStatus::Active);
            }
            SubjectEvent::Deactivated { at_micros } => {
                self.status = Some(SubjectStatus::Deactivated);
                self.logins_revoked_micros = self.logins_revoked_micros.max(*at_micros);
            }
            SubjectEvent::Reactivated { .. } => self.status = Some(SubjectStatus::Active),
            SubjectEvent::PasswordSet { hash, at_micros } => {
                self.password_hash = hash.clone();
                self.logins_revoked_micros = self.logins_revoked_micros.max(*at_micros);
            }
            SubjectEvent::Rectified { email, phone, birth, .. } => {
                if let Some(e) = email {
                    self.email = e.clone();
                }
                if let Some(p) = phone {
                    self.phone = p.clone();
                }
                if let Some(b) = birth {
                    self.birth = Some(b.clone());
                }
            }
            SubjectEvent::ProcessingRestricted { at_micros } => {
                self.restricted = true;
                self.logins_revoked_micros = self.logins_revoked_micros.max(*at_micros);
            }
            SubjectEvent::RestrictionLifted { .. } => self.restricted = false,
            SubjectEvent::RestrictionApplied { .. } => {}
            SubjectEvent::ConsentGranted { purpose, policy_version, at_micros } => {
                self.consents.insert(
                    purpose.clone(),
                    Consent { granted: true, policy_version: policy_version.clone(), at_micros: *at_micros },
                );
            }
            SubjectEvent::ConsentWithdrawn { purpose, at_micros } => {
                if let Some(c) = self.consents.get_mut(purpose) {
                    c.granted = false;
                    c.at_micros = *at_micros;
                }
            }
            SubjectEvent::ErasureRequested { request, at_micros, due_micros } => {
                self.logins_revoked_micros = self.logins_revoked_micros.max(*at_micros);
                self.erasure = Some(Erasure {
                    request: *request,
                    requested_micros: *at_micros,
                    due_micros: *due_micros,
                    planned: None,
                    shredded: None,
                    erased: None,
                    certificate: None,
                });
            }
            SubjectEvent::ErasureShredPlanned { sessions, key_fingerprints, .. } => {
                if let Some(e) = &mut self.erasure {
                    e.planned = Some((sessions.clone(), key_fingerprints.clone()));
                }
            }
            SubjectEvent::ErasureKeysShredded { at_micros, .. } => {
                if let Some(e) = &mut self.erasure {
                    e.shredded = Some(*at_micros);
                }
                // Whatever was held in memory is gone with the keys.
                self.username.clear();
                self.email.clear();
                self.phone.clear();
                self.birth = None;
                self.password_hash.clear();
            }
            SubjectEvent::Erased { acknowledged_by, at_micros, .. } => {
                if let Some(e) = &mut self.erasure {
                    e.erased = Some((acknowledged_by.clone(), *at_micros));
                }
            }
            SubjectEvent::ErasureCertified { certificate, signature, .. } => {
                if let Some(e) = &mut self.erasure {
                    e.certificate = Some((certificate.clone(), signature.clone()));
                }
            }
        }
    }
}

impl Subject {
    /// Once an erasure is requested only its steps apply, each once and in
    /// order; repeating a step that is done changes nothing (so a process
    /// resumed after a crash can simply run every step again).
    fn decide_erasure_step(
        &self,
        e: &Erasure,
        command: &SubjectCommand,
        now: i64,
    ) -> Result<Vec<SubjectEvent>, Rejection> {
        let same = |request: &Uuid| {
            if *request == e.request {
                Ok(())
            } else {
                Err(Rejection::precondition(format!("erasure {} is already under way", e.request)))
            }
        };
        match command {
            SubjectCommand::RequestErasure { .. } => Ok(vec![]),
            SubjectCommand::PlanShred { request, sessions, key_fingerprints } => {
                same(request)?;
                Ok(if e.planned.is_some() {
                    vec![]
                } else {
                    vec![SubjectEvent::ErasureShredPlanned {
                        request: *request,
                        sessions: sessions.clone(),
                        key_fingerprints: key_fingerprints.clone(),
                    }]
                })
            }
            SubjectCommand::RecordKeysShredded { request } => {
                same(request)?;
                let Some((sessions, _)) = &e.planned else {
                    return Err(Rejection::precondition("the shred was not planned yet"));
                };
                Ok(if e.shredded.is_some() {
                    vec![]
                } else {
                    vec![SubjectEvent::ErasureKeysShredded {
                        request: *request,
                        sessions: sessions.clone(),
                        at_micros: now,
                    }]
                })
            }
            SubjectCommand::MarkErased { request, acknowledged_by } => {
                same(request)?;
                if e.shredded.is_none() {
                    return Err(Rejection::precondition("the subject's keys are not shredded yet"));
                }
                Ok(if e.erased.is_some() {
                    vec![]
                } else {
                    vec![SubjectEvent::Erased {
                        request: *request,
                        acknowledged_by: acknowledged_by.clone(),
                        at_micros: now,
                    }]
                })
            }
            SubjectCommand::Certify { request, certificate, signature } => {
                same(request)?;
                if e.erased.is_none() {
                    return Err(Rejection::precondition("the subject is not erased yet"));
                }
                Ok(if e.certificate.is_some() {
                    vec![]
                } else {
                    vec![SubjectEvent::ErasureCertified {
                        request: *request,
                        certificate: certificate.clone(),
                        signature: signature.clone(),
                    }]
                })
            }
            _ => Err(Rejection::precondition("the subject's erasure was requested; nothing else applies")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400 * 1_000_000), (2000, 2, 29));
        assert_eq!(civil_date(1_795_983_323 * 1_000_000), (2026, 11, 29));
        assert_eq!(civil_date(-86_400_000_000), (1969, 12, 31));
    }
}
