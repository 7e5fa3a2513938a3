//! The privileged-access rules: a pure function of the audit entries in
//! log order, so the follower (`alerts.rs`) can replay the last hour after
//! a restart and raise exactly what it raised before.
//!
//! Each rule reads entry times, never the clock: a replay sees the same
//! windows. Entries of several nodes interleave slightly out of time
//! order in `$all`; windows are pruned by the latest time seen, so a late
//! entry still counts.

use std::collections::{BTreeMap, HashMap, VecDeque};

use audit::TrailEntry;
use uuid::Uuid;

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;

/// The rules and their thresholds (`[alerts]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    /// A break-glass grant was opened.
    pub break_glass_opened: bool,
    /// A staff member read content (under break-glass) of more than this
    /// many distinct subjects within an hour; 0: off.
    pub content_subjects_per_hour: u64,
    /// More than this many refused or failed attempts by one key within a
    /// minute; 0: off.
    pub refusals_per_minute: u64,
    /// A whole tenant was exported (`ExportTenant` started).
    pub bulk_export: bool,
    /// Staff access to a tenant outside the hours configured for it.
    pub tenant_hours: HashMap<Uuid, Hours>,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            break_glass_opened: true,
            content_subjects_per_hour: 20,
            refusals_per_minute: 20,
            bulk_export: true,
            tenant_hours: HashMap::new(),
        }
    }
}

/// The hours in which staff are expected to access a tenant: days of the
/// week and a time range, at an offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Monday = 0 … Sunday = 6.
    pub days: [bool; 7],
    /// Minutes after local midnight: from (inclusive) and to (exclusive).
    pub from_minute: u16,
    pub to_minute: u16,
    pub utc_offset_minutes: i16,
}

impl Hours {
    /// Parses `days` ("mon-fri", "mon,wed,sat", "all"), `from` and `to`
    /// ("08:00", "18:30"; "24:00" for the end of the day) and `utc_offset`
    /// ("+01:00", "-05:30", "Z").
    pub fn parse(days: &str, from: &str, to: &str, utc_offset: &str) -> Result<Self, String> {
        let from_minute = minute_of(from).ok_or_else(|| format!("from {from:?} is not HH:MM (00:00 to 24:00)"))?;
        let to_minute = minute_of(to).ok_or_else(|| format!("to {to:?} is not HH:MM (00:00 to 24:00)"))?;
        if from_minute >= to_minute {
            return Err(format!("from {from} is not before to {to}"));
        }
        Ok(Self { days: days_of(days)?, from_minute, to_minute, utc_offset_minutes: offset_of(utc_offset)? })
    }

    /// Whether `at_micros` (UTC) falls inside these hours.
    pub fn contains(&self, at_micros: i64) -> bool {
        let local_minutes = at_micros.div_euclid(MINUTE) + i64::from(self.utc_offset_minutes);
        let day = local_minutes.div_euclid(24 * 60);
        let minute = local_minutes.rem_euclid(24 * 60);
        // 1970-01-01 was a Thursday (Monday = 0: Thursday = 3).
        let weekday = (day + 3).rem_euclid(7) as usize;
        self.days[weekday] && minute >= i64::from(self.from_minute) && minute < i64::from(self.to_minute)
    }
}

fn minute_of(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn days_of(text: &str) -> Result<[bool; 7], String> {
    let day = |name: &str| {
        DAY_NAMES
            .iter()
            .position(|d| name.trim().eq_ignore_ascii_case(d))
            .ok_or_else(|| format!("days: {name:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
    };
    let mut days = [false; 7];
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok([true; 7]);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

fn offset_of(text: &str) -> Result<i16, String> {
    let t = text.trim();
    if t.is_empty() || t == "Z" || t == "UTC" {
        return Ok(0);
    }
    let bad = || format!("utc_offset {text:?} is not +HH:MM or -HH:MM");
    let (sign, rest) = match t.as_bytes()[0] {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let minutes = minute_of(rest).filter(|m| *m <= 14 * 60).ok_or_else(bad)?;
    Ok(sign * minutes as i16)
}

/// An alert, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub rule: &'static str,
    pub actor: String,
    pub tenant: Option<Uuid>,
    pub count: u64,
    pub threshold: u64,
    pub detail: String,
}

pub const BREAK_GLASS_OPENED: &str = "break_glass_opened";
pub const CONTENT_SUBJECTS: &str = "content_subjects";
pub const REFUSALS: &str = "refusals";
pub const OUTSIDE_HOURS: &str = "outside_hours";
pub const BULK_EXPORT: &str = "bulk_export";
/// Every rule, for the metrics.
pub const RULES: [&str; 5] = [BREAK_GLASS_OPENED, CONTENT_SUBJECTS, REFUSALS, OUTSIDE_HOURS, BULK_EXPORT];

/// The rules' state: the windows of the last hour.
#[derive(Debug, Default)]
pub struct Watch {
    rules: AlertRules,
    /// The latest entry time seen.
    now: i64,
    /// Staff member → subject → (last read, position of that entry).
    subjects: HashMap<String, BTreeMap<Uuid, (i64, u64)>>,
    /// Key → (time, attempts, position) of its refusals in the last minute.
    refusals: HashMap<String, VecDeque<(i64, u64, u64)>>,
    /// (rule, actor, tenant) → when it last raised: one alert per window,
    /// not one per entry past the threshold.
    quiet_until: HashMap<(&'static str, String, Option<Uuid>), (i64, u64)>,
}

impl Watch {
    pub fn new(rules: AlertRules) -> Self {
        Self { rules, ..Default::default() }
    }

    /// The alerts `entry` (at global `position`) raises.
    pub fn observe(&mut self, entry: &TrailEntry, position: u64) -> Vec<Raised> {
        self.now = self.now.max(entry.at_micros);
        self.prune();
        let mut out = Vec::new();
        let what = || {
            if entry.target.is_empty() { entry.action.clone() } else { format!("{} {}", entry.action, entry.target) }
        };
        let staff = entry.actor.starts_with("staff:");
        if self.rules.break_glass_opened && entry.action == "staff.break_glass_open" && entry.outcome == "ok" {
            out.push(self.one(BREAK_GLASS_OPENED, entry, what()));
        }
        if self.rules.bulk_export && entry.action == "privacy.tenant_export" && entry.outcome == "ok" {
            out.push(self.one(BULK_EXPORT, entry, format!("{} {}", entry.action, entry.detail)));
        }
        let limit = self.rules.content_subjects_per_hour;
        if limit > 0 && staff && entry.action == "staff.break_glass_access" {
            let subjects = self.subjects.entry(entry.actor.clone()).or_default();
            for s in subject_ids(&entry.target) {
                subjects.insert(s, (entry.at_micros, position));
            }
            let n = subjects.len() as u64;
            if n > limit
                && let Some(r) = self.windowed(CONTENT_SUBJECTS, entry, n, limit, HOUR, position, what())
            {
                out.push(r);
            }
        }
        let limit = self.rules.refusals_per_minute;
        let refused = matches!(entry.outcome.as_str(), "refused" | "failed" | "locked");
        if limit > 0 && refused && is_key(&entry.actor) {
            let window = self.refusals.entry(entry.actor.clone()).or_default();
            window.push_back((entry.at_micros, entry.count, position));
            let n: u64 = window.iter().map(|(_, c, _)| c).sum();
            if n > limit
                && let Some(r) = self.windowed(REFUSALS, entry, n, limit, MINUTE, position, what())
            {
                out.push(r);
            }
        }
        if staff
            && matches!(entry.action.as_str(), "staff.access" | "staff.break_glass_access")
            && let Some(tenant) = entry.tenant
            && let Some(hours) = self.rules.tenant_hours.get(&tenant)
            && !hours.contains(entry.at_micros)
            && let Some(r) = self.windowed(OUTSIDE_HOURS, entry, 1, 0, HOUR, position, what())
        {
            out.push(r);
        }
        out
    }

    fn one(&self, rule: &'static str, entry: &TrailEntry, detail: String) -> Raised {
        Raised { rule, actor: entry.actor.clone(), tenant: entry.tenant, count: 0, threshold: 0, detail }
    }

    /// Raises `rule` for the entry's actor (and tenant) unless it did
    /// within `quiet` before.
    #[allow(clippy::too_many_arguments)]
    fn windowed(
        &mut self,
        rule: &'static str,
        entry: &TrailEntry,
        count: u64,
        threshold: u64,
        quiet: i64,
        position: u64,
        detail: String,
    ) -> Option<Raised> {
        let tenant = if rule == OUTSIDE_HOURS { entry.tenant } else { None };
        let key = (rule, entry.actor.clone(), tenant);
        if self.quiet_until.get(&key).is_some_and(|(until, _)| entry.at_micros < *until) {
            return None;
        }
        self.quiet_until.insert(key, (entry.at_micros + quiet, position));
        Some(Raised { rule, actor: entry.actor.clone(), tenant: entry.tenant, count, threshold, detail })
    }

    /// Forgets that `raised` was raised (its window no longer keeps the
    /// next one quiet): a replay found it under rules that changed since,
    /// and it was never written.
    pub fn forget(&mut self, raised: &Raised) {
        let tenant = if raised.rule == OUTSIDE_HOURS { raised.tenant } else { None };
        self.quiet_until.remove(&(raised.rule, raised.actor.clone(), tenant));
    }

    fn prune(&mut self) {
        let now = self.now;
        self.subjects.retain(|_, s| {
            s.retain(|_, (at, _)| *at > now - HOUR);
            !s.is_empty()
        });
        self.refusals.retain(|_, w| {
            while w.front().is_some_and(|(at, _, _)| *at <= now - MINUTE) {
                w.pop_front();
            }
            !w.is_empty()
        });
        self.quiet_until.retain(|_, (until, _)| *until > now);
    }

    /// The earliest position whose entry the windows still hold: a replay
    /// from it rebuilds them (`None`: they hold nothing).
    pub fn oldest_needed(&self) -> Option<u64> {
        let subjects = self.subjects.values().flat_map(|s| s.values().map(|(_, p)| *p));
        let refusals = self.refusals.values().flat_map(|w| w.iter().map(|(_, _, p)| *p));
        let quiet = self.quiet_until.values().map(|(_, p)| *p);
        subjects.chain(refusals).chain(quiet).min()
    }
}

/// The subjects an access entry's target names (`subject:<id>` tokens).
fn subject_ids(target: &str) -> impl Iterator<Item = Uuid> + '_ {
    target.split_whitespace().filter_map(|t| t.strip_prefix("subject:")).filter_map(|id| Uuid::parse_str(id).ok())
}

/// Whether an actor names a key (refusals are counted per key; an
/// anonymous caller has none).
fn is_key(actor: &str) -> bool {
    actor.starts_with("staff:") || actor.starts_with("tenant-key:") || actor == "admin"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_secs: i64, action: &str, actor: &str, target: &str, outcome: &str) -> TrailEntry {
        TrailEntry {
            at_micros: 1_700_000_000_000_000 + at_secs * 1_000_000,
            stream: "node".into(),
            seq: 0,
            action: action.into(),
            actor: actor.into(),
            tenant: Some(Uuid::from_u128(7)),
            target: target.into(),
            outcome: outcome.into(),
            detail: String::new(),
            count: 1,
        }
    }

    fn rules() -> AlertRules {
        AlertRules { content_subjects_per_hour: 3, refusals_per_minute: 5, ..Default::default() }
    }

    fn fired(w: &mut Watch, entries: &[TrailEntry]) -> Vec<&'static str> {
        entries.iter().enumerate().flat_map(|(i, e)| w.observe(e, i as u64)).map(|r| r.rule).collect()
    }

    #[test]
    fn break_glass_and_bulk_export_fire_on_their_entry_and_nothing_else_does() {
        let mut w = Watch::new(rules());
        let normal = [
            entry(0, "staff.access", "staff:a", "rpc:GetPype", "ok"),
            entry(1, "privacy.export", "staff:a", "subject:1", "ok"),
            entry(2, "staff.break_glass_close", "staff:a", "grant:1", "ok"),
            entry(3, "auth.api_key", "tenant-key:k", "", "ok"),
        ];
        assert!(fired(&mut w, &normal).is_empty());
        let bad = [
            entry(4, "staff.break_glass_open", "staff:a", "grant:1", "ok"),
            entry(5, "privacy.tenant_export", "tenant-key:k", "", "ok"),
        ];
        assert_eq!(fired(&mut w, &bad), [BREAK_GLASS_OPENED, BULK_EXPORT]);
        let off = AlertRules { break_glass_opened: false, bulk_export: false, ..rules() };
        assert!(fired(&mut Watch::new(off), &bad).is_empty());
    }

    #[test]
    fn content_of_more_than_n_subjects_in_an_hour_fires_once() {
        let read = |t, s: u128| {
            entry(
                t,
                "staff.break_glass_access",
                "staff:a",
                &format!("rpc:ListMessages session:{} subject:{}", Uuid::from_u128(100 + s), Uuid::from_u128(s)),
                "ok",
            )
        };
        let mut w = Watch::new(rules());
        // The same three subjects over and over: at the threshold, silent.
        let same: Vec<_> = (0..30).map(|i| read(i * 60, (i % 3) as u128)).collect();
        assert!(fired(&mut w, &same).is_empty());
        // A fourth within the hour: one alert, not one per read after it.
        let more = [read(1900, 4), read(1901, 5), read(1902, 6)];
        let raised: Vec<_> = more.iter().flat_map(|e| w.observe(e, 99)).collect();
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!((raised[0].rule, raised[0].count, raised[0].threshold), (CONTENT_SUBJECTS, 4, 3));
        // Four subjects spread over more than an hour: silent.
        let mut w = Watch::new(rules());
        let spread: Vec<_> = (0..8).map(|i| read(i * 1300, i as u128)).collect();
        assert!(fired(&mut w, &spread).is_empty());
        // Another staff member's reads are their own.
        let mut w = Watch::new(rules());
        let two = [
            read(0, 1),
            read(1, 2),
            read(2, 3),
            entry(3, "staff.break_glass_access", "staff:b", &format!("subject:{}", Uuid::from_u128(9)), "ok"),
        ];
        assert!(fired(&mut w, &two).is_empty());
    }

    #[test]
    fn refusals_of_one_key_over_n_a_minute_fire() {
        let refused = |t| entry(t, "authz.refused", "staff:a", "rpc:CreateTenant", "refused");
        let mut w = Watch::new(rules());
        // Five a minute, spread: at the threshold, silent.
        let slow: Vec<_> = (0..20).map(|i| refused(i * 13)).collect();
        assert!(fired(&mut w, &slow).is_empty());
        let burst: Vec<_> = (0..8).map(|i| refused(400 + i)).collect();
        assert_eq!(fired(&mut w, &burst), [REFUSALS]);
        // Counted entries count their attempts; anonymous failures are no key's.
        let mut w = Watch::new(rules());
        let counted = TrailEntry { count: 6, ..entry(0, "auth.api_key", "tenant-key:k", "", "failed") };
        assert_eq!(fired(&mut w, &[counted]), [REFUSALS]);
        let anon: Vec<_> = (0..50).map(|i| entry(i, "auth.bearer", "anonymous", "", "failed")).collect();
        assert!(fired(&mut Watch::new(rules()), &anon).is_empty());
    }

    #[test]
    fn staff_access_outside_a_tenants_hours_fires() {
        // 1_700_000_000 is Tuesday 2023-11-14 22:13:20 UTC.
        let hours = Hours::parse("mon-fri", "08:00", "18:00", "+01:00").unwrap();
        let mut r = rules();
        r.tenant_hours.insert(Uuid::from_u128(7), hours);
        let mut w = Watch::new(r.clone());
        // 22:13 UTC = 23:13 at +01:00: outside.
        assert_eq!(fired(&mut w, &[entry(0, "staff.access", "staff:a", "rpc:GetPype", "ok")]), [OUTSIDE_HOURS]);
        // Wednesday 09:00 local (08:00 UTC): inside.
        let wed_9 = (24 * 3600) - (22 * 3600 + 13 * 60 + 20) + 8 * 3600;
        let mut w = Watch::new(r.clone());
        assert!(fired(&mut w, &[entry(wed_9, "staff.access", "staff:a", "rpc:GetPype", "ok")]).is_empty());
        // Another tenant has no hours; a tenant's own key is not staff.
        let other = TrailEntry { tenant: Some(Uuid::from_u128(8)), ..entry(0, "staff.access", "staff:a", "", "ok") };
        assert!(fired(&mut w, &[other]).is_empty());
        assert!(fired(&mut w, &[entry(0, "auth.api_key", "tenant-key:k", "", "ok")]).is_empty());
        // Saturday, inside the clock hours: outside the days.
        let sat_10 = wed_9 + 3 * 24 * 3600 + 3600;
        assert_eq!(fired(&mut Watch::new(r), &[entry(sat_10, "staff.access", "staff:a", "", "ok")]), [OUTSIDE_HOURS]);
    }

    #[test]
    fn a_forgotten_alert_keeps_nothing_quiet() {
        let refused = |t| entry(t, "authz.refused", "staff:a", "rpc:CreateTenant", "refused");
        let mut w = Watch::new(rules());
        let raised: Vec<_> = (0..6).flat_map(|i| w.observe(&refused(i), i as u64)).collect();
        assert_eq!(raised.len(), 1);
        assert!(w.observe(&refused(7), 7).is_empty(), "quiet within the minute");
        w.forget(&raised[0]);
        assert_eq!(w.observe(&refused(8), 8).len(), 1, "forgotten: the next one raises");
    }

    #[test]
    fn hours_parse_and_refuse_clearly() {
        let h = Hours::parse("sat-mon", "00:00", "24:00", "Z").unwrap();
        assert_eq!(h.days, [true, false, false, false, false, true, true]);
        assert!(Hours::parse("mon", "18:00", "08:00", "Z").unwrap_err().contains("not before"));
        assert!(Hours::parse("funday", "08:00", "18:00", "Z").unwrap_err().contains("funday"));
        assert!(Hours::parse("mon", "8", "18:00", "Z").unwrap_err().contains("HH:MM"));
        assert!(Hours::parse("mon", "08:00", "18:00", "+15:00").unwrap_err().contains("utc_offset"));
    }

    #[test]
    fn a_replay_from_the_oldest_needed_position_raises_the_same() {
        let read = |t, s: u128| {
            entry(t, "staff.break_glass_access", "staff:a", &format!("subject:{}", Uuid::from_u128(s)), "ok")
        };
        let all: Vec<_> = (0..10).map(|i| read(i * 600, i as u128)).collect();
        let mut whole = Watch::new(rules());
        let expected: Vec<_> =
            all.iter().enumerate().flat_map(|(i, e)| whole.observe(e, i as u64)).map(|r| (r.rule, r.count)).collect();
        assert!(!expected.is_empty());
        // Stop after six, replay from what the windows still need.
        let mut first = Watch::new(rules());
        let mut got: Vec<_> = all[..6]
            .iter()
            .enumerate()
            .flat_map(|(i, e)| first.observe(e, i as u64))
            .map(|r| (r.rule, r.count))
            .collect();
        let from = first.oldest_needed().unwrap() as usize;
        let mut again = Watch::new(rules());
        for (i, e) in all.iter().enumerate().skip(from) {
            let raised = again.observe(e, i as u64);
            if i >= 6 {
                got.extend(raised.into_iter().map(|r| (r.rule, r.count)));
            }
        }
        assert_eq!(got, expected);
    }
}
